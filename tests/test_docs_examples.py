"""Every example in README.md and docs/*.md runs, in order, in a temporary folder (issue 20).

A document's ```bash (and ```console, whose commands start with "$ ") blocks are its examples: each
command line runs with bash, in order, in one temporary folder per document that holds a copy of samples/,
with the venv's ce-inspect first on PATH, and must exit 0, or the code its trailing comment names
(`... # the gate trips: exit 3`). A command that cannot run here (a GPU, the Hub, several machines)
says so, `# not run: why`, and such commands stay few. ```python blocks run too, each after the document's
earlier ones. ```sh blocks are set-up commands (make, pip), not examples, and may not call ce-inspect;
```py blocks are excerpts of the source (docs/ARCHITECTURE.md), not examples, and stay few.

Two stand-ins are put in the folder, as the documents say: `my-model` and `my-model-b`, two tiny random
models with one tokenizer, for "your model"; `model.Q4_1.gguf`, a link to the bundled GGUF.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT, build_model

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Commands marked `# not run:`, at most: each needs what a test machine has not (a GPU, the Hub, 8 GPUs).
MAX_NOT_RUN = 6

NOT_RUN = re.compile(r"#\s*not run:\s*(?P<why>\S.*)$")
EXPECTED_EXIT = re.compile(r"#[^#'\"]*\bexit (?P<code>\d+)\s*$")
CALLS_CE_INSPECT = re.compile(r"(^|[\s|;&(/])ce-inspect\b|-m ce_inspect\b")


@dataclass(frozen=True)
class Example:
    document: Path
    line: int  # 1-based, where the command (or the python block) starts
    kind: str  # "shell" or "python"
    code: str
    expected_exit: int = 0
    not_run: str | None = None

    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(info string, line number of the first code line, lines) of every fenced block of a Markdown file."""
    blocks, current, lang, start = [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                lang, start, current = line[3:].strip(), number + 1, []
            else:
                blocks.append((lang, start, current))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{path.name}: a fenced block is not closed"
    return blocks


def shell_commands(lines: list[str], start: int, console: bool) -> list[tuple[int, str]]:
    """The commands of a shell block, continuation lines (a trailing backslash) joined, comments left out."""
    commands: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, line in enumerate(lines):
        if pending is not None:
            pending = (pending[0], pending[1] + "\n" + line)
        else:
            if console:
                if not line.startswith("$ "):
                    continue  # the output shown after a command
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pending = (start + offset, line)
        if not pending[1].endswith("\\"):
            commands.append(pending)
            pending = None
    assert pending is None, f"line {start}: a command ends with a backslash"
    return commands


def examples(path: Path) -> list[Example]:
    found: list[Example] = []
    for lang, start, lines in fenced_blocks(path):
        if lang in ("bash", "console"):
            for line, command in shell_commands(lines, start, console=lang == "console"):
                last = command.splitlines()[-1]
                not_run = NOT_RUN.search(last)
                exit_code = EXPECTED_EXIT.search(last)
                found.append(
                    Example(
                        path,
                        line,
                        "shell",
                        command,
                        int(exit_code["code"]) if exit_code else 0,
                        not_run["why"] if not_run else None,
                    )
                )
        elif lang == "python":
            found.append(Example(path, start, "python", "\n".join(lines)))
    return found


def test_the_documents_have_examples_and_mark_the_ones_not_run_rarely_and_with_a_reason():
    every = [example for document in DOCUMENTS for example in examples(document)]
    assert len([e for e in every if e.kind == "shell" and e.not_run is None]) >= 40
    not_run = [e for e in every if e.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, [e.where() for e in not_run]
    for example in not_run:
        assert len(example.not_run.split()) >= 2, f"{example.where()}: say why it is not run"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400, "the README is a guide; the reference is in docs/"
    excerpts = [(d.name, start) for d in DOCUMENTS for lang, start, _ in fenced_blocks(d) if lang == "py"]
    assert len(excerpts) <= 2, excerpts
    readme = examples(ROOT / "README.md")
    assert not [e for e in readme if e.not_run], "every README example runs"
    assert any(e.code.startswith(".venv/bin/ce-inspect") for e in readme), "the README says where the command is"


def test_set_up_blocks_call_no_ce_inspect():
    """```sh blocks are not run, so no ce-inspect example may hide in one."""
    for document in DOCUMENTS:
        for lang, start, lines in fenced_blocks(document):
            if lang == "sh":
                for offset, line in enumerate(lines):
                    code = line.split("#", 1)[0]
                    assert not CALLS_CE_INSPECT.search(code), f"{document.name}:{start + offset}: use ```bash"


def test_the_example_parser_reads_markers_continuations_and_console_prompts(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n# a comment\nce-inspect run -p a \\\n    -a b   # a gate: exit 3\n"
        "ce-inspect batch x   # not run: needs 8 GPUs\n```\n"
        "```console\n$ ce-inspect --version\nce-inspect 0.1\n```\n```python\nprint(1)\n```\n"
    )
    found = examples(doc)
    assert [(e.line, e.kind, e.expected_exit, e.not_run) for e in found] == [
        (3, "shell", 3, None),
        (5, "shell", 0, "needs 8 GPUs"),
        (8, "shell", 0, None),
        (12, "python", 0, None),
    ]
    assert found[0].code == "ce-inspect run -p a \\\n    -a b   # a gate: exit 3"


def _workspace(folder: Path) -> None:
    from ce_inspect.model import default_gguf_path

    shutil.copytree(ROOT / "samples", folder / "samples")
    (folder / ".venv").symlink_to(Path(sys.prefix))
    (folder / "model.Q4_1.gguf").symlink_to(default_gguf_path())
    build_model(folder / "my-model", "llama", seed=0)
    build_model(folder / "my-model-b", "llama", seed=1)


def _environment(smollm2, folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "CE_INSPECT_MODEL"}
    env["HF_HOME"] = str(folder / ".hf")  # no user's accelerate config steers `accelerate launch`
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CE_INSPECT_CACHE"] = str(Path(smollm2.path).parents[1])  # the bundled model's cache, built once
    env.update(NO_COLOR="1", COLUMNS="120", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.default_model
@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if any(e.not_run is None for e in examples(d))],
    ids=lambda d: d.name,
)
def test_every_example_runs_in_order(document, smollm2, tmp_path):
    _workspace(tmp_path)
    env = _environment(smollm2, tmp_path)
    python_so_far: list[str] = []
    for example in examples(document):
        if example.not_run is not None:
            continue
        if example.kind == "python":
            python_so_far.append(example.code)
            argv = [sys.executable, "-c", "\n\n".join(python_so_far)]
        else:
            argv = ["bash", "-o", "pipefail", "-c", example.code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
        assert done.returncode == example.expected_exit, (
            f"{example.where()}: exit {done.returncode}, the document says {example.expected_exit}\n"
            f"{example.code}\nstdout:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}"
        )


def test_every_test_a_promise_names_exists():
    """docs/promises.md names a test for each promise; each named test is a function of that file."""
    rows = [line for line in (ROOT / "docs" / "promises.md").read_text().splitlines() if line.startswith("| ")]
    named = 0
    for row in rows[2:]:  # the header and its rule first
        current = None
        for file, name in re.findall(r"`(?:(tests/[\w/]+\.py))?(?:::(\w+))?`", row.rsplit("|", 2)[-2]):
            current = file or current
            if name:
                assert current, f"{name}: which file? ({row[:60]})"
                source = (ROOT / current).read_text()
                assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{current}::{name} does not exist"
                named += 1
    assert len(rows) > 30 and named > 60


def test_every_relative_link_of_the_documents_resolves():
    for document in DOCUMENTS:
        text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (document.parent / target.split("#")[0]).exists(), f"{document.name}: a link to {target}"
