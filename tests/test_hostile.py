"""Hostile inputs: each row is an input a careless or hostile user gives, the exit code it must get and
the words its one-line error must contain. The table grows with every defect found; a row never goes.

Rows run in-process through ``ce_inspect.cli.main`` (fast), or in a real process (``process=True``)
where the defect was a process behaviour (stdin, signals, special files). In argument lists and file
contents, ``{llama}`` and ``{gpt2}`` are the tiny test models' folders and ``{tmp}`` the test's folder.
Files named in ``files`` are written under ``{tmp}`` before the run (``str`` as UTF-8, ``bytes`` as is).

Behaviours that a table row cannot express (a file's bytes after the run, a lock held by a second
process, figures against an independent computation) are tests of their own, below the table,
named after the item of the issue they hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ce_inspect.cli import main

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]
    code: int
    message: str  # must appear in stderr's "Error: ..." line ("" for a successful run)
    files: dict[str, str | bytes] = field(default_factory=dict)
    stdin: bytes | None = None  # None: no stdin redirection (in-process) / closed stdin is ``process`` + b""
    process: bool = False


# --- models and the cache (loading) ----------------------------------------------------------------------
LOADING_CASES: list[Case] = []

# --- input files, output files and resume ---------------------------------------------------------------
_RUN = ["run", "-m", "{llama}", "--device", "cpu"]
_OURS = '{\n  "schema_version": 1\n}\n'
_PAIR = '{"id": "a", "prompt": "Q", "answer": " A"}\n'
FILE_CASES: list[Case] = [
    # Every output is checked by files.check_output before the model loads (item 7, "Unclear or silent").
    Case("run -o a folder", [*_RUN, "-p", "x", "-a", "y", "-o", "{tmp}"], 1, "is a folder; give a file path"),
    Case(
        "run -o in a missing folder",
        [*_RUN, "-p", "x", "-a", "y", "-o", "nope/r.json"],
        1,
        "the folder nope does not exist",
    ),
    Case(
        "run -o its --prompt-file",
        [*_RUN, "--prompt-file", "p.txt", "-a", "y", "-o", "p.txt"],
        1,
        "--output p.txt: is the same file as --prompt-file",
        files={"p.txt": "my prompt"},
    ),
    Case(
        "run -o its --answer-file",
        [*_RUN, "-p", "x", "--answer-file", "a.txt", "-o", "a.txt"],
        1,
        "is the same file as --answer-file",
        files={"a.txt": "my answer"},
    ),
    Case(
        "run -o its --messages",
        [*_RUN, "--messages", "m.json", "-o", "m.json"],
        1,
        "is the same file as --messages",
        files={"m.json": '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]'},
    ),
    Case(
        "run -o a file ce-inspect did not write",
        [*_RUN, "-p", "x", "-a", "y", "-o", "notes.txt"],
        1,
        "--output notes.txt: exists and was not written by ce-inspect",
        files={"notes.txt": "my notes"},
    ),
    Case(
        "run -o a foreign file with --force",
        [*_RUN, "-p", "x", "-a", "y", "-o", "notes.txt", "--force"],
        0,
        "",
        files={"notes.txt": "my notes"},
    ),
    Case(
        "run -o its own earlier output", [*_RUN, "-p", "x", "-a", "y", "-o", "r.json"], 0, "", files={"r.json": _OURS}
    ),
    Case("run -o /dev/null", [*_RUN, "-p", "x", "-a", "y", "-o", "/dev/null"], 0, ""),
    Case(
        "run -o /dev/full",
        [*_RUN, "-p", "x", "-a", "y", "-o", "/dev/full"],
        1,
        "--output /dev/full: cannot write it (No space left on device)",
    ),
    Case(
        "run --prompt-file not UTF-8",
        [*_RUN, "--prompt-file", "p.txt", "-a", "y"],
        1,
        "--prompt-file p.txt: not UTF-8 text",
        files={"p.txt": b"Hi \xff"},
    ),
    Case(
        "run --prompt-file - with bytes that are not UTF-8",
        [*_RUN, "--prompt-file", "-", "-a", "y"],
        1,
        "--prompt-file (stdin): not UTF-8 text (invalid start byte at byte 3)",
        stdin=b"Hi \xff",
        process=True,
    ),
    Case("run --prompt-file a folder", [*_RUN, "--prompt-file", "{tmp}", "-a", "y"], 1, "is a folder, not a file"),
    # batch: --output and --summary-json, both checked before the model loads (the model path is wrong).
    Case(
        "batch --summary-json in a missing folder",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "no/s.json"],
        1,
        "--summary-json no/s.json: the folder no does not exist",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch -o in a missing folder",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "no/o.jsonl"],
        1,
        "--output no/o.jsonl: the folder no does not exist",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch -o its input",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "d.jsonl", "--force"],
        1,
        "--output d.jsonl: is the same file as the input file",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json its input",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "d.jsonl"],
        1,
        "--summary-json d.jsonl: is the same file as the input file",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json its --output",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o", "--summary-json", "o"],
        1,
        "--summary-json o: is --output too",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json onto a file ce-inspect did not write",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "notes.txt"],
        1,
        "--summary-json notes.txt: exists and was not written by ce-inspect",
        files={"d.jsonl": _PAIR, "notes.txt": "my notes"},
    ),
    Case(
        "batch -o an existing file",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o.jsonl"],
        1,
        "--output o.jsonl already exists; pass --resume to continue it or --force to replace it",
        files={"d.jsonl": _PAIR, "o.jsonl": "x\n"},
    ),
    Case(
        "batch --resume onto a device",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "/dev/null", "--resume"],
        1,
        "--resume continues a regular file",
        files={"d.jsonl": _PAIR},
    ),
    # --resume reads the output before the model loads and refuses anything it did not write (item 6).
    Case(
        "batch --resume onto text with no newline",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o.txt", "--resume"],
        1,
        "--resume: o.txt ends with 12 bytes that ce-inspect did not write",
        files={"d.jsonl": _PAIR, "o.txt": "someone's it"},
    ),
    Case(
        "batch --resume onto a complete foreign line",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o", "--resume"],
        1,
        "--resume: line 1 of o is not a complete ce-inspect batch result",
        files={"d.jsonl": _PAIR, "o": '{"schema_version": 1, "x": 2}\n'},
    ),
    Case(
        "batch - reads stdin",
        ["batch", "-", "-m", "{llama}", "--no-sequence"],
        0,
        "",
        stdin=_PAIR.encode(),
        process=True,
    ),
    Case(
        "batch - with a bad line names stdin",
        ["batch", "-", "-m", "{llama}"],
        1,
        "<stdin> line 1: missing field 'answer'",
        stdin=b'{"prompt": "Q"}\n',
        process=True,
    ),
    Case(
        "batch - with an empty stdin",
        ["batch", "-", "-m", "{llama}", "-o", "o", "--resume"],
        1,
        "<stdin> holds no records",
        stdin=b"\n",
        files={"o": ""},
        process=True,
    ),
]

# --- text: Unicode, special tokens, options that change what is scored ----------------------------------
TEXT_CASES: list[Case] = []

# --- batch data sets and their formats -------------------------------------------------------------------
DATA_CASES: list[Case] = []

# --- diff, reports and other commands --------------------------------------------------------------------
COMMAND_CASES: list[Case] = []

CASES = LOADING_CASES + FILE_CASES + TEXT_CASES + DATA_CASES + COMMAND_CASES


def _fill(text: str, paths: dict[str, str]) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_case(case: Case, tmp_path: Path, paths: dict[str, str], capsys) -> tuple[int, str, str]:
    """Run one row; returns (exit code, stdout, stderr)."""
    paths = {**paths, "tmp": str(tmp_path)}
    for name, content in case.files.items():
        target = tmp_path / _fill(name, paths)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(_fill(content, paths), encoding="utf-8")
    args = [_fill(a, paths) for a in case.args]
    if case.process:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "ce_inspect", *args],
            cwd=tmp_path,
            env=env,
            input=case.stdin,
            stdin=None if case.stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=180,
        )
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(args)
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, tmp_path, tiny_llama_dir, tiny_gpt2_dir, capsys):
    code, out, err = run_case(case, tmp_path, {"llama": str(tiny_llama_dir), "gpt2": str(tiny_gpt2_dir)}, capsys)
    assert "Traceback" not in err, err
    assert code == case.code, (code, err)
    if case.code != 0:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, err  # one line, not a cascade
        assert case.message in errors[0], errors[0]
        assert out == "", out  # on failure stdout stays empty
