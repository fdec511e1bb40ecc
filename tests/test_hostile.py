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
FILE_CASES: list[Case] = []

# --- text: Unicode, special tokens, options that change what is scored ----------------------------------
TEXT_CASES: list[Case] = []

# --- batch data sets and their formats -------------------------------------------------------------------
DATA_CASES: list[Case] = []

# --- diff, reports and other commands --------------------------------------------------------------------
COMMAND_CASES: list[Case] = [
    Case("diff-without-candidate", ["diff", "-m", "{llama}", "-p", "a", "-a", "b"], 2, "--model-b"),
    Case("diff-bad-dtype-b", ["diff", "-m", "{llama}", "--dtype-b", "fp8", "-p", "a", "-a", "b"], 2, "--dtype-b"),
    Case("diff-bad-device-b", ["diff", "-m", "{llama}", "--device-b", "gpu", "-p", "a", "-a", "b"], 2, "--device-b"),
    Case(
        "diff-gate-not-a-number",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--fail-above-kl", "low"],
        2,
        "--fail-above-kl",
    ),
    Case(
        "diff-gate-nan",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--fail-above-dnll", "nan"],
        2,
        "finite number",
    ),
    Case(
        "diff-bad-color-by",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--color-by", "loss"],
        2,
        "--color-by",
    ),
    Case(
        "diff-messages-and-pair",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "--messages", "{tmp}/m.json", "-p", "a"],
        2,
        "drop --prompt",
        files={"m.json": "[]"},
    ),
    Case(
        "diff-missing-candidate-folder",
        ["diff", "-m", "{llama}", "--model-b", "{tmp}/nope", "-p", "a", "-a", "b"],
        1,
        "nope",
    ),
    # The gpt2 model has no BOS token: the two layouts differ, and diff refuses rather than compare them.
    Case(
        "diff-different-tokens",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b"],
        1,
        "tokenizers give different tokens from token 0 on",
    ),
    Case(
        "diff-output-is-input",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "--prompt-file", "p.txt", "-a", "b", "-o", "p.txt"],
        1,
        "is an input file",
        files={"p.txt": "hi"},
    ),
    Case(
        "run-gate-not-a-number",
        ["run", "-m", "{llama}", "-p", "a", "-a", "b", "--fail-above-loss", "x"],
        2,
        "--fail-above-loss",
    ),
]

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
