"""Command-line habits (issue 20): --quiet, CE_INSPECT_MODEL, --limit, diff's positional data set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from rich.console import Console

from ce_inspect.cli import main

ROWS = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."},
    {"id": "b", "prompt": "x", "answer": " y"},
    {"id": "c", "prompt": "Q", "answer": " A long answer, with commas."},
    {"id": "d", "prompt": "2+2=", "answer": " 4"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", ROWS)


# --- --quiet ------------------------------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal, where the progress bar is drawn."""
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))


@pytest.mark.parametrize("quiet", [[], ["--quiet"], ["-q"]])
def test_quiet_batch_prints_no_progress_and_no_notes(capsys, terminal, tiny_llama_dir, data, tmp_path, quiet):
    out_file = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out_file), "--top-k", "5000", *quiet]) == 0
    out, err = capsys.readouterr()
    assert len(out_file.read_text().splitlines()) == 4
    noted = "Reading " in err and "note: top-k 5000" in err
    drawn = "scoring" in err and "examples" in err
    assert noted is not bool(quiet) and drawn is not bool(quiet), err
    assert "token-weighted mean loss" in out  # the summary is the output, not a note


@pytest.mark.parametrize("command", [["diff", "--dtype-b", "float32", "--device-b", "cpu"], ["audit"]])
def test_quiet_data_set_commands(capsys, terminal, tiny_llama_dir, data, command):
    args = [command[0], *(["--input"] if command[0] == "diff" else []), str(data), *command[1:]]
    assert main([*args, "-m", str(tiny_llama_dir), "-q"]) == 0
    err = capsys.readouterr().err
    assert "Reading " not in err and "scoring" not in err, err


def test_quiet_run_json_prints_no_notes_but_keeps_them(capsys, tiny_llama_dir):
    args = ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", "--json", "--top-k", "5000"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "note: top-k 5000" in err
    assert main([*args, "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and any("top-k 5000" in note for note in json.loads(out)["notes"])


def test_quiet_keeps_warnings(capsys, tiny_llama_dir):
    assert main(["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", " y", "-q"]) == 0
    capsys.readouterr()
    logger = logging.getLogger("ce_inspect")
    logger.info("an info line")
    logger.warning("a warning line")
    err = capsys.readouterr().err
    assert "a warning line" in err and "an info line" not in err


def test_quiet_is_an_option_of_every_command(capsys):
    from ce_inspect.cli.app import COMMANDS

    for command in COMMANDS:
        assert main([command.target.split(":")[1], "--help"]) == 0
        out = capsys.readouterr().out
        assert "--quiet" in out and "-q" in out


# --- CE_INSPECT_MODEL -----------------------------------------------------------------------------------


def test_model_env_is_the_default_model_and_the_flag_wins(capsys, monkeypatch, tiny_llama_dir, tmp_path):
    monkeypatch.setenv("CE_INSPECT_MODEL", str(tiny_llama_dir))
    assert main(["run", "-p", "x", "-a", " y", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_llama_dir)
    monkeypatch.setenv("CE_INSPECT_MODEL", str(tmp_path / "no-such-model"))
    assert main(["run", "-p", "x", "-a", " y", "--json", "--model", str(tiny_llama_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_llama_dir)
    assert main(["run", "-p", "x", "-a", " y", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no-such-model" in err


def test_model_env_is_named_in_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["run", "--help"]) == 0
    assert "CE_INSPECT_MODEL" in capsys.readouterr().out


# --- --limit N ----------------------------------------------------------------------------------------------


def test_limit_reads_only_the_first_records_and_nothing_after(tmp_path):
    from ce_inspect.data import open_data, read_objects, read_records

    # Line 3 is not JSON and the array's third element is broken: with limit 2 neither is ever read.
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n{not json\n", encoding="utf-8")
    array = tmp_path / "d.json"
    array.write_text("[" + json.dumps(ROWS[0]) + ", " + json.dumps(ROWS[1]) + ", {broken", encoding="utf-8")
    for path in (jsonl, array):
        records = list(read_records(path, limit=2))
        assert [r.id for r in records] == ["a", "b"] and all(r.error is None for r in records)
        assert len(list(read_records(path))) == 3  # the third record, invalid, is there without a limit
        assert open_data(path, limit=2).to_dict()["limit"] == 2
    assert len(list(read_objects(jsonl, "jsonl", None, 1))) == 1
    assert "limit" not in open_data(jsonl).to_dict()


@pytest.mark.parametrize("bad", [0, -3, True, 1.5, "2"])
def test_limit_is_checked_once_in_the_core(bad, data):
    from ce_inspect.data import check_limit
    from ce_inspect.dataset import DatasetRun
    from ce_inspect.errors import UsageError

    with pytest.raises(UsageError, match="`limit` must be a positive number of records"):
        check_limit(bad)
    with pytest.raises(UsageError):
        DatasetRun(data, limit=bad)


@pytest.mark.parametrize(
    "command", [["batch"], ["diff", "--dtype-b", "float32", "--input"], ["audit"], ["audit", "--no-model"]]
)
def test_a_bad_limit_is_a_usage_error_before_anything_loads(capsys, monkeypatch, data, command):
    from ce_inspect.cli import audit as cli_audit
    from ce_inspect.cli.options import Common

    def never(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(Common, "load", never)
    monkeypatch.setattr(cli_audit, "load_tokenizer", never)
    assert main([*command, str(data), "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "--limit must be a positive number of records, not 0" in err


def test_score_dataset_with_a_limit(tiny_llama, data, tmp_path):
    import ce_inspect

    told: list[str] = []
    out = tmp_path / "out.jsonl"
    summary = ce_inspect.score_dataset(tiny_llama, data, out, limit=2, notes=told.append)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in lines] == ["a", "b"] and summary.examples == 2
    note = f"read only the first 2 records of {data} (limit 2)"
    doc = summary.to_dict()
    assert doc["notes"] == [note] and doc["data"]["limit"] == 2 and f"note: {note}" in told
    # The same figures as the first two records alone.
    alone = tmp_path / "two.jsonl"
    write_jsonl(alone, ROWS[:2])
    whole = ce_inspect.score_dataset(tiny_llama, alone, tmp_path / "alone.jsonl")
    assert whole.loss_sum == pytest.approx(summary.loss_sum, rel=1e-6) and "notes" not in whole.to_dict()
    # A limit past the data set's end cuts nothing: no note.
    assert "notes" not in ce_inspect.score_dataset(tiny_llama, data, limit=10).to_dict()


def test_resume_treats_the_input_as_its_first_n_records(tiny_llama, data, tmp_path):
    import ce_inspect
    from ce_inspect.errors import ResumeError

    out = tmp_path / "out.jsonl"
    ce_inspect.score_dataset(tiny_llama, data, out, limit=2)
    again = ce_inspect.score_dataset(tiny_llama, data, out, limit=2, resume=True)
    assert again.resumed == 2 and again.examples == 2 and len(out.read_text().splitlines()) == 2
    more = ce_inspect.score_dataset(tiny_llama, data, out, limit=3, resume=True)  # continues with record 3
    assert more.resumed == 2 and more.examples == 3
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]
    with pytest.raises(ResumeError, match="input line 3, past the first 2 records of .* that this run reads"):
        ce_inspect.score_dataset(tiny_llama, data, out, limit=2, resume=True)


def test_batch_limit_on_the_command_line(capsys, tiny_llama_dir, data, tmp_path):
    summary_json = tmp_path / "summary.json"
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--limit", "3", "--summary-json", str(summary_json)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["a", "b", "c"]
    assert f"note: read only the first 3 records of {data} (limit 3)" in err
    assert json.loads(summary_json.read_text())["notes"] == [f"read only the first 3 records of {data} (limit 3)"]


def test_diff_input_limit(capsys, tiny_llama_dir, data, tmp_path):
    summary_json = tmp_path / "summary.json"
    args = ["diff", "-m", str(tiny_llama_dir), "--dtype-b", "float32", "--input", str(data), "--limit", "2"]
    assert main([*args, "--summary-json", str(summary_json)]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["a", "b"]
    note = f"read only the first 2 records of {data} (limit 2)"
    assert f"note: {note}" in err and json.loads(summary_json.read_text())["notes"] == [note]
    assert main(["diff", "-m", str(tiny_llama_dir), "--dtype-b", "float32", "-p", "x", "-a", " y", "--limit", "2"]) == 2
    assert "--limit goes with a data set (DATA or --input)" in capsys.readouterr().err


@pytest.mark.parametrize("no_model", [[], ["--no-model"]])
def test_audit_limit(capsys, tiny_llama_dir, data, no_model):
    assert main(["audit", str(data), "-m", str(tiny_llama_dir), "--limit", "2", "--json", *no_model]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    note = f"read only the first 2 records of {data} (limit 2)"
    assert doc["records"] == 2 and doc["notes"] == [note]
    if not no_model:
        assert doc["loss"]["examples"] == 2
    assert main(["audit", str(data), "-m", str(tiny_llama_dir), "--json", *no_model]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["records"] == 4 and "notes" not in doc


# --- diff's data set is positional, --input its alias ---------------------------------------------------


def test_diff_data_positional_is_input(capsys, tiny_llama_dir, data, tmp_path):
    model = ["-m", str(tiny_llama_dir), "--dtype-b", "float32"]
    by_option, by_argument = tmp_path / "option.jsonl", tmp_path / "argument.jsonl"
    assert main(["diff", *model, "--input", str(data), "-o", str(by_option)]) == 0
    assert main(["diff", str(data), *model, "-o", str(by_argument)]) == 0
    assert main(["diff", *model, "-i", str(data), "-o", str(tmp_path / "short.jsonl")]) == 0
    capsys.readouterr()
    first, second = ([json.loads(line) for line in p.read_text().splitlines()] for p in (by_option, by_argument))
    assert [d["id"] for d in second] == ["a", "b", "c", "d"]
    assert [d["tokens"] for d in first] == [d["tokens"] for d in second]


def test_diff_data_given_twice_is_a_usage_error(capsys, data):
    assert main(["diff", str(data), "--input", str(data), "--dtype-b", "float32"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "give the data set once: DATA" in err and "not both" in err


def test_diff_positional_data_refuses_single_example_options(capsys, data):
    assert main(["diff", str(data), "--dtype-b", "float32", "-p", "x"]) == 2
    assert "DATA reads every example from the data set; drop --prompt" in capsys.readouterr().err
