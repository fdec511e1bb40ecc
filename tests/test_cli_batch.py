"""`ce-inspect batch` end to end: stdout discipline, files, errors, shared options, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import PROCESS_TIMEOUT, wait_for

from ce_inspect.cli import main
from ce_inspect.cli.app import app
from ce_inspect.cli.options import _SHARED

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."},
    {"id": "b", "prompt": "x", "answer": "y"},
    {"prompt": "Summarize: the meeting moved to Wednesday because the speaker was ill.", "answer": " Moved."},
    {"id": 4, "prompt": "Q", "answer": " A long answer that goes on and on, with commas and numbers 1 2 3."},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", ROWS)


def test_stdout_carries_only_json_lines_in_input_order(capsys, tiny_llama_dir, data):
    code = main(["batch", str(data), "--model", str(tiny_llama_dir), "-b", "3"])
    out, err = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]  # every stdout line is a JSON document
    assert [(d["line"], d["id"]) for d in lines] == [(1, "a"), (2, "b"), (3, None), (4, 4)]
    assert all(d["schema_version"] == 1 and d["tokens"] and "sequence" in d for d in lines)
    assert "token-weighted mean loss" in err and "example-weighted mean loss" in err  # the table went to stderr
    assert "ETA" not in err  # no progress bar when stderr is not a terminal
    assert "Traceback" not in err


def test_progress_bar_is_drawn_only_on_a_terminal(tiny_llama, data):
    import io

    from rich.console import Console

    from ce_inspect.cli.render_batch import batch_progress
    from ce_inspect.dataset import scan_dataset

    scan = scan_dataset(tiny_llama, data)
    for terminal in (True, False):
        buffer = io.StringIO()
        with batch_progress(Console(file=buffer, force_terminal=terminal, width=120), scan) as advance:
            advance(2, 30)
        assert ("examples" in buffer.getvalue() and "ETA" in buffer.getvalue()) is terminal


def test_output_file_summary_json_and_table(capsys, tiny_llama_dir, data, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    code = main(
        ["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--summary-json", str(summary), "--worst", "2"]
    )
    stdout, _ = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(ROWS)
    s = json.loads(summary.read_text())
    assert s["kind"] == "batch_summary" and s["examples"] == len(ROWS) and s["output"] == str(out)
    tokens = [t for d in lines for t in d["tokens"]]
    assert s["scored_tokens"] == len(tokens)
    assert s["token_weighted_mean_loss"] == pytest.approx(sum(t["loss"] for t in tokens) / len(tokens), abs=1e-9)
    means = [d["summary"]["mean"] for d in lines]
    assert s["example_weighted_mean_loss"] == pytest.approx(sum(means) / len(means), abs=1e-9)
    assert len(s["worst_examples"]) == 2 and len(s["worst_tokens"]) == 2
    assert s["worst_examples"][0]["mean"] == max(means)
    assert "Worst 2 examples by mean loss" in stdout and "Highest-loss tokens" in stdout


def test_no_sequence_keeps_lines_small(capsys, tiny_llama_dir, data):
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "--no-sequence"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and all("sequence" not in d and d["tokens"] for d in lines)


def test_shared_options_are_declared_once_for_run_and_batch():
    commands = typer.main.get_command(app).commands
    shared = {name for name, _, _ in _SHARED}
    for name in ("run", "batch"):
        params = {p.name for p in commands[name].params}
        assert shared <= params, (name, shared - params)


def test_layout_and_scoring_options_apply_to_every_line(capsys, tiny_llama_dir, data):
    argv = ["batch", str(data), "-m", str(tiny_llama_dir), "--no-eos", "--sep", " =>", "--top-k", "3"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for d in lines:
        assert d["layout"]["eos"] is False and d["layout"]["sep"] == " =>"
        assert all(t["segment"] == "answer" and len(t["top_k"]) == 3 for t in d["tokens"])
        assert any(s["segment"] == "sep" for s in d["sequence"])


def test_existing_output_is_not_replaced(capsys, tiny_llama_dir, data, tmp_path):
    out = write_jsonl(tmp_path / "out.jsonl", ['{"keep": "me"}'])
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]) == 1
    _, err = capsys.readouterr()
    assert err == f"Error: --output {out} already exists; pass --resume to continue it or --force to replace it\n"
    assert out.read_text() == '{"keep": "me"}\n'
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--force"]) == 0
    assert len(out.read_text().splitlines()) == len(ROWS)


def test_resume_needs_an_output_file(capsys, data):
    assert main(["batch", str(data), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "--resume" in err and err.count("\n") == 1


def test_summary_json_may_not_overwrite_the_data(capsys, data):
    assert main(["batch", str(data), "--summary-json", str(data)]) == 1
    assert capsys.readouterr().err == (
        f"Error: --summary-json {data}: is the same file as the input file; write the output elsewhere\n"
    )
    assert len(data.read_text().splitlines()) == len(ROWS)


def test_bad_line_stops_with_its_number_and_writes_nothing(capsys, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"id": "q", "prompt": "only a prompt"}, ROWS[1]])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]) == 1
    _, err = capsys.readouterr()
    notice, error = err.splitlines()  # the format line, then the one error line
    assert notice.startswith(f"Reading {data} (JSONL): format prompt-answer")
    assert error == f"Error: {data} line 2 (id 'q'): missing field 'answer' (fix the line, or pass --skip-invalid)"
    assert not out.exists()


def test_skip_invalid_lists_skipped_lines(capsys, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], "not json", {"prompt": "p", "answer": ""}, ROWS[1]])
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    argv = ["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--skip-invalid", "--summary-json"]
    assert main(argv + [str(summary)]) == 0
    stdout, _ = capsys.readouterr()
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 4]
    skipped = json.loads(summary.read_text())["skipped"]
    assert [(k["line"], k["reason"].split(" ")[0]) for k in skipped] == [(2, "not"), (3, "the")]
    assert "Skipped 2 invalid lines" in stdout


def test_custom_field_names(capsys, tiny_llama_dir, tmp_path):
    rows = [{"key": "k1", "question": "Capital of China?", "response": " Beijing."}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    argv = ["batch", str(data), "-m", str(tiny_llama_dir), "--prompt-field", "question", "--answer-field", "response"]
    assert main(argv + ["--id-field", "key"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["id"] == "k1" and line["layout"]["answer_tokens"] > 0


# --- real processes: kill and resume --------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CE_INSPECT_CACHE=str(tmp_path / "c"))
    # One torch thread: on cores other work keeps busy, two OpenMP threads wait for each other at every
    # operation of the tiny model and a record takes ~20x longer (1,000 records took over 5 minutes).
    env["OMP_NUM_THREADS"] = "1"
    return env


def _start(tmp_path: Path, model: Path, data: Path, out: Path, *extra: str, stdin=None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "ce_inspect", "batch", str(data), "-m", str(model), "-o", str(out), "-b", "1"]
    argv += ["--sort-window", "1", *extra]
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=_env(tmp_path),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell running the suite in the background (`cmd &`, no job control) starts it with SIGINT
        # ignored, and children inherit that: give the run the SIGINT a user's Ctrl-C sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_lines(proc: subprocess.Popen, out: Path, n: int) -> None:
    wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= n, f"{n} lines in {out}", proc=proc)


def _many_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Question {i}: what is {i} + {i}?", "answer": f" {2 * i}."} for i in range(n)]


@pytest.mark.slow
def test_kill_9_midway_then_resume_gives_exactly_one_line_per_record(tmp_path, tiny_llama_dir):
    rows = _many_rows(1000)  # enough that the run cannot finish before the signal, even on a fast machine
    data, out = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "out.jsonl"
    proc = _start(tmp_path, tiny_llama_dir, data, out)
    _wait_for_lines(proc, out, 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=PROCESS_TIMEOUT)
    written = out.read_bytes().count(b"\n")
    assert 5 <= written < len(rows), "the kill must land mid-run"

    resumed = subprocess.run(
        [sys.executable, "-m", "ce_inspect", "batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]
        + ["--resume", "-b", "4", "--summary-json", str(tmp_path / "s.json")],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["line"] for d in lines] == list(range(1, len(rows) + 1))
    assert [d["id"] for d in lines] == [r["id"] for r in rows]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["examples"] == len(rows) and summary["resumed"] >= written


@pytest.mark.slow
def test_interrupt_leaves_whole_lines_and_says_how_to_resume(tmp_path, tiny_llama_dir):
    rows = _many_rows(1000)  # enough that the run cannot finish before the signal, even on a fast machine
    data, out = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "out.jsonl"
    proc = _start(tmp_path, tiny_llama_dir, data, out)
    _wait_for_lines(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 130
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode().splitlines()]  # every line parses
    assert len(lines) < len(rows)
    assert f"Interrupted: {len(lines)} complete lines are in {out}; rerun the same command with --resume" in err
    assert "Traceback" not in err


# --- resume safety, locks, special outputs and stdin (issue 8) ------------------------------------------


@pytest.fixture
def fingerprinted(monkeypatch):
    """Give every loaded model a fingerprint of its folder's files when loading does not compute one."""
    import hashlib

    import ce_inspect.cli.options as options  # the command line's one call of `load`

    real = options.load

    def load(spec=None, **kwargs):
        lm = real(spec, **kwargs)
        if lm.fingerprint is None and spec is not None and Path(spec).is_dir():
            digest = hashlib.sha256()
            for f in sorted(Path(spec).iterdir()):
                digest.update(f.name.encode() + f.read_bytes())
            lm.fingerprint = digest.hexdigest()
        return lm

    monkeypatch.setattr(options, "load", load)


def _batch(capsys, data: Path, model: Path, out: Path, *extra: str) -> tuple[int, str]:
    """Exit code and stderr, without the one line that says how the input is read (its format)."""
    code = main(["batch", str(data), "-m", str(model), "-o", str(out), "-b", "8", *extra])
    err = capsys.readouterr().err
    return code, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("Reading "))


def test_resume_refuses_a_model_whose_config_changed(capsys, tmp_path, fingerprinted):
    """Item 5: 40 records, 15 written, then rope_theta edited: resume must not mix two models' lines."""
    from conftest import build_model

    model = build_model(tmp_path / "m1", "llama")
    data = write_jsonl(tmp_path / "d.jsonl", _many_rows(40))
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert _batch(capsys, data, model, full)[0] == 0
    kept = b"".join(full.read_bytes().splitlines(keepends=True)[:15])  # an interrupted run's 15 lines
    out.write_bytes(kept)
    assert _batch(capsys, data, model, out, "--resume")[0] == 0  # same model: resumes
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == list(range(1, 41))

    out.write_bytes(kept)
    config = json.loads((model / "config.json").read_text())
    config["rope_theta"] = 500.0
    (model / "config.json").write_text(json.dumps(config))
    code, err = _batch(capsys, data, model, out, "--resume")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"Error: --resume: {out} was written by a model whose config, tokenizer or weights differ")
    assert out.read_bytes() == kept  # not a byte changed


def test_resume_refuses_an_option_that_changes_lines(capsys, tmp_path, tiny_llama_dir):
    """Item 5: --top-k (or --no-sequence, --label-smoothing ...) added on resume would mix two kinds of line."""
    data = write_jsonl(tmp_path / "d.jsonl", _many_rows(6))
    out = tmp_path / "out.jsonl"
    assert _batch(capsys, data, tiny_llama_dir, out)[0] == 0
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:3])
    for extra, message in (
        (["--top-k", "3"], "was written with --top-k 0, this run has --top-k 3"),
        (["--no-sequence"], 'was written with "sequence": true, this run has "sequence": false'),
        (["--label-smoothing", "0.1"], "was written with --label-smoothing 0.0, this run has --label-smoothing 0.1"),
        (["--no-mask-prompt"], 'was written with "mask_prompt": true, this run has "mask_prompt": false'),
        (["--answer-field", "prompt"], "was written with `fields`"),
    ):
        out.write_bytes(kept)
        code, err = _batch(capsys, data, tiny_llama_dir, out, "--resume", *extra)
        assert code == 1 and message in err and err.count("\n") == 1, (extra, err)
        assert out.read_bytes() == kept


def test_resume_never_drops_bytes_it_did_not_write(capsys, tmp_path, tiny_llama_dir):
    """Item 6: only a torn tail that starts like one of our lines may go; anything else is refused, intact."""
    data = write_jsonl(tmp_path / "d.jsonl", _many_rows(4))
    out = tmp_path / "out.jsonl"
    assert _batch(capsys, data, tiny_llama_dir, out)[0] == 0
    ours = b"".join(out.read_bytes().splitlines(keepends=True)[:2])
    for foreign in (b"someone's text, no newline", b"someone's complete line\n", b"{}\n", b"\n"):
        for content in (foreign, ours + foreign):
            out.write_bytes(content)
            code, err = _batch(capsys, data, tiny_llama_dir, out, "--resume")
            assert code == 1 and "--resume" in err and err.count("\n") == 1, (content, err)
            assert out.read_bytes() == content
    torn = b'{"schema_version": 1, "id": "r2", "li'  # what a kill -9 mid-line leaves
    out.write_bytes(ours + torn)
    code, err = _batch(capsys, data, tiny_llama_dir, out, "--resume")
    assert code == 0 and f"dropping an incomplete last line ({len(torn)} bytes)" in err
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_second_writer_of_one_output_is_refused(tmp_path, tiny_llama_dir):
    """Item 9: two real processes onto one --output: the second fails at once naming the first's PID."""
    from ce_inspect.files import lock_path

    # The first reads its records from stdin, which `batch` reads only once --output is locked: held at
    # that point until the test writes them, it holds the lock however fast or slow the machine is.
    rows = _many_rows(20)
    out = tmp_path / "out.jsonl"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    first = _start(tmp_path, tiny_llama_dir, Path("-"), out, stdin=subprocess.PIPE)
    try:
        lock = lock_path(out)
        wait_for(
            lambda: lock.exists() and lock.read_text().strip() == str(first.pid),
            f"the first run (PID {first.pid}) to hold the lock {lock}",
            proc=first,
        )
        second = subprocess.run(
            [sys.executable, "-m", "ce_inspect", "batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]
            + ["--force"],
            cwd=ROOT,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr == (
            f"Error: --output {out}: another ce-inspect run (PID {first.pid}) is writing it; wait for it to finish "
            "or write elsewhere\n"
        )
    finally:
        _, err = first.communicate(data.read_text(), timeout=PROCESS_TIMEOUT)
    assert first.returncode == 0, err
    assert [json.loads(x)["line"] for x in out.read_text().splitlines()] == list(range(1, len(rows) + 1))  # whole
    assert not (tmp_path / ".out.jsonl.lock").exists()


@pytest.mark.slow
def test_batch_reads_stdin_and_resumes_from_it(tmp_path, tiny_llama_dir):
    """`batch -` reads JSONL from stdin (spooled: batch reads its input twice), and --resume works with it."""
    data = write_jsonl(tmp_path / "d.jsonl", _many_rows(6))
    base = [sys.executable, "-m", "ce_inspect", "batch", "-m", str(tiny_llama_dir), "--no-sequence"]

    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        env = _env(tmp_path)
        return subprocess.run(
            [*base, *args], cwd=tmp_path, env=env, input=stdin, capture_output=True, timeout=PROCESS_TIMEOUT
        )

    from_file = run(str(data))
    from_stdin = run("-", stdin=data.read_bytes())
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout and from_file.stdout.count(b"\n") == 6
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(from_file.stdout.splitlines(keepends=True)[:2]))
    resumed = run("-", "-o", str(out), "--resume", "--summary-json", "s.json", stdin=data.read_bytes())
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == from_file.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["input"] == "<stdin>" and summary["resumed"] == 2 and summary["examples"] == 6


@pytest.mark.slow
def test_batch_output_to_dev_stdout_and_a_fifo(capsys, tmp_path, tiny_llama_dir, data):
    """Item 8: JSON lines written through to /dev/stdout (summary to stderr) and to a FIFO (with a reader)."""
    import stat
    import threading

    proc = subprocess.run(
        [sys.executable, "-m", "ce_inspect", "batch", str(data), "-m", str(tiny_llama_dir), "-o", "/dev/stdout"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["line"] for x in proc.stdout.splitlines()] == [1, 2, 3, 4]  # nothing else on stdout
    assert "token-weighted mean loss" in proc.stderr

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(fifo)]) == 0
    reader.join(timeout=PROCESS_TIMEOUT)
    assert not reader.is_alive(), f"the FIFO's reader got no end of file in {PROCESS_TIMEOUT:.0f} s"
    assert [json.loads(x)["line"] for x in received[0].splitlines()] == [1, 2, 3, 4]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.slow
def test_batch_exits_141_like_run_when_stdout_reader_goes_away(tmp_path, tiny_llama_dir, data):
    """`batch | head` and `run --json | head -c 10` agree: 141 once a write meets the closed pipe."""
    from test_cli import broken_pipe_run

    proc = broken_pipe_run(["batch", str(data), "-m", str(tiny_llama_dir)], tmp_path)
    assert proc.returncode == 141, proc.stderr
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


def test_on_a_terminal_without_output_batch_shows_the_summary_not_the_lines(tiny_llama_dir, capsys, monkeypatch):
    """Issue 20: `batch data.jsonl` on a terminal printed hundreds of screen lines of JSON with the progress
    bar among them. On a terminal it now shows the summary and says how to get the lines; piped, the lines."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    data = Path(__file__).resolve().parents[1] / "samples" / "pairs.jsonl"
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--skip-invalid"]
    assert main(args) == 0
    piped, _ = capsys.readouterr()
    assert all(json.loads(line)["schema_version"] for line in piped.splitlines())  # piped: the lines only
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(args) == 0
    _, err = capsys.readouterr()
    shown = terminal.getvalue()
    assert "token-weighted mean loss" in shown and '"schema_version"' not in shown
    assert "stdout is a terminal: the JSON lines are not printed; give -o FILE, or pipe stdout" in err


@pytest.mark.parametrize("width", [60, 80, 140])
def test_the_batch_summary_tables_keep_their_borders_and_key_columns(tiny_llama, tmp_path, width):
    """Issue 20: every table of the batch summary (figures, worst examples, highest-loss tokens, skipped lines)
    keeps its right border within the terminal's width, and its key columns, at 60, 80 and 140 columns."""
    import io

    from rich.console import Console

    import ce_inspect
    from ce_inspect.cli.render_batch import render_dataset_summary

    samples = Path(__file__).resolve().parents[1] / "samples" / "pairs.jsonl"
    summary = ce_inspect.score_dataset(tiny_llama, samples, tmp_path / "out.jsonl", skip_invalid=True)
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    render_dataset_summary(summary, console)
    lines = console.file.getvalue().splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└╭╰┌"]
    assert len(table) >= 10, "\n".join(lines)
    assert all(len(line) <= width and line[-1] in "┓┃┩│┘╮╯┐┤" for line in table), "\n".join(table)
    text = "\n".join(lines)
    for title, columns in (("Worst", ("mean", "tokens")), ("Highest-loss tokens", ("target", "loss", "rank"))):
        start = next(i for i, line in enumerate(lines) if line.startswith(title))
        header = "\n".join(lines[start + 1 : start + 5])
        assert all(name in header for name in columns), (title, header)
    assert "Skipped" in text
