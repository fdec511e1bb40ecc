"""`audit`: every check flags exactly the records that carry its defect, and nothing in a clean data set.

Data sets are built here from the tiny byte-level tokenizer (BOS added by the tokenizer, ChatML template
without BOS, a default system prompt) and, for the committed samples, from SmolLM2's own tokenizer and
template. Correct labels come from ce-inspect's reference layout; each defect is then made by hand, the
way a broken collator or preprocessing script makes it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import byte_tokenizer, json_close

from ce_inspect.audit import (
    CHECK_NAMES,
    DEFAULT_FAIL_ON,
    Audit,
    AuditContext,
    AuditExample,
    audit_example,
    check_dataset,
    parse_checks,
    tokenizer_only,
)
from ce_inspect.cli import main
from ce_inspect.contract import versions
from ce_inspect.errors import InputError, InvalidRecordError
from ce_inspect.text import Layout, encode_messages

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "audit"
IGNORE = -100
QA = [
    ("Hi there", "the answer"),
    ("What is in the box?", "A cat in the hat."),
    ("Say more", "There is more in there."),
    ("Count", "one two three"),
    ("Why?", "Because the sun is hot."),
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _messages(k: int) -> list[dict[str, str]]:
    user, assistant = QA[k % len(QA)]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _record(tok, k: int) -> tuple[dict, object]:
    enc = encode_messages(tok, _messages(k), Layout())
    return {
        "id": f"ok-{k}",
        "messages": _messages(k),
        "input_ids": list(enc.input_ids),
        "labels": list(enc.labels),
    }, enc


# --- the defects, as a broken pipeline makes them ---------------------------------------------------------


def _nothing(row, enc, tok):
    row["labels"] = [IGNORE] * len(row["labels"])


def _untrain_eot(row, enc, tok):
    for p, seg in enumerate(enc.segments):
        if seg == "eot":
            row["labels"][p] = IGNORE


def _train_header(row, enc, tok):
    first = min(enc.scored_positions)
    for p in range(first - 3, first):
        row["labels"][p] = row["input_ids"][p]


def _late_start(row, enc, tok):
    row["labels"][min(enc.scored_positions)] = IGNORE


def _double_bos(row, enc, tok):
    row["input_ids"][:0] = [tok.bos_token_id, tok.bos_token_id]
    row["labels"][:0] = [IGNORE, IGNORE]


def _shift(row, enc, tok):
    labels = row["labels"]
    row["labels"] = [labels[p + 1] if p + 1 < len(labels) else IGNORE for p in range(len(labels))]


def _wrong_label(row, enc, tok):
    p = sorted(enc.scored_positions)[1]
    row["labels"][p] = (row["input_ids"][p] + 1) % len(tok)


def _pad_eos(row, enc, tok):
    row["input_ids"] += [tok.eos_token_id] * 4
    row["labels"] += [tok.eos_token_id] * 4


def _pad_token(row, enc, tok):
    row["input_ids"] += [tok.pad_token_id] * 3
    row["labels"] += [tok.pad_token_id] * 3


def _pad_masked(row, enc, tok):
    n = len(row["input_ids"])
    row["input_ids"] += [tok.pad_token_id] * 3
    row["labels"] += [tok.pad_token_id] * 3
    row["attention_mask"] = [1] * n + [0] * 3


def _other_template(row, enc, tok):
    # Tokenized without the template's default system prompt: the ids are not this template's.
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row["input_ids"], row["labels"] = ids, [IGNORE] * 5 + ids[5:]


# check -> (breaker, the records it breaks)
DEFECTS = {
    "no-trained-tokens": (_nothing, {1, 3}),
    "eot-not-trained": (_untrain_eot, {0, 4}),
    "template-trained": (_train_header, {2}),
    "answer-partly-trained": (_late_start, {1}),
    "bos": (_double_bos, {3}),
    "pre-shifted-labels": (_shift, {0, 2}),
    "label-mismatch": (_wrong_label, {4}),
    "padding-trained": (_pad_eos, {1}),
    "tokens-mismatch": (_other_template, {2}),
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _broken(tok, breaker, bad: set[int]) -> list[dict]:
    rows = []
    for k in range(5):
        row, enc = _record(tok, k)
        if k in bad:
            row["id"] = f"bad-{k}"
            breaker(row, enc, tok)
        rows.append(row)
    return rows


def _audit(tok, path: Path, **kwargs):
    audit = check_dataset(tokenizer_only(tok, "tiny"), path, **kwargs)
    return audit.finish(input=str(path), model=None, tokenizer="tiny", versions=versions(), fail_on=DEFAULT_FAIL_ON)


def _flagged(report) -> dict[str, list]:
    return {c.name: [r.id for r in c.records] for c in report.checks if c.failed}


@pytest.mark.parametrize("check", sorted(DEFECTS))
def test_each_defect_is_flagged_on_exactly_its_records(check, tok, tmp_path):
    breaker, bad = DEFECTS[check]
    report = _audit(tok, _write(tmp_path / "d.jsonl", _broken(tok, breaker, bad)))
    assert _flagged(report) == {check: [f"bad-{k}" for k in sorted(bad)]}
    shown = report.check(check).examples[0]
    assert shown.tokens and (not shown.finding.positions or any(t.offending for t in shown.tokens))


@pytest.mark.parametrize("breaker", [_pad_token, _pad_masked], ids=["pad-token", "attention-mask"])
def test_padding_by_pad_token_or_attention_mask(breaker, tok, tmp_path):
    rows = _broken(tok, breaker, {2})
    report = _audit(tok, _write(tmp_path / "d.jsonl", rows))
    assert _flagged(report) == {"padding-trained": ["bad-2"]}
    n = len(rows[2]["input_ids"])
    assert report.check("padding-trained").examples[0].finding.positions == (n - 3, n - 2, n - 1)


def test_padding_by_eos_names_every_trained_pad_position(tok, tmp_path):
    """EOS used as pad after a chat record's "<|im_end|>\\n": every pad position is named (the first EOS of the
    tail opens no turn, the record's text ended before it); a pair's text ends with its own EOS, which is not
    padding; a record with no text: the first EOS of the tail closes it."""
    from ce_inspect.text import encode_pair

    rows = _broken(tok, _pad_eos, {1})
    n = len(rows[1]["input_ids"])
    pair = encode_pair(tok, "Q: the", " answer", ignore_index=IGNORE)
    assert pair.input_ids[-1] == tok.eos_token_id  # the pair's text ends with EOS
    rows.append(
        {
            "id": "pair",
            "prompt": "Q: the",
            "completion": " answer",
            "input_ids": [*pair.input_ids, *[tok.eos_token_id] * 3],
            "labels": [*pair.labels, *[tok.eos_token_id] * 3],
        }
    )
    bare = [*pair.input_ids, *[tok.eos_token_id] * 3]
    rows.append({"id": "bare", "input_ids": bare, "labels": [IGNORE, *bare[1:]]})
    report = _audit(tok, _write(tmp_path / "d.jsonl", rows), examples=5)
    assert _flagged(report) == {"padding-trained": ["bad-1", "pair", "bare"]}
    positions = {s.id: s.finding.positions for s in report.check("padding-trained").examples}
    assert positions["bad-1"] == (n - 4, n - 3, n - 2, n - 1)  # all four pads _pad_eos appended
    m = len(bare)
    assert positions["pair"] == positions["bare"] == (m - 3, m - 2, m - 1)


def test_clean_data_set_passes_every_check(tok, tmp_path):
    rows = [_record(tok, k)[0] for k in range(5)]
    rows += [{"id": "chat", "messages": _messages(1)}, {"id": "pair", "prompt": "Q: the", "answer": " answer"}]
    report = _audit(tok, _write(tmp_path / "clean.jsonl", rows))
    assert report.records == 7
    assert _flagged(report) == {}
    assert report.gate_failed == []
    ran = {c.name: c.checked for c in report.checks}
    assert ran["template-trained"] == 7 and ran["tokens-mismatch"] == 5 and ran["eot-not-trained"] == 7


def test_positions_are_the_defect(tok):
    """The offending positions are where the defect is, not just the record."""
    row, enc = _record(tok, 0)
    eot = [p for p, s in enumerate(enc.segments) if s == "eot"]
    _untrain_eot(row, enc, tok)
    ctx = AuditContext(tok)
    ex = AuditExample(1, None, tuple(row["input_ids"]), tuple(row["labels"]), messages=tuple(row["messages"]))
    (finding,) = audit_example(ctx, ex)
    assert finding.check == "eot-not-trained" and list(finding.positions) == eot

    row, enc = _record(tok, 0)
    first = min(enc.scored_positions)
    _train_header(row, enc, tok)
    ex = AuditExample(1, None, tuple(row["input_ids"]), tuple(row["labels"]), messages=tuple(row["messages"]))
    (finding,) = audit_example(ctx, ex)
    assert finding.positions == (first - 3, first - 2, first - 1)


def test_eot_never_trained_in_any_record_says_so(tok, tmp_path):
    report = _audit(tok, _write(tmp_path / "d.jsonl", _broken(tok, _untrain_eot, {0, 1, 2, 3, 4})))
    check = report.check("eot-not-trained")
    assert check.failed == 5 and "no record trains" in check.note


def test_truncation_to_max_length(tok, tmp_path):
    """A record whose trained tokens all lie past --max-length trains nothing once the trainer truncates it."""
    rows = [_record(tok, k)[0] for k in range(3)]
    cut = min(p for p, label in enumerate(rows[1]["labels"]) if label != IGNORE)  # row 1 keeps no trained token
    path = _write(tmp_path / "d.jsonl", rows)
    assert _flagged(_audit(tok, path)) == {}
    report = _audit(tok, path, max_length=cut)
    failing = {r.line for r in report.check("no-trained-tokens").records}
    expected = {k + 1 for k, r in enumerate(rows) if all(label == IGNORE for label in r["labels"][1:cut])}
    assert 2 in failing and failing == expected
    assert "beyond the first" in report.check("no-trained-tokens").examples[0].finding.message


def test_boundary_shows_both_splits(tok, tmp_path):
    # The tiny tokenizer merges "Ġt" + "he": a prompt ending in " t" splits " the" differently alone.
    rows = [
        {"id": "ok", "prompt": "Say it:", "completion": " the end"},
        {"id": "bad", "prompt": "Say it: t", "completion": "he end"},
    ]
    report = _audit(tok, _write(tmp_path / "d.jsonl", rows))
    assert _flagged(report) == {"boundary": ["bad"]}
    detail = report.check("boundary").examples[0].finding.detail
    alone = [t["token"] for t in detail["alone"] if t["part"] == "prompt"]
    together = [t["token"] for t in detail["together"]]
    assert alone[-1] == " t" and " the" in together
    # Independent: the prompt's ids alone are not a prefix of the ids of prompt+completion.
    p, w = (
        tok("Say it: t", add_special_tokens=False)["input_ids"],
        tok("Say it: the end", add_special_tokens=False)["input_ids"],
    )
    assert w[: len(p)] != p


def test_pre_shifted_is_not_confused_with_repeated_tokens(tok):
    """A record of one repeated token matches its own and the next id alike: not pre-shifted."""
    ids = (1,) + (70,) * 10 + (2,)
    labels = (IGNORE,) + (70,) * 10 + (2,)
    assert audit_example(AuditContext(tok), AuditExample(1, None, ids, labels)) == []


def test_parse_checks():
    assert parse_checks("bos, boundary") == ("bos", "boundary")
    assert parse_checks("none") == ()
    assert set(DEFAULT_FAIL_ON) <= set(CHECK_NAMES)
    with pytest.raises(InputError, match="unknown check 'bogus'"):
        parse_checks("bos,bogus")


# --- loss-outlier: the rule ------------------------------------------------------------------------------


def _fake_result(mean: float):
    token = SimpleNamespace(index=1, loss=mean, token_id=5, token="x", special=False)
    seq = (SimpleNamespace(index=0, token_id=1, token="<s>", scored=False, loss=None, special=True),)
    return SimpleNamespace(summary=SimpleNamespace(mean=mean, count=1), tokens=(token,), sequence=seq)


def test_loss_outlier_rule_median_mad(tok):
    """Modified z-score > 3.5 (loss > median + 3.5 x 1.4826 x MAD) and >= 1 nat above the median; NaN/inf always."""
    means = [1.0, 1.1, 0.9, 1.2, 0.8, 1.05, 6.0, math.nan, math.inf, 1.9]
    audit = Audit(AuditContext(tok))
    for line, m in enumerate(means, 1):
        audit.add_result(line, f"r{line}", _fake_result(m))
    report = audit.finish(input="x", model="m", tokenizer="t", versions=versions("cpu"), fail_on=())
    finite = sorted(m for m in means if math.isfinite(m))
    median = finite[len(finite) // 2 - 1 : len(finite) // 2 + 1]
    median = sum(median) / 2 if len(finite) % 2 == 0 else finite[len(finite) // 2]
    mad = sorted(abs(m - median) for m in finite)
    mad = (mad[len(mad) // 2 - 1] + mad[len(mad) // 2]) / 2
    threshold = max(median + 3.5 * 1.4826 * mad, median + 1.0)
    expected = [f"r{k}" for k, m in enumerate(means, 1) if not math.isfinite(m) or m > threshold]
    assert [r.id for r in report.check("loss-outlier").records] == expected == ["r7", "r8", "r9"]
    assert median + 3.5 * 1.4826 * mad < 1.9 < threshold  # past the z-score, not 1 nat above the median: kept


def test_loss_outlier_identical_losses_flag_nothing(tok):
    audit = Audit(AuditContext(tok))
    for line in range(1, 9):
        audit.add_result(line, None, _fake_result(2.0 + 1e-3 * line))
    assert (
        audit.finish(input="x", model="m", tokenizer="t", versions=versions("cpu"), fail_on=())
        .check("loss-outlier")
        .failed
        == 0
    )


def test_loss_outlier_statistics_skip_records_that_fail_other_checks(tok):
    """Broken records' losses do not widen the spread: the median and MAD are those of the records that pass
    every other check, and every record above the threshold is flagged (a broken one too)."""
    rows = [_record(tok, k) for k in range(5)]
    clean = [1.0, 1.1, 0.9, 1.2, 0.8, 1.05]
    audit = Audit(AuditContext(tok))
    line = 0
    for m in clean + [3.0]:  # six clean records and an off-topic answer (3.0)
        line += 1
        row, _ = rows[line % 5]
        audit.add(AuditExample(line, f"r{line}", tuple(row["input_ids"]), tuple(row["labels"])))
        audit.add_result(line, f"r{line}", _fake_result(m))
    for m in (0.1, 9.0, 12.0, 0.2, 8.0):  # broken records (labels shifted by hand) with wild losses
        line += 1
        row, _ = rows[line % 5]
        labels = [*row["labels"][1:], IGNORE]
        audit.add(AuditExample(line, f"b{line}", tuple(row["input_ids"]), tuple(labels)))
        audit.add_result(line, f"b{line}", _fake_result(m))
    report = audit.finish(input="x", model="m", tokenizer="t", versions=versions("cpu"), fail_on=())
    assert [r.id for r in report.check("pre-shifted-labels").records] == ["b8", "b9", "b10", "b11", "b12"]
    everything = [*clean, 3.0, 0.1, 9.0, 12.0, 0.2, 8.0]
    old_median = statistics_median(everything)
    old_mad = statistics_median([abs(m - old_median) for m in everything])
    assert max(old_median + 3.5 * 1.4826 * old_mad, old_median + 1) > 3.0  # over every record: missed
    median = statistics_median([*clean, 3.0])
    mad = statistics_median([abs(m - median) for m in [*clean, 3.0]])
    threshold = max(median + 3.5 * 1.4826 * mad, median + 1.0)
    assert [r.id for r in report.check("loss-outlier").records] == ["r7", "b9", "b10", "b12"]
    assert report.to_dict()["checks"] and "pass every other check" in report.check("loss-outlier").note
    rule = audit._loss_outliers()[2]
    assert rule["basis"] == "passing" and rule["records"] == 7
    assert rule["threshold"] == pytest.approx(threshold)


def statistics_median(values: list[float]) -> float:
    v, n = sorted(values), len(values)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


# --- the command --------------------------------------------------------------------------------------------


def _conforms(d: dict, typed) -> None:
    """Key for key: every required key of the TypedDict is there, and no key it does not declare."""
    keys = set(d)
    assert typed.__required_keys__ <= keys, (typed.__name__, typed.__required_keys__ - keys)
    assert keys <= typed.__required_keys__ | typed.__optional_keys__, (typed.__name__, keys)


def _document_conforms(doc: dict) -> None:
    from ce_inspect import contract as r

    _conforms(doc, r.AuditDict)
    if "loss" in doc:
        _conforms(doc["loss"], r.AuditLossDict)
    for check in doc["checks"]:
        _conforms(check, r.AuditCheckDict)
        for ref in check["records"]:
            _conforms(ref, r.AuditRecordRefDict)
        for example in check["examples"]:
            _conforms(example, r.AuditExampleDict)
            for token in example["tokens"]:
                _conforms(token, r.AuditTokenDict)


def _lines_conform(lines: list[dict]) -> None:
    from ce_inspect import contract as r

    for line in lines:
        _conforms(line, r.AuditRecordLineDict)
        if "loss" in line:
            _conforms(line["loss"], r.AuditRecordLossDict)
        for finding in line["findings"]:
            _conforms(finding, r.AuditFindingDict)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fail_on_exits_3_after_writing_everything(tiny_llama_dir, tmp_path, capsys, tok):
    data = _write(tmp_path / "d.jsonl", _broken(tok, _untrain_eot, {1}))
    out_file = tmp_path / "records.jsonl"
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--json", "-o", out_file)
    assert code == 3, err
    doc = json.loads(out)
    assert doc["gate_failed"] == ["eot-not-trained"] and doc["schema_version"] == 1
    check = next(c for c in doc["checks"] if c["name"] == "eot-not-trained")
    assert check["failed"] == 1 and check["records"] == [{"line": 2, "id": "bad-1"}]
    assert check["examples"][0]["positions"] and check["examples"][0]["tokens"]
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["failed"] for line in lines] == [[], ["eot-not-trained"], [], [], []]
    _document_conforms(doc)
    _lines_conform(lines)
    assert "eot-not-trained" in err
    # The same finding outside the gate: exit 0.
    code, _, _ = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--fail-on", "bos", "--json")
    assert code == 0


def test_cli_unknown_check_is_a_usage_error(tiny_llama_dir, tmp_path, capsys, tok):
    data = _write(tmp_path / "d.jsonl", _broken(tok, _untrain_eot, set()))
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--fail-on", "bos,nope")
    assert code == 2 and out == "" and "unknown check 'nope'" in err


def test_cli_no_model_loads_no_model(tiny_llama_dir, tmp_path, capsys, tok, monkeypatch):
    import ce_inspect.cli.options as options  # the command line's one call of `load`
    from ce_inspect.model import loader

    def refuse(*args, **kwargs):
        raise AssertionError("--no-model loaded the model")

    monkeypatch.setattr(loader, "_load_model", refuse)
    monkeypatch.setattr(options, "load", refuse)
    data = _write(tmp_path / "d.jsonl", _broken(tok, _shift, {0}))
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model")
    assert code == 3, err
    assert "pre-shifted-labels" in out and "bad-0" in out


def test_cli_tokenizer_folder_without_weights(tmp_path, capsys, tok):
    """--no-model --tokenizer takes a folder with tokenizer files only."""
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    data = _write(tmp_path / "d.jsonl", _broken(tok, _double_bos, {2}))
    code, out, err = _cli(capsys, "audit", data, "--no-model", "--tokenizer", folder, "--fail-on", "bos", "--json")
    assert code == 3, err
    assert json.loads(out)["gate_failed"] == ["bos"]


def test_cli_bad_record_is_named_or_skipped(tiny_llama_dir, tmp_path, capsys, tok):
    rows = _broken(tok, _untrain_eot, set())
    rows[2]["labels"] = rows[2]["labels"][:-1]
    data = _write(tmp_path / "d.jsonl", rows)
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model")
    assert code == 1 and out == ""
    assert err.count("Error:") == 1 and "line 3 (id 'ok-2')" in err and "--skip-invalid" in err
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--skip-invalid", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["records"] == 4 and [s["line"] for s in doc["skipped"]] == [3]


def test_cli_output_never_replaces_an_existing_file(tiny_llama_dir, tmp_path, capsys, tok):
    data = _write(tmp_path / "d.jsonl", _broken(tok, _untrain_eot, set()))
    existing = tmp_path / "mine.jsonl"
    existing.write_text("precious\n")
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "-o", existing)
    assert code == 1 and "was not written by ce-inspect" in err and existing.read_text() == "precious\n"
    # Its own earlier output is replaced, atomically, keeping the file's mode.
    out = tmp_path / "audit.jsonl"
    assert _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--fail-on", "none", "-o", out)[0] == 0
    out.chmod(0o640)
    first = out.read_bytes()
    assert _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--fail-on", "none", "-o", out)[0] == 0
    assert out.read_bytes() == first and (out.stat().st_mode & 0o777) == 0o640


def test_cli_rich_report_shows_tokens_safely(tiny_llama_dir, tmp_path, capsys, tok):
    rows = _broken(tok, _train_header, {1})
    rows[1]["id"] = "[/bold]"  # user data that is Rich markup must print as text
    rows.append(
        {"id": "m", "messages": [{"role": "user", "content": "[red]x"}, {"role": "assistant", "content": "[/b]"}]}
    )
    data = _write(tmp_path / "d.jsonl", rows)
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--no-model", "--fail-on", "none")
    assert code == 0, err
    assert "template-trained: 1 records" in out and "line 2 (id '[/bold]')" in out and "▸" in out


# --- with the model: losses through batch's runner ------------------------------------------------------


def _audit_losses(capsys, data: Path, model_dir: Path, out_file: Path) -> tuple[dict, list[dict]]:
    code, out, err = _cli(capsys, "audit", data, "--model", model_dir, "--json", "-o", out_file, "-b", "4")
    assert code == 0, err
    return json.loads(out), [json.loads(line) for line in out_file.read_text().splitlines()]


def test_with_model_per_record_loss_matches_cross_entropy(tiny_llama, tiny_llama_dir, tmp_path, capsys):
    """Per-record mean losses (through batch's runner) equal torch's CrossEntropyLoss on the model's logits,
    and each record's count of scored tokens equals its count of trained labels.

    A mismatch was seen once (a fresh-clone CI run under heavy load: one record 3.4e-4 off, the records
    batched beside it exact) and never again; so a failure reports every record, the numerics in effect and
    what a second audit of the same file gives, which tells a transient fault from a deterministic one.
    """
    import os

    from ce_inspect.text import encode

    tok = tiny_llama.tokenizer
    rows = [{"id": f"c{k}", "messages": _messages(k)} for k in range(5)]
    rows.append({"id": "p", "prompt": "Q: the", "answer": " answer"})
    data = _write(tmp_path / "d.jsonl", rows)
    out_file = tmp_path / "r.jsonl"
    doc, lines = _audit_losses(capsys, data, tiny_llama_dir, out_file)
    assert next(c for c in doc["checks"] if c["name"] == "loss-outlier")["ran"] is True
    ce = torch.nn.CrossEntropyLoss()
    expected = []  # (mean, count) per record, from the fixture's own model
    for row in rows:
        if "messages" in row:
            enc = encode_messages(tok, row["messages"], Layout())
        else:
            enc = encode(tok, row["prompt"], row["answer"], Layout())
        with torch.no_grad():
            logits = tiny_llama.model(torch.tensor([enc.input_ids])).logits[0]
        targets = torch.tensor(enc.labels[1:])
        expected.append((ce(logits[:-1].float(), targets).item(), int((targets != IGNORE).sum())))
    assert [line["loss"]["scored"] for line in lines] == [True] * len(rows)
    got = [(line["loss"]["mean"], line["loss"]["count"]) for line in lines]
    wrong = [
        (row["id"], g, e)
        for row, g, e in zip(rows, got, expected)
        if g[1] != e[1] or g[0] != pytest.approx(e[0], abs=1e-5)
    ]
    if wrong:
        _, again = _audit_losses(capsys, data, tiny_llama_dir, tmp_path / "again.jsonl")
        rerun = [(line["loss"]["mean"], line["loss"]["count"]) for line in again]
        numerics = f"threads={torch.get_num_threads()} MKL_CBWR={os.environ.get('MKL_CBWR')}"
        pytest.fail(f"(id, (mean, count), expected): {wrong}; {numerics}; a second audit gave {rerun}")
    total = sum(line["loss"]["sum"] for line in lines) / sum(line["loss"]["count"] for line in lines)
    assert doc["loss"]["token_weighted_mean_loss"] == pytest.approx(total, rel=1e-6)


def test_with_model_unscored_record_is_a_finding_not_an_error(tiny_llama_dir, tmp_path, capsys, tok):
    """Records the model cannot score (nothing trained, padded) are findings and listed as not scored."""
    rows = _broken(tok, _nothing, {1})
    _pad_masked(rows[3], None, tok)
    rows[3]["id"] = "bad-3"
    data = _write(tmp_path / "d.jsonl", rows)
    out_file = tmp_path / "r.jsonl"
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--json", "-o", out_file)
    assert code == 3, err
    doc = json.loads(out)
    assert doc["gate_failed"] == ["no-trained-tokens", "padding-trained"]
    assert [(u["line"], u["id"]) for u in doc["loss"]["unscored"]] == [(2, "bad-1"), (4, "bad-3")]
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["loss"]["scored"] for line in lines] == [True, False, True, False, True]
    _document_conforms(doc)
    _lines_conform(lines)
    assert doc["loss"]["examples"] == 3


def test_with_model_a_text_longer_than_the_context_is_not_scored_with_audits_own_reason(
    tiny_llama_dir, tmp_path, capsys
):
    """Issue 22 (14): a record longer than the model's context is listed as not scored; its reason said "score
    it in windows with --stride", an option audit does not have. It names what audit does instead."""
    rows = [{"id": "ok", "prompt": "Q", "answer": " A"}, {"id": "long", "text": "ab " * 200}]  # 403 tokens > 256
    data = _write(tmp_path / "d.jsonl", rows)
    code, out, err = _cli(capsys, "audit", data, "--model", tiny_llama_dir, "--json", "--fail-on", "no-trained-tokens")
    assert code == 0, err
    (unscored,) = json.loads(out)["loss"]["unscored"]
    assert (unscored["line"], unscored["id"]) == (2, "long")
    assert unscored["reason"] == (
        "the text is 403 tokens but the model's context is 256; audit scores whole examples only, not windows"
    )
    assert "--stride" not in out + err


# --- the committed samples, with SmolLM2's own tokenizer and chat template ---------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer(models_cache):
    import os

    from ce_inspect.model import load_tokenizer

    saved = os.environ.get("CE_INSPECT_CACHE")
    os.environ["CE_INSPECT_CACHE"] = str(models_cache)  # the checkout's own cache of converted models
    try:
        return load_tokenizer()[0]
    finally:
        if saved is None:
            del os.environ["CE_INSPECT_CACHE"]
        else:
            os.environ["CE_INSPECT_CACHE"] = saved


NO_MODEL_SAMPLES = sorted(p.stem for p in SAMPLES.glob("*.jsonl") if p.stem not in ("loss-outlier",))


@pytest.mark.default_model
@pytest.mark.parametrize("name", NO_MODEL_SAMPLES)
def test_samples_flag_exactly_their_bad_records(name, smollm2_tokenizer):
    """Each samples/audit/<check>.jsonl fails exactly <check>, on exactly the records named bad-*."""
    path = SAMPLES / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    report = _audit(smollm2_tokenizer, path)
    bad = [r["id"] for r in rows if r["id"].startswith("bad-")]
    assert _flagged(report) == ({} if name == "clean" else {name: bad})


@pytest.mark.default_model
def test_smollm2_template_defects(smollm2_tokenizer, tmp_path):
    """SmolLM2's own template: its BOS is <|im_start|> and its EOS <|im_end|> (also the pad token)."""
    tok = smollm2_tokenizer
    for check in ("eot-not-trained", "template-trained", "pre-shifted-labels", "padding-trained", "bos"):
        breaker, bad = DEFECTS[check]
        report = _audit(tok, _write(tmp_path / f"{check}.jsonl", _broken(tok, breaker, bad)))
        assert _flagged(report) == {check: [f"bad-{k}" for k in sorted(bad)]}, check


def test_bad_record_error_from_the_core(tok, tmp_path):
    rows = [{"id": "x", "input_ids": [1, 2, 999999], "labels": [1, 2, 3]}]
    with pytest.raises(InvalidRecordError, match=r"line 1 \(id 'x'\): 'input_ids' item 2 is 999999"):
        check_dataset(tokenizer_only(tok, "tiny"), _write(tmp_path / "d.jsonl", rows))


#: An answer to another question, in another language: no check but loss-outlier can see it.
OFF_TOPIC = {
    "id": "off-topic",
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Der Kühlschrank singt leise Opern für verlorene Regenschirme."},
    ],
}


def _contaminated_set(path: Path, *, broken: bool, off_topic: bool) -> Path:
    """The committed samples' clean records, (``broken``) every sample's planted defects (bad-*), and
    (``off_topic``) one off-topic answer."""
    rows = []
    for f in sorted(SAMPLES.glob("*.jsonl")):
        for row in map(json.loads, f.read_text().splitlines()):
            bad = row["id"].startswith("bad")
            if (f.stem == "loss-outlier" and bad) or (bad and not broken) or (not bad and f.stem != "clean"):
                continue
            rows.append({**row, "id": f"{f.stem}:{row['id']}"})
    rows += [{**OFF_TOPIC, "messages": list(OFF_TOPIC["messages"])}] if off_topic else []
    rows += [
        {**row, "id": f"ok:{row['id']}"}
        for row in map(json.loads, (SAMPLES / "loss-outlier.jsonl").read_text().splitlines())
        if row["id"].startswith("ok")
    ]
    return _write(path, rows)


def _audit_with(lm, path: Path):
    from ce_inspect.audit import score_losses
    from ce_inspect.dataset import scan_dataset

    audit = check_dataset(tokenizer_only(lm.tokenizer, "smollm2"), path, keep_findings=True)
    lines: list[dict] = []
    score_losses(lm, scan_dataset(lm, path, skip_invalid=True), audit, SimpleNamespace(name=None, write=lines.append))
    return audit.finish(
        input=str(path), model="smollm2", tokenizer="smollm2", versions=versions("cpu"), fail_on=()
    ), lines


@pytest.mark.default_model
def test_loss_outlier_finds_an_off_topic_answer_among_broken_records(smollm2, tmp_path):
    """Issue 22: the planted defects of every sample and one off-topic answer. Over every record the median and
    MAD would put the threshold above the off-topic answer's loss (computed here, independently); over the
    records that pass every other check it is flagged, and no clean record is. Without the broken records or the
    off-topic answer: no false alarm."""
    report, lines = _audit_with(smollm2, _contaminated_set(tmp_path / "c.jsonl", broken=True, off_topic=True))
    failing = {line["id"] for line in lines if line["failed"]}
    assert len(failing) >= 13  # the planted defects, each found by its check
    means = {line["id"]: line["loss"]["mean"] for line in lines if line["loss"]["scored"]}
    everything = list(means.values())
    median = statistics_median(everything)
    mad = statistics_median([abs(m - median) for m in everything])
    assert means["off-topic"] < max(median + 3.5 * 1.4826 * mad, median + 1.0)  # the old rule's blind spot
    flagged = {r.id for r in report.check("loss-outlier").records}
    assert "off-topic" in flagged and flagged - {"off-topic"} <= failing
    passing = [m for rid, m in means.items() if rid not in failing]
    median = statistics_median(passing)
    mad = statistics_median([abs(m - median) for m in passing])
    threshold = max(median + 3.5 * 1.4826 * mad, median + 1.0)
    assert flagged == {rid for rid, m in means.items() if m > threshold}
    for broken, off_topic in ((False, False), (True, False)):
        report, _ = _audit_with(
            smollm2, _contaminated_set(tmp_path / f"{broken}.jsonl", broken=broken, off_topic=off_topic)
        )
        assert {r.id for r in report.check("loss-outlier").records} <= failing  # no clean record flagged
    assert report.check("loss-outlier").ran


@pytest.mark.default_model
def test_loss_outlier_sample_with_smollm2(smollm2):
    """samples/audit/loss-outlier.jsonl through SmolLM2 (batch's runner): exactly the gibberish answer is flagged,
    and each record's mean loss equals CrossEntropyLoss on the model's own logits."""
    from ce_inspect.audit import score_losses, score_shown
    from ce_inspect.dataset import scan_dataset

    path = SAMPLES / "loss-outlier.jsonl"
    audit = check_dataset(tokenizer_only(smollm2.tokenizer, "smollm2"), path, keep_findings=True)
    scan = scan_dataset(smollm2, path, skip_invalid=True)
    lines: list[dict] = []
    sink = SimpleNamespace(name=None, write=lines.append)
    score_losses(smollm2, scan, audit, sink)
    scored = score_shown(smollm2, scan, audit)
    report = audit.finish(
        input=str(path), model="smollm2", tokenizer="smollm2", versions=versions("cpu"), fail_on=(), scored=scored
    )
    assert [r.id for r in report.check("loss-outlier").records] == ["bad-3"]
    assert report.check("loss-outlier").examples[0].mean_loss == max(line["loss"]["mean"] for line in lines)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[:4]:
        enc = encode_messages(smollm2.tokenizer, row["messages"], Layout())
        with torch.no_grad():
            logits = smollm2.model(torch.tensor([enc.input_ids])).logits[0]
        expected = torch.nn.CrossEntropyLoss()(logits[:-1].float(), torch.tensor(enc.labels[1:])).item()
        line = next(line for line in lines if line["id"] == row["id"])
        assert line["loss"]["mean"] == pytest.approx(expected, abs=1e-4)


def test_trl_style_tokenized_pairs_with_completion_mask(tok, tmp_path):
    """TRL's prepared prompt/completion rows (prompt+completion tokenized as one string, EOS appended,
    completion_mask from where the prompt's own tokens stop matching) pass; the same rows with the EOS
    masked out fail eot-not-trained, and a mask that also covers the prompt fails template-trained."""
    pairs = [("Say it:", " the end"), ("Q: what", " is in the box?"), ("Hmm", " there")]
    rows = []
    for k, (prompt, completion) in enumerate(pairs):
        alone = tok(prompt, add_special_tokens=False)["input_ids"]
        whole = tok(prompt + completion, add_special_tokens=False)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(alone, whole)) if a != b), len(alone))
        ids = [tok.bos_token_id, *whole, tok.eos_token_id]
        mask = [0] * (1 + start) + [1] * (len(whole) - start + 1)
        rows.append(
            {"id": f"ok-{k}", "prompt": prompt, "completion": completion, "input_ids": ids, "completion_mask": mask}
        )
    assert _flagged(_audit(tok, _write(tmp_path / "ok.jsonl", rows))) == {}
    rows[1]["id"], rows[1]["completion_mask"][-1] = "bad-1", 0
    rows[2]["id"], rows[2]["completion_mask"] = "bad-2", [0] + [1] * (len(rows[2]["input_ids"]) - 1)
    report = _audit(tok, _write(tmp_path / "bad.jsonl", rows))
    assert _flagged(report) == {"eot-not-trained": ["bad-1"], "template-trained": ["bad-2"]}


def test_parquet_input_through_the_reader(tok, tmp_path):
    """audit reads what batch reads: the same broken records as Parquet give the same findings as JSONL."""
    pa = pytest.importorskip("pyarrow", reason="the datasets extra: pip install 'ce-inspect[datasets]'")
    import pyarrow.parquet as pq

    rows = _broken(tok, _untrain_eot, {2})
    for row in rows:
        del row["messages"]  # a column of message structs is fine too; plain columns keep the test small
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = _audit(tok, path)
    assert report.records == 5
    assert _flagged(report) == {"eot-not-trained": ["bad-2"]}
    assert report.check("eot-not-trained").records[0].line == 3


# --- with the model: the records shown in full, and --resume -------------------------------------------------


@pytest.fixture
def audit_data(tiny_llama_dir, tmp_path):
    from conftest import write_audit_data

    return write_audit_data(tmp_path / "data.jsonl", tiny_llama_dir)


def _audit_cli(capsys, data: Path, model: Path, *args) -> tuple[int, dict | None, str]:
    code, out, err = _cli(capsys, "audit", data, "--model", model, "--skip-invalid", "--json", "-b", "2", *args)
    return code, (json.loads(out) if out else None), err


def _check(doc: dict, name: str) -> dict:
    return next(c for c in doc["checks"] if c["name"] == name)


def test_with_model_shown_records_carry_their_cross_entropy(tiny_llama, tiny_llama_dir, audit_data, tmp_path, capsys):
    """The loss outlier and a finding on a scored record are shown token by token: every trained token's loss is
    torch's cross entropy on the model's own logits for that record, and the mean is the record's output line's."""
    out_file = tmp_path / "r.jsonl"
    code, doc, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out_file)
    assert code == 3 and doc["gate_failed"] == ["no-trained-tokens", "eot-not-trained"], err
    lines = {line["id"]: line for line in map(json.loads, out_file.read_text().splitlines())}
    rows = {r["id"]: r for r in map(json.loads, audit_data.read_text().splitlines()) if isinstance(r, dict)}
    outliers, eot = _check(doc, "loss-outlier"), _check(doc, "eot-not-trained")
    assert [r["id"] for r in outliers["records"]] == ["outlier"] and len(outliers["examples"]) == 1
    assert [r["id"] for r in eot["records"]] == ["eot-masked", "outlier"]  # neither trains its EOS
    for view in (outliers["examples"][0], eot["examples"][0]):
        row = rows[view["id"]]
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = tiny_llama.model(ids).logits[0]
        losses = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[0, 1:], reduction="none")
        trained = [t for t in view["tokens"] if t["trained"]]
        assert trained and all(row["labels"][t["index"]] == t["token_id"] for t in trained)
        for t in view["tokens"]:
            if t["trained"]:
                assert t["loss"] == pytest.approx(losses[t["index"] - 1].item(), abs=1e-5)
            else:
                assert t["loss"] is None
        assert view["mean_loss"] == lines[view["id"]]["loss"]["mean"]
        mask = torch.tensor(row["labels"][1:]) != IGNORE
        assert view["mean_loss"] == pytest.approx(losses[mask].mean().item(), abs=1e-5)
    assert doc["loss"]["unscored"][0]["id"] == "untrained" and lines["untrained"]["loss"]["scored"] is False
    _document_conforms(doc)
    _lines_conform(list(lines.values()))


def test_resume_finishes_an_interrupted_output_as_one_run_would(tiny_llama_dir, audit_data, tmp_path, capsys):
    """An output cut after some lines (one of them a record the model cannot score) and in the middle of the
    next, as `kill -9` leaves it: --resume keeps the complete lines, drops the torn one, writes the rest, and
    gives the uninterrupted run's lines and report."""
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    code, reference, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", full)
    assert code == 3, err
    lines = full.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[2])["loss"]["scored"] is False  # kept: a line of a record the model cannot score
    out.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    code, doc, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out, "--resume")
    assert code == 3, err
    assert "dropping an incomplete last line (25 bytes)" in err
    assert out.read_bytes()[: sum(map(len, lines[:4]))] == b"".join(lines[:4])
    got = out.read_bytes().splitlines(keepends=True)
    assert len(got) == len(lines)
    for k, (a, b) in enumerate(zip(lines, got), 1):
        json_close(json.loads(a), json.loads(b), f"line {k}")
    reference.pop("output"), doc.pop("output")
    assert (reference["loss"].pop("resumed"), doc["loss"].pop("resumed")) == (0, 3)  # lines 1-4, one unscored
    json_close(reference, doc, "report")


def test_resume_refuses_what_would_change_a_line_and_leaves_the_file(tiny_llama_dir, audit_data, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out)[0] == 3
    before = out.read_bytes()
    code, doc, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out)
    assert code == 1 and doc is None and "already exists; pass --resume to continue it or --force" in err
    code, _, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out, "--resume", "--max-length", "30")
    assert code == 1 and "was written with no --max-length, this run has --max-length 30" in err, err
    rows = audit_data.read_text().splitlines()
    untrained = json.loads(rows[2])
    untrained["labels"][-1] = untrained["input_ids"][-1]  # the record the model could not score now trains its EOS
    edited = _write(tmp_path / "edited.jsonl", [json.loads(r) if r.startswith("{") else r for r in rows[:2]])
    with edited.open("a") as fh:
        fh.write(json.dumps(untrained) + "\n" + "\n".join(rows[3:]) + "\n")
    code, _, err = _audit_cli(capsys, edited, tiny_llama_dir, "-o", out, "--resume")
    assert code == 1 and "input line 3 (id 'untrained') can be scored now" in err, err
    # The same lengths and findings, other tokens: an answer edited letter for letter (byte tokenizer).
    first = json.loads(rows[0])
    first["answer"] = first["answer"].swapcase()
    same_shape = _write(tmp_path / "swapped.jsonl", [first])
    with same_shape.open("a") as fh:
        fh.write("\n".join(rows[1:]) + "\n")
    code, _, err = _audit_cli(capsys, same_shape, tiny_llama_dir, "-o", out, "--resume")
    assert code == 1 and "input line 1 (id 'geo-001') does not encode to the tokens" in err, err
    code, _, err = _cli(capsys, "audit", audit_data, "--model", tiny_llama_dir, "--no-model", "-o", out, "--resume")
    assert code == 2 and "--resume continues a forward pass; --no-model runs none" in err
    assert out.read_bytes() == before


# --- loss-outlier in the per-record lines -------------------------------------------------------------------


def _lines(path: Path) -> dict[str, dict]:
    return {line["id"]: line for line in map(json.loads, path.read_text().splitlines())}


def test_per_record_lines_carry_loss_outlier_as_the_report_flags_it(tiny_llama_dir, audit_data, tmp_path, capsys):
    """The forward pass writes each line before the data set's loss statistics exist; when it ends, the output
    file is rewritten (atomically, under its lock) so that exactly the records the report flags as loss
    outliers carry loss-outlier, with their mean and the threshold the report used. A --resume of the finished
    file compares the other findings only (loss-outlier depends on every record) and leaves it byte for byte."""
    out = tmp_path / "r.jsonl"
    code, doc, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out, "--fail-on", "loss-outlier")
    assert code == 3 and doc["gate_failed"] == ["loss-outlier"], err
    lines = _lines(out)
    flagged = {r["id"] for r in _check(doc, "loss-outlier")["records"]}
    assert flagged == {"outlier"}
    assert {i for i, line in lines.items() if "loss-outlier" in line["failed"]} == flagged
    line = lines["outlier"]
    assert line["failed"] == ["eot-not-trained", "loss-outlier"]  # the record's own findings first, in check order
    finding = line["findings"][-1]
    rule = doc["loss"]["outlier_rule"]
    assert finding["check"] == "loss-outlier" and finding["positions"] == []
    assert finding["detail"] == {"mean": line["loss"]["mean"], "threshold": rule["threshold"]}
    assert line["loss"]["mean"] > rule["threshold"]
    assert all(
        lines[i]["loss"]["mean"] <= rule["threshold"] for i in lines if i not in flagged and lines[i]["loss"]["scored"]
    )
    _lines_conform(list(lines.values()))
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".r.jsonl") and "lock" not in p.name
    ]  # no temporary left
    before = out.read_bytes()
    code, again, err = _audit_cli(
        capsys, audit_data, tiny_llama_dir, "-o", out, "--fail-on", "loss-outlier", "--resume"
    )
    assert code == 3 and again["loss"]["resumed"] == again["loss"]["examples"], err
    assert out.read_bytes() == before


def test_resume_of_a_cut_file_marks_the_outliers_of_the_whole_data_set(tiny_llama_dir, audit_data, tmp_path, capsys):
    """A file cut before the outlier's line (a killed run: nothing marked yet) and one whose kept lines carry a
    stale mark both resume to the lines of one uninterrupted run."""
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", full)[0] == 3
    lines = full.read_bytes().splitlines(keepends=True)
    k = next(i for i, raw in enumerate(lines) if json.loads(raw)["id"] == "outlier")
    stale = json.loads(lines[0])
    stale["failed"].append("loss-outlier")
    stale["findings"].append({"check": "loss-outlier", "positions": [], "message": "an earlier run's mark"})
    out.write_bytes((json.dumps(stale) + "\n").encode() + b"".join(lines[1:k]))
    code, _, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", out, "--resume")
    assert code == 3, err
    assert out.read_bytes() == full.read_bytes()


def test_streamed_lines_say_they_lack_loss_outlier(tiny_llama_dir, audit_data, tmp_path, capsys):
    """Lines streamed to a FIFO (or a pipe, /dev/stdout) are gone before the statistics exist: the report's
    loss-outlier note and stderr say that the lines do not carry it; the report still flags the outlier."""
    import threading

    from ce_inspect.audit import STREAMED_NOTE

    fifo = tmp_path / "lines.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, doc, err = _audit_cli(capsys, audit_data, tiny_llama_dir, "-o", fifo)
    reader.join(timeout=60)
    assert code == 3, err
    assert STREAMED_NOTE in " ".join(err.split())
    outliers = _check(doc, "loss-outlier")
    assert [r["id"] for r in outliers["records"]] == ["outlier"] and STREAMED_NOTE in outliers["note"]
    streamed = [json.loads(raw) for raw in got[0].splitlines()]
    assert len(streamed) == doc["records"] and not any("loss-outlier" in line["failed"] for line in streamed)


@pytest.mark.default_model
@pytest.mark.parametrize("width", [60, 80, 140])
def test_the_checks_table_fits_the_terminal_with_its_borders(width):
    """Issue 20: on a narrow terminal the "what it means" column wrapped into a word per line. Below 100
    columns the meanings follow the table; the table keeps its columns and borders at 60, 80 and 140."""
    import io

    from rich.console import Console

    import ce_inspect
    from ce_inspect.cli.render_audit import render_audit

    data = Path(__file__).resolve().parents[1] / "samples" / "audit" / "eot-not-trained.jsonl"
    report = ce_inspect.audit_without_model(lambda: ce_inspect.load_tokenizer(), data)
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    render_audit(report, console)
    lines = console.file.getvalue().splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"][:16]
    assert len(table) >= 14
    assert all(len(line) <= width and line.rstrip()[-1] in "┓┃┩│┘" for line in table), "\n".join(table)
    assert ("what it means" in table[1]) == (width >= 100)
    meaning = report.check("eot-not-trained").description
    assert " ".join(meaning.split()[:4]) in " ".join(" ".join(lines).split())  # said, in the table or below it
