"""Answers glued to their prompts (issue 20): most answers of a data set start without whitespace after a prompt
that ends without it (samples/pairs.jsonl: "...?" + "Sun..."), so the first answer tokens are word starts without
their space and top the highest-loss list. Every data-set command warns once on stderr and notes it in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ce_inspect
from ce_inspect.cli import main
from ce_inspect.data import DataInfo, parse_record
from ce_inspect.dataset import GluedAnswers, answer_joins
from ce_inspect.text import Layout

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "samples" / "pairs.jsonl"  # prompts end with "?", answers start with a letter
GLUED = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": "The capital is Beijing."},
    {"id": "b", "prompt": "2+2=", "answer": "4"},
    {"id": "c", "prompt": "Q:", "answer": " spaced"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def note_of(rows, layout: Layout | None = None) -> str | None:
    info = DataInfo(path="data.jsonl", kind="jsonl", format=None, forced=False)
    joins = GluedAnswers(layout or Layout(), info)
    for k, obj in enumerate(rows, 1):
        joins.add(parse_record(k, obj))
    return joins.note


# --- the rule ----------------------------------------------------------------------------------------------


def test_the_warning_fires_when_more_than_half_the_answers_are_glued():
    note = note_of(GLUED)
    assert note is not None and note.startswith("2 of 3 answers start without whitespace after a prompt")
    assert "data.jsonl line 1 (id 'a')" in note and "'The capital is Beiji'" in note


@pytest.mark.parametrize(
    "prompt, answer",
    [("Where is it? ", "There."), ("Where is it?\n", "There."), ("Where is it?", " There."), ("Q?", "\nA")],
)
def test_no_warning_when_whitespace_separates_them(prompt, answer):
    assert note_of([{"prompt": prompt, "answer": answer}] * 3) is None


def test_half_is_not_most():
    assert note_of([{"prompt": "Q?", "answer": "A"}, {"prompt": "Q?", "answer": " A"}]) is None


def test_no_warning_with_chat_or_sep_nor_for_conversations_and_text():
    assert note_of(GLUED, Layout(chat=True)) is None  # the template separates the turns
    assert note_of(GLUED, Layout(sep="")) is None  # the user chose the join
    chat = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}
    assert note_of([chat, {"text": "Q?A"}] * 3) is None
    assert answer_joins(parse_record(1, chat)) == [] and answer_joins(parse_record(1, {"text": "x"})) == []


def test_each_side_of_a_preference_pair_and_each_choice_is_an_answer():
    pair = parse_record(1, {"prompt": "Q?", "chosen": "Yes", "rejected": " No"})
    assert answer_joins(pair) == [("Q?", "Yes"), ("Q?", " No")]
    implicit = parse_record(1, {"chosen": "Q? Yes", "rejected": "Q? No"})
    assert answer_joins(implicit) == []  # the prompt is the sides' common start: nothing is joined


# --- every data-set command ---------------------------------------------------------------------------------


def test_score_dataset_on_samples_pairs_warns_once_and_notes_it(tiny_llama, tmp_path):
    told: list[str] = []
    summary = ce_inspect.score_dataset(tiny_llama, PAIRS, tmp_path / "o.jsonl", skip_invalid=True, notes=told.append)
    warnings = [t for t in told if t.startswith("warning: ")]
    n = len(PAIRS.read_text().splitlines())
    assert len(warnings) == 1 and f"{n} of {n} answers start without whitespace" in warnings[0]
    assert summary.to_dict()["notes"] == [warnings[0].removeprefix("warning: ")]


def test_score_dataset_with_spaced_answers_says_nothing(tiny_llama, tmp_path):
    rows = [{"prompt": r["prompt"], "answer": " " + r["answer"]} for r in GLUED]
    told: list[str] = []
    summary = ce_inspect.score_dataset(tiny_llama, write_jsonl(tmp_path / "d.jsonl", rows), notes=told.append)
    assert not [t for t in told if t.startswith("warning: ")] and "notes" not in summary.to_dict()


@pytest.mark.parametrize(
    "command",
    [
        ["batch"],
        ["diff", "--dtype-b", "float32"],
        ["audit", "--json"],
        ["audit", "--json", "--no-model"],
    ],
    ids=["batch", "diff", "audit", "audit-no-model"],
)
def test_every_pair_command_warns_once_on_stderr_and_in_json(capsys, tiny_llama_dir, tmp_path, command):
    data = write_jsonl(tmp_path / "glued.jsonl", GLUED)
    summary_json = tmp_path / "summary.json"
    extra = [] if command[0] == "audit" else ["--summary-json", str(summary_json)]
    assert main([command[0], str(data), *command[1:], "-m", str(tiny_llama_dir), *extra]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "2 of 3 answers start without whitespace" in warned[0], err
    doc = json.loads(out) if command[0] == "audit" else json.loads(summary_json.read_text())
    assert [n for n in doc["notes"] if "without whitespace" in n] == [warned[0].removeprefix("warning: ")]


def test_prefs_and_choices_warn_too(tiny_llama, tmp_path):
    prefs = [{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}, {"prompt": "R?", "chosen": "Up", "rejected": "Dn"}]
    told: list[str] = []
    summary = ce_inspect.prefs_dataset(tiny_llama, write_jsonl(tmp_path / "p.jsonl", prefs), notes=told.append)
    assert any("4 of 4 answers start without whitespace" in n for n in summary.to_dict()["notes"])
    questions = [{"prompt": "Sky:", "choices": ["blue", "green"], "label": 0}] * 2
    summary = ce_inspect.choices_dataset(tiny_llama, write_jsonl(tmp_path / "q.jsonl", questions), notes=told.append)
    assert any("4 of 4 answers start without whitespace" in n for n in summary.to_dict()["notes"])
    assert len([t for t in told if t.startswith("warning: ")]) == 2
    spaced = [{**q, "choices": [" blue", " green"]} for q in questions]
    summary = ce_inspect.choices_dataset(tiny_llama, write_jsonl(tmp_path / "s.jsonl", spaced))
    assert summary.to_dict()["notes"] == []


def test_quiet_keeps_the_warning(capsys, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "glued.jsonl", GLUED)
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line] == [line for line in err.splitlines() if "warning: " in line]
    assert "2 of 3 answers start without whitespace" in err and "Reading " not in err
