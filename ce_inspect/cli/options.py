"""Options shared by every command that loads a model and lays out examples, declared once.

Typer reads these Annotated aliases as the options of each command that uses them; the helpers
below turn the parsed values into the library's objects without importing torch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..encoding import IGNORE_INDEX, Layout
from ..loading import DTYPES

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MODEL = "Model"
LAYOUT = "Layout"
SCORING = "Scoring"
OUTPUT = "Output"

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Local HF folder, Hub id (from the HF cache, or downloaded), or .gguf file. "
        "Default: the bundled SmolLM2-135M-Instruct.",
        rich_help_panel=MODEL,
    ),
]
RevisionOpt = Annotated[
    Optional[str], typer.Option(help="Hub revision (branch, tag or commit).", rich_help_panel=MODEL)
]
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto picks cuda when there is one).", rich_help_panel=MODEL)
]
DtypeOpt = Annotated[
    str,
    typer.Option(help="auto, float32, bfloat16 or float16 (auto: float32 on CPU, the checkpoint's dtype on GPU).",
                 rich_help_panel=MODEL),
]
DeviceMapOpt = Annotated[
    Optional[str],
    typer.Option(help="Let accelerate place a large model across devices (e.g. auto).", rich_help_panel=MODEL),
]
TrustOpt = Annotated[
    bool, typer.Option(help="Allow the model folder's own Python code to run.", rich_help_panel=MODEL)
]
SepOpt = Annotated[
    Optional[str], typer.Option(help="Separator text between prompt and answer (masked).", rich_help_panel=LAYOUT)
]
NoEosOpt = Annotated[
    bool, typer.Option("--no-eos", help="Do not append (and score) the EOS token.", rich_help_panel=LAYOUT)
]
IgnoreIndexOpt = Annotated[
    int, typer.Option(help="Label value of masked positions.", rich_help_panel=LAYOUT)
]
NoMaskPromptOpt = Annotated[
    bool,
    typer.Option("--no-mask-prompt", help="Score prompt tokens too (pre-training style loss).", rich_help_panel=LAYOUT),
]
TruncateOpt = Annotated[
    bool,
    typer.Option(help="Drop prompt tokens from the left when the example exceeds the context.", rich_help_panel=LAYOUT),
]
SmoothingOpt = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="CrossEntropyLoss label_smoothing.", rich_help_panel=SCORING)
]
ReductionOpt = Annotated[
    str, typer.Option(help="Headline figure, as CrossEntropyLoss: mean, sum or none.", rich_help_panel=SCORING)
]
TopKOpt = Annotated[
    int, typer.Option(min=0, help="Show the model's K most likely tokens at each position.", rich_help_panel=SCORING)
]
VerifyOpt = Annotated[
    bool, typer.Option(help="Also run the model's own loss and report the difference.", rich_help_panel=SCORING)
]
ChunkOpt = Annotated[
    Optional[int],
    typer.Option(min=1, help="Scored positions per output-head chunk (default: sized to ~256 MB).",
                 rich_help_panel=SCORING),
]


def check_device(device: str, dtype: str) -> None:
    """Reject malformed device/dtype strings before anything heavy is imported."""
    if not _DEVICE_RE.match(device.strip().lower()):
        raise typer.BadParameter(f"{device!r}: use auto, cpu, cuda, cuda:N or mps", param_hint="--device")
    if dtype not in DTYPES:
        raise typer.BadParameter(f"{dtype!r}: use one of {', '.join(DTYPES)}", param_hint="--dtype")


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise typer.BadParameter(f"{reduction!r}: use mean, sum or none", param_hint="--reduction")


def make_layout(
    sep: str | None, no_eos: bool, ignore_index: int = IGNORE_INDEX, no_mask_prompt: bool = False,
    truncate_prompt: bool = False,
) -> Layout:
    return Layout(
        sep=sep or None,
        add_eos=not no_eos,
        ignore_index=ignore_index,
        mask_prompt=not no_mask_prompt,
        truncate_prompt=truncate_prompt,
    )


def read_text(value: str | None, file: Path | None, name: str) -> str:
    """Exactly one of --NAME TEXT and --NAME-file PATH (``-`` = stdin); file contents are used verbatim."""
    if value is not None and file is not None:
        raise typer.BadParameter(f"give --{name} or --{name}-file, not both", param_hint=f"--{name}")
    if value is not None:
        return value
    if file is None:
        raise typer.BadParameter(f"missing: pass --{name} TEXT or --{name}-file PATH", param_hint=f"--{name}")
    if str(file) == "-":
        return sys.stdin.read()
    from ..errors import InputError

    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--{name}-file {file}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--{name}-file {file}: is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"--{name}-file {file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"--{name}-file {file}: cannot read it ({exc.strerror})") from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder, so a failure leaves no half file."""
    import os
    import tempfile

    from ..errors import InputError

    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"--output {path}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"--output {path}: cannot write it ({exc.strerror})") from None
