"""The command line: JSON contract, stdout hygiene, files, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT
from typer.testing import CliRunner

from ce_inspect.cli import main
from ce_inspect.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
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
        timeout=PROCESS_TIMEOUT,
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
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


# --- files: input text verbatim, outputs checked and written safely (issue 8) ---------------------------

CRLF_PROMPT = b"Line one\r\nline two\r\n"


def _proc(args, *, tmp_path, stdin=None, **kwargs) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CE_INSPECT_CACHE": str(tmp_path / "c")}
    return subprocess.run(
        [sys.executable, "-m", "ce_inspect", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
        **kwargs,
    )


def test_prompt_file_crlf_is_read_verbatim_and_run_agrees_with_batch(capsys, base, tiny_llama, tmp_path):
    """Item 3: a file's CRLF reaches the tokenizer as CRLF, as a JSONL line's \\r\\n does in batch."""
    prompt = tmp_path / "p.txt"
    prompt.write_bytes(CRLF_PROMPT)
    code, out, _ = run_main(capsys, [*base, "--prompt-file", str(prompt), "-a", " ok", "--json"])
    assert code == 0
    from_file = json.loads(out)
    # Independent of every reading path: the tokenizer's own ids of the file's decoded bytes.
    want = tiny_llama.tokenizer(CRLF_PROMPT.decode("utf-8"), add_special_tokens=False)["input_ids"]
    got = [s["token_id"] for s in from_file["sequence"] if s["segment"] == "prompt"]
    assert got == want and from_file["layout"]["prompt_tokens"] == len(want)
    lf = tiny_llama.tokenizer(CRLF_PROMPT.decode().replace("\r\n", "\n"), add_special_tokens=False)["input_ids"]
    assert got != lf  # the test can fail: CRLF and LF tokenize differently

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": CRLF_PROMPT.decode(), "answer": " ok"}) + "\n", encoding="utf-8")
    assert main(["batch", str(data), "-m", str(base[2])]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [t["token_id"] for t in line["tokens"]] == [t["token_id"] for t in from_file["tokens"]]
    assert line["summary"]["mean"] == pytest.approx(from_file["summary"]["mean"], abs=1e-6)


@pytest.mark.slow
def test_stdin_is_read_verbatim_in_a_real_process(tiny_llama_dir, tmp_path):
    (tmp_path / "p.txt").write_bytes(CRLF_PROMPT)
    args = ["run", "-m", str(tiny_llama_dir), "-a", " ok", "--json"]
    from_file = _proc([*args, "--prompt-file", "p.txt"], tmp_path=tmp_path)
    from_stdin = _proc([*args, "--prompt-file", "-"], tmp_path=tmp_path, input=CRLF_PROMPT)
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout)["tokens"] == json.loads(from_file.stdout)["tokens"]
    assert json.loads(from_stdin.stdout)["layout"] == json.loads(from_file.stdout)["layout"]


def test_closed_stdin_is_a_one_line_error(tiny_llama_dir, tmp_path):
    """Item 11: `<&-` leaves no stdin at all."""
    import os

    for args in (["run", "--prompt-file", "-", "-a", "x"], ["run", "--messages", "-"], ["batch", "-"]):
        proc = _proc([*args, "-m", str(tiny_llama_dir)], tmp_path=tmp_path, stdin=None, preexec_fn=lambda: os.close(0))
        err = proc.stderr.decode()
        assert proc.returncode == 1 and proc.stdout == b"", err
        assert err.count("\n") == 1 and err.startswith("Error: ") and "stdin is closed" in err, err


def test_rerun_replaces_its_own_output_but_not_someone_elses(capsys, base, tmp_path):
    out = tmp_path / "r.json"
    assert run_main(capsys, [*base, "-p", "x", "-a", " y", "-o", str(out)])[0] == 0
    first = json.loads(out.read_text())
    assert run_main(capsys, [*base, "-p", "x", "-a", " z", "-o", str(out)])[0] == 0  # a rerun: allowed
    assert json.loads(out.read_text())["tokens"] != first["tokens"]
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, no newline")
    code, stdout, err = run_main(capsys, [*base, "-p", "x", "-a", " y", "-o", str(notes)])
    assert code == 1 and stdout == "" and "was not written by ce-inspect" in err and "--force" in err
    assert notes.read_bytes() == b"my notes, no newline"
    assert run_main(capsys, [*base, "-p", "x", "-a", " y", "-o", str(notes), "--force"])[0] == 0
    assert json.loads(notes.read_text())["schema_version"] == 1


def test_output_onto_an_input_is_refused_before_loading(capsys, tmp_path):
    """Item 7, through a link too: the model path is wrong, so only a check before loading can answer."""
    messages = tmp_path / "m.json"
    text = '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]'
    messages.write_text(text)
    link = tmp_path / "link.json"
    link.symlink_to(messages)
    code, out, err = run_main(capsys, ["run", "-m", "nowhere", "--messages", str(messages), "-o", str(link)])
    assert code == 1 and out == ""
    assert err == f"Error: --output {link}: is the same file as --messages; write the output elsewhere\n"
    assert messages.read_text() == text and link.is_symlink()


@pytest.mark.slow
def test_output_modes_and_links_in_a_real_process(tiny_llama_dir, tmp_path):
    """Item 10: a new file gets 0666 less the umask, an existing one keeps its mode, a link stays a link."""
    import os
    import stat

    args = ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y"]
    assert _proc([*args, "-o", "new.json"], tmp_path=tmp_path, preexec_fn=lambda: os.umask(0o022)).returncode == 0
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    (tmp_path / "new.json").chmod(0o660)
    assert _proc([*args, "-o", "new.json"], tmp_path=tmp_path, preexec_fn=lambda: os.umask(0o077)).returncode == 0
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o660
    (tmp_path / "link.json").symlink_to("new.json")
    before = (tmp_path / "new.json").stat().st_ino
    assert _proc([*args, "-a", " z", "-o", "link.json"], tmp_path=tmp_path).returncode == 0
    assert (tmp_path / "link.json").is_symlink()
    assert "z" in [t["token"] for t in json.loads((tmp_path / "new.json").read_text())["tokens"]]
    assert (tmp_path / "new.json").stat().st_ino != before  # replaced atomically: a new inode at the target


@pytest.mark.slow
def test_output_to_dev_stdout_writes_through_in_a_real_process(tiny_llama_dir, tmp_path):
    """Item 8: /dev/stdout (a pipe here) is written, never renamed over."""
    proc = _proc(
        ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", "--json", "-o", "/dev/stdout"], tmp_path=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    half = len(text) // 2
    assert text[:half] == text[half:] and json.loads(text[:half])["schema_version"] == 1  # -o and --json


def broken_pipe_run(args, tmp_path) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has already gone (what `| head` leaves once head exits)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CE_INSPECT_CACHE": str(tmp_path / "c")}
    try:
        return subprocess.run(
            [sys.executable, "-m", "ce_inspect", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            timeout=PROCESS_TIMEOUT,
        )
    finally:
        os.close(write_end)


@pytest.mark.slow
def test_run_exits_141_when_stdout_reader_goes_away(tiny_llama_dir, tmp_path):
    """`run --json | head -c 10` and `run | head`: 141, like a tool killed by SIGPIPE, and no traceback."""
    for extra in (["--json"], []):
        proc = broken_pipe_run(["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", *extra], tmp_path)
        assert proc.returncode == 141, proc.stderr
        assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr
