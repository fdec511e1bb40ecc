"""`batch --keep-below/--keep-above`: each scored record's input line, byte for byte, in --kept or --dropped by
its figure, the files written whole, a resumed run's files those of an uninterrupted run, and bad usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ce_inspect
from ce_inspect import KeepFilter
from ce_inspect.cli import main
from ce_inspect.dataset import FilterReport, figure_of_line
from ce_inspect.errors import InputError, UsageError

# CRLF, LF, non-ASCII (raw UTF-8 and \\u escapes), a blank line, an invalid record and a last line without a
# newline: every kept or dropped line must come out exactly as it went in.
RAW = [
    b'{"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."}\r\n',
    b'{"id": "b", "prompt": "x", "answer": "y"}\n',
    '{"id": "c", "prompt": "Qu\'est-ce ?", "answer": " Un caf\u00e9 cr\u00e8me, \u4f60\u597d."}\r\n'.encode(),
    b"\n",
    b'{"id": "d",   "prompt": "Summarize: \\u00e9t\\u00e9",  "answer": " Moved to Wednesday."}\n',
    b'{"id": "bad", "prompt": "no answer here"}\n',
    b'{"id": "e", "prompt": "Q", "answer": " A long answer that goes on and on, with 1 2 3."}',
]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(RAW))
    return path


def _cli(capsys, *args) -> tuple[int, str]:
    """The exit code, and stdout and stderr together (the summary table goes to stdout with -o)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out + err


def _raw_by_line() -> dict[int, bytes]:
    """Input line number -> its bytes (blank lines are not records, as the reader numbers them)."""
    return {n: raw for n, raw in enumerate(RAW, 1) if raw.strip()}


def _figures(out: Path) -> dict[int, dict]:
    return {d["line"]: d for d in map(json.loads, out.read_text().splitlines())}


@pytest.mark.parametrize("by", ["mean", "sum", "max", "bits_per_byte"])
def test_kept_and_dropped_hold_exactly_the_records_on_each_side_verbatim(capsys, tiny_llama_dir, data, tmp_path, by):
    out, kept, dropped = tmp_path / "out.jsonl", tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    code, err = _cli(capsys, "batch", data, "--model", tiny_llama_dir, "-o", out, "--skip-invalid")
    assert code == 0, err
    lines = _figures(out)

    def figure(d: dict) -> float:  # computed here from the lines, independently of the filter's code
        return max(t["loss"] for t in d["tokens"]) if by == "max" else d["summary"][by]

    threshold = sorted(figure(d) for d in lines.values())[2]  # the median of the five scored records
    args = ("--keep-below", threshold, "--keep-by", by, "--kept", kept, "--dropped", dropped, "--force")
    code, err = _cli(capsys, "batch", data, "--model", tiny_llama_dir, "-o", out, "--skip-invalid", *args)
    assert code == 0, err
    assert f"{by} < {threshold:g}," in " ".join(err.split())  # the table's kept row
    raw = _raw_by_line()
    want_kept = [n for n, d in sorted(lines.items()) if figure(d) < threshold]
    want_dropped = [n for n, d in sorted(lines.items()) if figure(d) >= threshold]
    assert len(want_kept) == 2 and len(want_dropped) == 3
    last = max(raw)  # the input's last line has no newline: the copy ends it with one

    def copied(numbers: list[int]) -> bytes:
        return b"".join(raw[n] if n != last else raw[n] + b"\n" for n in numbers)

    assert kept.read_bytes() == copied(want_kept)
    assert dropped.read_bytes() == copied(want_dropped)
    assert b"\r\n" in kept.read_bytes() + dropped.read_bytes()
    assert "caf\u00e9".encode() in kept.read_bytes() + dropped.read_bytes()
    assert b'"id": "bad"' not in kept.read_bytes() + dropped.read_bytes()  # invalid: in neither file
    assert _figures(out).keys() == lines.keys()  # the output lines are the run's own, every record's


def test_the_summary_counts_each_file_and_the_band_of_both_thresholds(tiny_llama, data, tmp_path):
    out, kept = tmp_path / "out.jsonl", tmp_path / "kept.jsonl"
    full = ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True)
    means = sorted(d["summary"]["mean"] for d in _figures(out).values())
    keep = KeepFilter(below=means[3], above=means[0], kept=kept)  # strictly between: the 2nd and 3rd
    summary = ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True, force=True, keep=keep)
    doc = summary.to_dict()
    assert doc["filter"] == {
        "by": "mean",
        "below": means[3],
        "above": means[0],
        "kept": 2,
        "dropped": 3,
        "kept_file": str(kept),
        "dropped_file": None,
    }
    assert doc["skipped_count"] == 1 and "filter" not in full.to_dict()
    assert len(kept.read_bytes().splitlines()) == 2


def test_resume_of_an_interrupted_filtered_run_writes_the_uninterrupted_files(tiny_llama, data, tmp_path):
    out, kept, dropped = tmp_path / "out.jsonl", tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl"
    ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True)
    median = sorted(d["summary"]["mean"] for d in _figures(out).values())[2]
    keep = KeepFilter(below=median, kept=kept, dropped=dropped)
    ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True, force=True, keep=keep)
    full = (out.read_bytes(), kept.read_bytes(), dropped.read_bytes())
    # Interrupted after two lines (the torn third as kill -9 leaves it); the filter files were never written.
    lines = full[0].splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:25])
    kept.unlink()
    dropped.unlink()
    summary = ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True, resume=True, keep=keep)
    assert summary.resumed == 2
    assert (out.read_bytes(), kept.read_bytes(), dropped.read_bytes()) == full
    # Resumed again once complete: every record is routed from its line, the same files again.
    ce_inspect.score_dataset(tiny_llama, data, output=out, skip_invalid=True, resume=True, keep=keep)
    assert (out.read_bytes(), kept.read_bytes(), dropped.read_bytes()) == full


def test_an_error_mid_run_leaves_no_filter_file(tiny_llama, data, tmp_path, monkeypatch):
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(b"the previous run's\n")
    from ce_inspect.dataset import filter as filter_module

    def boom(self, number, figure):
        raise InputError("stopped on purpose")

    monkeypatch.setattr(filter_module.FilterReport, "_route", boom)
    with pytest.raises(InputError, match="on purpose"):
        ce_inspect.score_dataset(
            tiny_llama, data, skip_invalid=True, force=True, keep=KeepFilter(below=100.0, kept=kept)
        )
    assert kept.read_bytes() == b"the previous run's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "kept.jsonl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep-below", "2"], "give --kept or --dropped"),
        (["--kept", "K"], "give --keep-below or --keep-above"),
        (["--keep-by", "max"], "give --keep-below or --keep-above"),
        (["--keep-below", "2", "--keep-above", "3", "--kept", "K"], "keep nothing"),
        (["--keep-below", "2", "--keep-by", "median", "--kept", "K"], "must be one of mean, sum, max, bits_per_byte"),
        (["--keep-below", "nan", "--kept", "K"], "must be a finite number"),
        (["--keep-below", "2", "--kept", "K", "--dropped", "K"], "give two files"),
    ],
)
def test_bad_filter_usage_is_exit_2_before_anything_loads(capsys, data, tmp_path, args, message):
    args = [str(tmp_path / "K") if a == "K" else a for a in args]
    code, err = _cli(capsys, "batch", data, "--model", tmp_path / "no-such-model", *args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "K").exists()


def test_a_threshold_that_is_not_a_number_is_a_usage_error(capsys, data, tmp_path):
    code, err = _cli(capsys, "batch", data, "--keep-below", "low", "--kept", tmp_path / "k.jsonl")
    assert code == 2 and "low" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="`keep_below` must be a number, got 'low'"):
        KeepFilter(below="low", kept=tmp_path / "k.jsonl")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("input", "is the same file as the input file"),
        ("output", "is the same file as --output"),
        ("existing", "already exists; pass --resume to rebuild it or --force"),
        ("folder", "is a folder"),
    ],
)
def test_filter_files_are_checked_before_the_model_loads(capsys, data, tmp_path, which, message):
    out = tmp_path / "out.jsonl"
    kept = {"input": data, "output": out, "existing": tmp_path / "old.jsonl", "folder": tmp_path}[which]
    (tmp_path / "old.jsonl").write_text("x\n")
    code, err = _cli(capsys, "batch", data, "--model", tmp_path / "no-such-model", "-o", out,
                     "--keep-below", "3", "--kept", kept)  # fmt: skip
    assert code == 1 and message in err and "no-such-model" not in err, err
    assert not out.exists() and (tmp_path / "old.jsonl").read_text() == "x\n"


def test_a_json_array_input_cannot_be_copied_verbatim(capsys, tmp_path, tiny_llama_dir):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"prompt": "a", "answer": "b"}]))
    code, err = _cli(capsys, "batch", data, "--model", tiny_llama_dir, "--keep-below", "3", "--kept", tmp_path / "k")
    assert code == 2 and "need a JSONL input" in err


def test_a_line_without_the_figure_is_a_clear_error(tmp_path):
    """A line whose scored text has no bytes has no bits per byte: the filter names the line and stops."""
    assert figure_of_line({"summary": {"mean": 1.5}}, "bits_per_byte") is None
    assert figure_of_line({"summary": {"mean": 1.5}, "tokens": [{"loss": 0.5}, {"loss": 2.5}]}, "max") == 2.5
    data = tmp_path / "d.jsonl"
    data.write_bytes(RAW[1])
    report = FilterReport(None, KeepFilter(below=1.0, by="bits_per_byte"), data, "d.jsonl", None, None)
    with pytest.raises(InputError, match=r"^d.jsonl line 1: has no bits_per_byte to filter by .*; use `keep_by` mean"):
        report._route(1, None)
