"""Options shared by every command that loads a model and lays out examples, declared once.

Typer reads these Annotated aliases as the options of each command that uses them; the helpers
below turn the parsed values into the library's objects without importing torch.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ce_inspect.cli.errors import cli_message
from ce_inspect.cli.logs import set_quiet
from ce_inspect.cli.stdout import BROKEN_PIPE, broken_pipe_raises, silence_stdout
from ce_inspect.data import FORMATS
from ce_inspect.dataset import DEFAULT_MAX_ROWS, DEFAULT_MAX_TOKENS
from ce_inspect.errors import DeviceError, InputError
from ce_inspect.files import read_text as read_file_text
from ce_inspect.files import write_outputs
from ce_inspect.model import check_device, check_dtype, load
from ce_inspect.scoring import REDUCTIONS, ScoreOptions, check_reduction
from ce_inspect.text import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    TOKENIZATIONS,
    Layout,
    check_answer,
    check_text,
    parse_messages,
    scored_turns,
)

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel

MODEL = "Model"
LAYOUT = "Layout"
SCORING = "Scoring"
OUTPUT = "Output"

#: The environment variable that names the default model (`--model` wins over it).
MODEL_ENV = "CE_INSPECT_MODEL"

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar=MODEL_ENV,
        help=f"Local HF folder, Hub id (from the HF cache, or downloaded), or .gguf file. Default: ${MODEL_ENV} "
        "when set, else the bundled SmolLM2-135M-Instruct.",
        rich_help_panel=MODEL,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).", rich_help_panel=MODEL)]
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto picks cuda when there is one).", rich_help_panel=MODEL)
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto, float32, bfloat16 or float16 (auto: float32 on CPU, the checkpoint's dtype on GPU).",
        rich_help_panel=MODEL,
    ),
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(help="Let accelerate place a large model across devices (e.g. auto).", rich_help_panel=MODEL),
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow the model folder's own Python code to run.", rich_help_panel=MODEL),
]
SepOpt = Annotated[
    str | None, typer.Option(help="Separator text between prompt and answer (masked).", rich_help_panel=LAYOUT)
]
NoEosOpt = Annotated[
    bool, typer.Option("--no-eos", help="Do not append (and score) the EOS token.", rich_help_panel=LAYOUT)
]
IgnoreIndexOpt = Annotated[int, typer.Option(help="Label value of masked positions.", rich_help_panel=LAYOUT)]
NoMaskPromptOpt = Annotated[
    bool,
    typer.Option("--no-mask-prompt", help="Score prompt tokens too (pre-training style loss).", rich_help_panel=LAYOUT),
]
TruncateOpt = Annotated[
    bool,
    typer.Option(
        "--truncate-prompt",
        help="Drop prompt tokens from the left when the example exceeds the context.",
        rich_help_panel=LAYOUT,
    ),
]
ChatOpt = Annotated[
    bool,
    typer.Option(
        "--chat",
        help="Render prompt (user) and answer (assistant) with the tokenizer's chat template; score only the "
        "assistant's tokens and its end-of-turn token.",
        rich_help_panel=LAYOUT,
    ),
]
SystemOpt = Annotated[
    str | None,
    typer.Option(
        help="System prompt for --chat/--messages (masked); replaces any default the template injects.",
        rich_help_panel=LAYOUT,
    ),
]
TokenizationOpt = Annotated[
    str | None,
    typer.Option(
        metavar="separate|joint|trl",
        help="separate (default): prompt and answer tokenized on their own and concatenated; joint: "
        "prompt+answer tokenized as one string and split at the prompt's length, as lm-evaluation-harness does; "
        "trl: exactly TRL's SFTTrainer (prompt+completion as one string, EOS as text, split where the prompt's "
        "own tokens diverge).",
        rich_help_panel=LAYOUT,
    ),
]
SpecialTokensOpt = Annotated[
    str | None,
    typer.Option(
        metavar="parse|text",
        help="parse (default): special-token text in the prompt, answer or separator (e.g. <|im_end|>) becomes the "
        "control token, as a tokenizer call in training does; text: encode it as plain text. Pairs only.",
        rich_help_panel=LAYOUT,
    ),
]
# Range checked by ScoreOptions, whose message also names nan and inf for what they are.
SmoothingOpt = Annotated[
    float, typer.Option(help="CrossEntropyLoss label_smoothing, in [0, 1].", rich_help_panel=SCORING)
]
ReductionOpt = Annotated[
    str,
    typer.Option(help=f"Headline figure, as CrossEntropyLoss: {', '.join(REDUCTIONS)}.", rich_help_panel=SCORING),
]
TopKOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Show the model's K most likely tokens at each position (K past the vocabulary: all, with a note).",
        rich_help_panel=SCORING,
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify", help="Also run the model's own loss and report the difference.", rich_help_panel=SCORING),
]
EntropyOpt = Annotated[
    bool,
    typer.Option(
        "--entropy",
        help="Also the entropy of the model's distribution at each scored position (nats): a table column, each "
        "token's `entropy`, the mean in the summary.",
        rich_help_panel=SCORING,
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars and no notes on stderr (warnings and errors still).",
        rich_help_panel=OUTPUT,
    ),
]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="Scored positions per output-head chunk (default: sized to ~256 MB).", rich_help_panel=SCORING
    ),
]


# The example inputs of `run` and `diff`, declared once (read by ``read_example``).
PromptOpt = Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt text (masked).")]
AnswerOpt = Annotated[str | None, typer.Option("--answer", "-a", help="Answer text (scored).")]
PromptFileOpt = Annotated[Path | None, typer.Option(help="Read the prompt from a file, verbatim ('-' for stdin).")]
AnswerFileOpt = Annotated[Path | None, typer.Option(help="Read the answer from a file, verbatim ('-' for stdin).")]
MessagesOpt = Annotated[
    Path | None,
    typer.Option(
        help="A conversation instead of prompt/answer: a JSON list of {role, content} ('-' for stdin). "
        "Every assistant turn is scored, through the chat template."
    ),
]
LastTurnOpt = Annotated[
    bool, typer.Option("--last-turn", help="With --messages: only the last assistant turn is scored.")
]


def _known_format(value: str | None) -> str | None:
    """One rule for --format in every command that reads a data set: a usage error (exit 2) when unknown."""
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"{value!r}: use one of {', '.join(FORMATS)}")
    return value


# The data-set inputs of `batch` and `audit`, declared once.
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="FORMAT",
        callback=_known_format,
        help=f"Read every record in this format ({', '.join(FORMATS)}) instead of detecting each one's format "
        "from its fields.",
        rich_help_panel="Input",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        metavar="N",
        help="Read only the first N records of the data set (a quick look; --resume reads the same N).",
        rich_help_panel="Input",
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(help="The split of a saved or Hub dataset (train, test, ...).", rich_help_panel="Input"),
]

# How a data set is cut into forward passes: one declaration for batch, diff --input and audit.
BATCHING = "Batching"
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help=f"At most N examples per forward pass (default {DEFAULT_MAX_ROWS['cpu']} on CPU, "
        f"{DEFAULT_MAX_ROWS['accelerator']} on a GPU).",
        rich_help_panel=BATCHING,
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="At most T padded positions (rows x longest example) per forward pass; examples are sorted by "
        f"length first (default {DEFAULT_MAX_TOKENS['cpu']} on CPU, {DEFAULT_MAX_TOKENS['accelerator']} on a GPU; "
        "a longer example goes alone).",
        rich_help_panel=BATCHING,
    ),
]
SortWindowOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Examples sorted by length together; larger pads less, smaller holds less and loses less on a kill.",
        rich_help_panel=BATCHING,
    ),
]


@dataclass(frozen=True)
class Common:
    """The shared options of a command, parsed; turns them into library objects."""

    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    sep: str | None = None
    no_eos: bool = False
    ignore_index: int = IGNORE_INDEX
    no_mask_prompt: bool = False
    truncate_prompt: bool = False
    chat: bool = False
    system: str | None = None
    tokenization: str | None = None
    special_tokens: str | None = None
    label_smoothing: float = 0.0
    reduction: str = "mean"
    top_k: int = 0
    verify: bool = False
    chunk_tokens: int | None = None
    quiet: bool = False

    def check(self) -> None:
        """Reject malformed strings before anything heavy is imported."""
        try:  # the core's one validator of each; its message names the parameter, shown as the flag
            check_device(self.device)
            check_dtype(self.dtype)
        except DeviceError as exc:
            raise typer.BadParameter(cli_message(str(exc))) from None
        try:
            check_reduction(self.reduction)
        except InputError as exc:
            raise typer.BadParameter(cli_message(str(exc))) from None
        if self.tokenization is not None and self.tokenization not in TOKENIZATIONS:
            raise typer.BadParameter(
                f"{self.tokenization!r}: use {', '.join(TOKENIZATIONS)}", param_hint="--tokenization"
            )
        if self.special_tokens is not None and self.special_tokens not in SPECIAL_TOKENS:
            raise typer.BadParameter(f"{self.special_tokens!r}: use parse or text", param_hint="--special-tokens")

    def layout(self, *, chat: bool | None = None) -> Layout:
        """The layout these options describe; ``chat=True`` for inputs that are conversations (--messages).

        Conflicting options (--sep with --chat, --system without it, ...) are usage errors; the library's
        message names its parameters, which the error table (cli/errors.py) shows as these flags.
        """
        # Text that cannot be encoded is bad input (exit 1), not a usage error.
        if self.system is not None:
            check_text(self.system, "--system")
        if self.sep is not None:
            check_text(self.sep, "--sep")
        try:
            return Layout(
                sep=self.sep or None,
                add_eos=not self.no_eos,
                ignore_index=self.ignore_index,
                mask_prompt=not self.no_mask_prompt,
                truncate_prompt=self.truncate_prompt,
                chat=self.chat if chat is None else chat,
                system=self.system,
                tokenization=self.tokenization or "separate",
                special_tokens=self.special_tokens or "parse",
            )
        except InputError as exc:
            raise typer.BadParameter(cli_message(str(exc))) from None

    def score_options(self, *, entropy: bool = False) -> ScoreOptions:
        """The scoring options (``entropy``: the command's --entropy); an out-of-range value
        (``--label-smoothing nan``) is a usage error."""
        try:
            return ScoreOptions(
                entropy=entropy,
                reduction=self.reduction,
                label_smoothing=self.label_smoothing,
                top_k=self.top_k,
                verify=self.verify,
                chunk_tokens=self.chunk_tokens,
            )
        except InputError as exc:
            raise typer.BadParameter(cli_message(str(exc))) from None

    def load(self, quiet: bool = True) -> LoadedModel:
        return load(
            self.model,
            revision=self.revision,
            device=self.device,
            dtype=self.dtype,
            device_map=self.device_map,
            trust_remote_code=self.trust_remote_code,
            quiet=quiet,
        )


# The shared options, declared once: (parameter name, Annotated type, default). Names match Common's fields.
_SHARED: list[tuple[str, Any, Any]] = [
    ("model", ModelOpt, None),
    ("revision", RevisionOpt, None),
    ("device", DeviceOpt, "auto"),
    ("dtype", DtypeOpt, "auto"),
    ("device_map", DeviceMapOpt, None),
    ("trust_remote_code", TrustOpt, False),
    ("sep", SepOpt, None),
    ("no_eos", NoEosOpt, False),
    ("ignore_index", IgnoreIndexOpt, IGNORE_INDEX),
    ("no_mask_prompt", NoMaskPromptOpt, False),
    ("truncate_prompt", TruncateOpt, False),
    ("chat", ChatOpt, False),
    ("system", SystemOpt, None),
    ("tokenization", TokenizationOpt, None),
    ("special_tokens", SpecialTokensOpt, None),
    ("label_smoothing", SmoothingOpt, 0.0),
    ("reduction", ReductionOpt, "mean"),
    ("top_k", TopKOpt, 0),
    ("verify", VerifyOpt, False),
    ("chunk_tokens", ChunkOpt, None),
    ("quiet", QuietOpt, False),
]


def shared_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a Typer command every shared model/layout/scoring option; it receives them as ``common: Common``.

    Commands declare only their own options; adding an option here adds it to every command at once.
    """
    own = inspect.signature(func, eval_str=True)
    hints = typing.get_type_hints(func, include_extras=True)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in own.parameters.values() if p.name != "common"
    ]
    names = [name for name, _, _ in _SHARED]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, annotation, default in _SHARED
    ]

    def command(**kwargs: Any) -> Any:
        common = Common(**{name: kwargs.pop(name) for name in names})
        common.check()
        set_quiet(common.quiet)

        broken_pipe_raises()
        try:
            return func(common=common, **kwargs)
        except BrokenPipeError:
            # stdout's reader went away (`| head`): caught here, before click turns it into exit 1.
            silence_stdout()
            raise typer.Exit(BROKEN_PIPE) from None

    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def read_text(value: str | None, file: Path | None, name: str) -> str:
    """Exactly one of --NAME TEXT and --NAME-file PATH (``-`` = stdin); file contents are used verbatim."""
    if value is not None and file is not None:
        raise typer.BadParameter(f"give --{name} or --{name}-file, not both", param_hint=f"--{name}")
    if value is not None:
        return value
    if file is None:
        raise typer.BadParameter(f"missing: pass --{name} TEXT or --{name}-file PATH", param_hint=f"--{name}")
    return read_input(file, f"--{name}-file")


def read_input(file: Path, label: str) -> str:
    """The text of ``file`` (``-`` = stdin), verbatim (strict UTF-8, CRLF kept); failures name ``label``."""
    return read_file_text(file, label)


def read_messages(file: Path) -> list[dict[str, str]]:
    """The conversation in --messages FILE (``-`` = stdin), parsed and validated by the core."""
    import json

    name = "--messages (stdin)" if str(file) == "-" else f"--messages {file}"
    raw = read_input(file, "--messages")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict) and data.get("tools") is not None:  # refused rather than rendered without them
        raise InputError(
            f"{name}: has 'tools', which --messages does not give the chat template; score the conversation with "
            "`ce-inspect batch` (a JSONL line with messages and tools)"
        )
    return parse_messages(data, name)


def write_documents(documents: Sequence[tuple[str, Path, str]]) -> None:
    """Write whole documents ``(flag, path, text)`` all or nothing, each under its lock (``files.write_outputs``)."""
    write_outputs([(path, text, label) for label, path, text in documents])


GATES = "Gates"


def _finite_gate(value: float | None) -> float | None:
    """A gate threshold must be a finite number: NaN would never trip and inf never could."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value!r}: a gate threshold must be a finite number")
    return value


def _gate_option(what: str) -> Any:
    return typer.Option(
        callback=_finite_gate,
        metavar="X",
        help=f"Exit with code 3 (after writing all output) when the {what} is above X.",
        rich_help_panel=GATES,
    )


GateOpt = Annotated[float | None, _gate_option("mean loss")]
KlGateOpt = Annotated[float | None, _gate_option("mean KL(ref‖cand)")]
DnllGateOpt = Annotated[float | None, _gate_option("mean ΔNLL (candidate − reference)")]


BootstrapOpt = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="N",
        help="Also give the token-weighted figures a standard error: a bootstrap of N resamples of the examples "
        "(0: off; 1,000 is usual). The example-weighted means always carry theirs.",
        rich_help_panel=OUTPUT,
    ),
]
SeedOpt = Annotated[
    int, typer.Option(help="The seed of --bootstrap (the same seed, the same figures).", rich_help_panel=OUTPUT)
]


def gate(what: str, value: float | None, limit: float | None, flag: str, *, verb: str = "scored") -> None:
    """Trip a --fail-above-* gate: one line on stderr and exit code 3. Call it once all output is written.
    ``value`` None (no record was scored, or compared: every one skipped) trips it too: a gate over nothing
    has checked nothing, and passing it would say the data is fine."""
    if limit is None:
        return
    if value is None:
        print(
            f"Error: gate failed: no record was {verb} (every one was skipped), so {flag} {limit:g} checked nothing",
            file=sys.stderr,
        )
        raise typer.Exit(3)
    if value <= limit:
        return
    print(f"Error: gate failed: {what} {value:.6g} is above {flag} {limit:g}", file=sys.stderr)
    raise typer.Exit(3)


@dataclass(frozen=True)
class Example:
    """One example as the command line gave it: a prompt/answer pair or a conversation, and its layout."""

    layout: Layout
    prompt: str = ""
    answer: str = ""
    conversation: list[dict[str, str]] | None = None


def read_example(
    common: Common,
    prompt: str | None,
    answer: str | None,
    prompt_file: Path | None,
    answer_file: Path | None,
    messages: Path | None,
    last_turn: bool,
) -> Example:
    """The pair (--prompt/--answer or their files) or the --messages conversation, as `run` reads them.

    Every text rule of the core is checked here, so that bad input fails before the model loads.
    """
    if messages is not None:
        given = [
            name
            for name, value in (
                ("--prompt", prompt),
                ("--answer", answer),
                ("--prompt-file", prompt_file),
                ("--answer-file", answer_file),
            )
            if value is not None
        ]
        if given:
            raise typer.BadParameter(f"--messages holds the whole conversation; drop {', '.join(given)}")

        conversation = read_messages(messages)  # every content checked by the core's text validator
        layout = common.layout(chat=True)
        scored_turns(
            conversation, last_turn, "--messages (stdin)" if str(messages) == "-" else f"--messages {messages}"
        )
        return Example(layout=layout, conversation=conversation)
    if last_turn:
        raise typer.BadParameter("--last-turn needs --messages (a conversation with several assistant turns)")
    if str(prompt_file) == "-" and str(answer_file) == "-":
        raise typer.BadParameter("only one of --prompt-file and --answer-file can be '-' (stdin)")

    prompt_text = read_text(prompt, prompt_file, "prompt")
    answer_text = read_text(answer, answer_file, "answer")
    check_text(prompt_text, "--prompt" if prompt_file is None else f"--prompt-file {prompt_file}")
    check_answer(answer_text, "--answer" if answer_file is None else f"--answer-file {answer_file}")
    return Example(layout=common.layout(), prompt=prompt_text, answer=answer_text)
