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
