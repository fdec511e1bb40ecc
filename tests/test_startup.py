"""Fast start: help and argument errors never import torch; the process entry flushes and exits at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def python(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, input=stdin, timeout=PROCESS_TIMEOUT
    )


PROBE = (
    "import sys; from ce_inspect.cli import main; code = main({argv!r}); "
    "print('HEAVY', sorted({{'torch', 'transformers', 'numpy'}} & set(sys.modules)), code)"
)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["run", "-p", "x"], 2),
        (["run", "-p", "x", "-a", "y", "--dtype", "f"], 2),
    ],
)
def test_help_and_argument_errors_import_no_torch(argv, code):
    out = python("-c", PROBE.format(argv=argv))
    assert f"HEAVY [] {code}" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("command", [["batch"], ["diff", "--model-b", "other-model"]])
@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        ('{"prompt": 1', "line 1: not valid JSON"),
        ('{"question": "q"}', "line 1: no known format"),
    ],
)
def test_an_unreadable_first_record_is_refused_before_torch_loads(command, first_line, message, tmp_path):
    """Issue 20: an input mistake that needs no model is reported before torch is imported (torch alone takes
    seconds); the model named is never opened. With --skip-invalid the run goes on to load it."""
    data = tmp_path / "bad.jsonl"
    data.write_text(first_line + '\n{"prompt": "p", "answer": " a"}\n')
    argv = [command[0], str(data), "-m", str(tmp_path / "no-such-model"), *command[1:]]
    out = python("-c", PROBE.format(argv=argv))
    assert "HEAVY [] 1" in out.stdout, out.stdout + out.stderr
    assert message in out.stderr and "(fix the line, or pass --skip-invalid)" in out.stderr
    skipping = python("-c", PROBE.format(argv=[*argv, "--skip-invalid"]))
    assert "no-such-model" in skipping.stderr  # it went on to the model, which does not exist


@pytest.mark.slow
def test_entry_writes_everything_then_exits(tiny_llama_dir, tmp_path):
    target = tmp_path / "out.json"
    answer = " the answer, " * 20
    out = python(
        "-m", "ce_inspect", "run", "-m", str(tiny_llama_dir), "-p", "Q?", "-a", answer, "--json", "-o", str(target)
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == json.loads(target.read_text())
    assert len(printed["tokens"]) > 100


@pytest.mark.slow
def test_entry_keeps_the_exit_status_of_errors(tmp_path):
    out = python("-m", "ce_inspect", "run", "-m", str(tmp_path / "missing"), "-p", "a", "-a", "b")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("Error: model path")
    assert out.stdout == ""
