"""The command line: JSON contract, stdout hygiene, files, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ce_inspect.cli import main
from ce_inspect.cli.app import app

REQUIRED_TOP = {"schema_version", "model", "device", "dtype", "tokens", "summary"}
REQUIRED_TOKEN = {"index", "token_id", "token", "prob", "logprob", "loss", "rank"}
REQUIRED_SUMMARY = {"mean", "sum", "count", "perplexity"}


@pytest.fixture
def base(tiny_llama_dir):
    return ["run", "--model", str(tiny_llama_dir), "--device", "cpu"]


def test_json_contract(base):
    result = CliRunner().invoke(app, [*base, "-p", "Where is it?", "-a", " Here.", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert REQUIRED_TOP <= doc.keys() and doc["schema_version"] == 1
    assert REQUIRED_SUMMARY <= doc["summary"].keys()
    assert doc["tokens"] and all(REQUIRED_TOKEN <= t.keys() for t in doc["tokens"])
    assert doc["summary"]["count"] == len(doc["tokens"])
    assert doc["summary"]["mean"] == pytest.approx(sum(t["loss"] for t in doc["tokens"]) / len(doc["tokens"]))
    assert [t["index"] for t in doc["tokens"]] == sorted(t["index"] for t in doc["tokens"])
    assert doc["tokens"][-1]["segment"] == "eos"


@pytest.mark.slow
def test_json_stdout_has_nothing_else(tiny_llama_dir):
    """Through a real process: stdout parses as JSON, progress went to stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "ce_inspect", "run", "-m", str(tiny_llama_dir), "-p", "a b", "-a", " c", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert "Loading" in proc.stderr or proc.stderr == ""


def test_output_file_matches_stdout(base, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, [*base, "-p", "x", "-a", " y", "--json", "-o", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text()) == json.loads(result.stdout)


def test_human_table(base):
    result = CliRunner().invoke(app, [*base, "-p", "x", "-a", " y [/bold] z", "--top-k", "2", "--verify"])
    assert result.exit_code == 0, result.output
    assert "Per-token loss" in result.stdout and "mean loss" in result.stdout and "perplexity" in result.stdout
    assert "[/bold]" in result.stdout.replace("␣", " ")  # markup-like text is shown, not interpreted
    assert "model's own loss" in result.stdout


def test_prompt_and_answer_files_and_stdin(base, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("line one\n")
    result = CliRunner().invoke(app, [*base, "--prompt-file", str(prompt), "--answer-file", "-", "--json"], input=" ok")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    direct = CliRunner().invoke(app, [*base, "-p", "line one\n", "-a", " ok", "--json"])
    assert doc["tokens"] == json.loads(direct.stdout)["tokens"]


def run_main(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["-p", "x"], 2, "--answer"),
        (["-a", "y"], 2, "--prompt"),
        (["-p", "x", "-a", ""], 1, "answer is empty"),
        (["-p", "x", "-a", "y", "--device", "gpu"], 2, "--device"),
        (["-p", "x", "-a", "y", "--dtype", "fp8"], 2, "--dtype"),
        (["-p", "x", "-a", "y", "--reduction", "avg"], 2, "--reduction"),
        (["-p", "x", "-a", "y", "--label-smoothing", "2"], 2, "label-smoothing"),
        (["-p", "x", "--answer-file", "/nonexistent/a.txt"], 1, "no such file"),
        (["-p", "x", "-a", "y", "--prompt-file", "p.txt"], 2, "not both"),
        (["--prompt-file", "-", "--answer-file", "-"], 2, "stdin"),
        (["-p", "x" * 400, "-a", "y"], 1, "context is 256"),
    ],
)
def test_bad_input_is_one_line(capsys, base, extra, code, message):
    rc, out, err = run_main(capsys, [*base, *extra, "--json"])
    assert rc == code
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], err


def test_truncate_prompt_note(capsys, base):
    rc, out, err = run_main(capsys, [*base, "-p", "x" * 400, "-a", "y", "--truncate-prompt", "--json"])
    assert rc == 0
    doc = json.loads(out)
    assert any("dropped" in note for note in doc["notes"])


def test_missing_model_and_bad_output(capsys, tiny_llama_dir, tmp_path):
    rc, out, err = run_main(capsys, ["run", "-m", str(tmp_path / "missing"), "-p", "x", "-a", "y"])
    assert rc == 1 and "does not exist" in err and out == ""
    target = tmp_path / "no-such-dir" / "out.json"
    rc, out, err = run_main(capsys, ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", "y", "-o", str(target)])
    assert rc == 1 and "--output" in err and not target.exists()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from ce_inspect.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "main(['run', '-p', 'x', '--device', 'gpu', '-a', 'y'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
