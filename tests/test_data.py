"""The data people have: formats, files, pre-tokenized records, and one message validator for run and batch.

Figures are checked against independent computations: the model's own logits through torch's
CrossEntropyLoss over the flattened labels, and `batch` on the equivalent text records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ce_inspect.cli import main
from ce_inspect.data import (
    MAX_JSON_ELEMENT_BYTES,
    Fields,
    Record,
    encode_record,
    open_data,
    parse_record,
    read_records,
)
from ce_inspect.data.readers import _json_array_objects
from ce_inspect.errors import InputError
from ce_inspect.text import Layout, encode

PAIRS = [
    ("The capital of France is", " Paris."),
    ("Q: 2+2?\n", "4"),
    ("Translate 'chat': ", "cat, in English"),
]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def batch_lines(args: list[str], tmp_path: Path, name: str = "out") -> tuple[list[dict], dict]:
    out, summary = tmp_path / f"out-{name}.jsonl", tmp_path / f"out-{name}.summary.json"
    assert main(["batch", *args, "-o", str(out), "--summary-json", str(summary)]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()], json.loads(summary.read_text())


def losses(lines: list[dict]) -> list[list[tuple[int, int, float]]]:
    return [[(t["index"], t["token_id"], t["loss"]) for t in line["tokens"]] for line in lines]


def same_figures(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(losses(a), losses(b), strict=True):
        assert [t[:2] for t in x] == [t[:2] for t in y]
        assert [t[2] for t in x] == pytest.approx([t[2] for t in y], abs=1e-5)


def flattened_ce(model_dir: Path, examples: list[tuple[list[int], list[int]]]) -> float:
    """torch's CrossEntropyLoss(mean) over every example's shifted logits and labels, concatenated."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    logits, labels = [], []
    with torch.no_grad():
        for ids, labs in examples:
            out = model(input_ids=torch.tensor([ids])).logits[0]  # [seq, vocab]
            logits.append(out[:-1])
            labels.append(torch.tensor(labs[1:]))
    return float(torch.nn.CrossEntropyLoss()(torch.cat(logits), torch.cat(labels)))


# --- detection and parsing -------------------------------------------------------------------------------


def test_each_format_is_detected_and_parsed():
    user, assistant = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    cases = {
        "prompt-answer": {"prompt": "p", "answer": "a"},
        "prompt-completion": {"prompt": "p", "completion": "c"},
        "messages": {"messages": [user, assistant]},
        "conversations": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        "text": {"text": "all of it"},
        "tokenized": {"input_ids": [1, 5, 6], "labels": [-100, 5, 6]},
    }
    for fmt, obj in cases.items():
        record = parse_record(1, obj)
        assert record.error is None and record.format == fmt, (fmt, record)
    assert parse_record(1, cases["prompt-completion"]).answer == "c"
    assert parse_record(1, cases["conversations"]).messages == [user, assistant]  # human/gpt mapped
    conv = parse_record(1, {"prompt": [user], "completion": [assistant]})
    assert conv.prompt_messages == [user] and conv.completion_messages == [assistant]
    mixed = parse_record(1, {"prompt": "p", "completion": [assistant]})
    assert "both be strings or both be message lists" in mixed.error
    unknown = parse_record(1, {"question": "q", "response": "r"})
    assert unknown.error.startswith("no known format (fields: 'question', 'response')")


def test_sharegpt_system_and_unknown_speakers():
    record = parse_record(
        3,
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "A"},
                {"from": "tool", "value": "T"},
            ]
        },
    )
    assert [m["role"] for m in record.messages] == ["system", "user", "assistant", "tool"]
    bad = parse_record(3, {"conversations": [{"from": "human"}]})
    assert 'message 0 (human) has no "value" string (ShareGPT\'s text)' in bad.error  # issue 22: ShareGPT's field


def test_tokenized_labels_from_masks_as_trl_builds_them():
    ids = [1, 10, 11, 12, 13]
    cm = parse_record(1, {"input_ids": ids, "completion_mask": [0, 0, 1, 1, 1]})
    assert cm.labels == (-100, -100, 11, 12, 13) and cm.labels_from == "completion_mask"
    both = parse_record(1, {"input_ids": ids, "completion_mask": [0, 0, 1, 1, 1], "assistant_masks": [0, 0, 0, 1, 1]})
    assert both.labels == (-100, -100, -100, 12, 13) and both.labels_from == "completion_mask+assistant_masks"
    alone = parse_record(1, {"input_ids": ids})
    assert alone.labels == tuple(ids) and alone.labels_from == "input_ids"  # TRL trains every token then
    assert "has 4 items but 'input_ids' has 5" in parse_record(1, {"input_ids": ids, "labels": [1, 2, 3, 4]}).error
    assert "item 1 is 2, not 0 or 1" in parse_record(1, {"input_ids": ids, "completion_mask": [0, 2, 1, 1, 1]}).error
    assert "item 0 is 'a', not an integer" in parse_record(1, {"input_ids": ["a"]}).error


def test_forced_format_and_field_names():
    record = parse_record(1, {"q": "p", "r": "a"}, Fields(prompt="q", answer="r"))
    assert record.format == "prompt-answer" and (record.prompt, record.answer) == ("p", "a")
    forced = parse_record(1, {"text": "t", "prompt": "p", "answer": "a"}, format="text")
    assert forced.format == "text" and forced.text == "t"
    assert parse_record(1, {"prompt": "p"}, format="text").error == "missing field 'text'"
    with pytest.raises(InputError, match="unknown format 'csv'"):
        list(read_records(Path(__file__), format="csv"))


# --- files -----------------------------------------------------------------------------------------------

ROWS = [{"id": i, "prompt": p, "answer": a} for i, (p, a) in enumerate(PAIRS)]


def test_json_array_streams_element_by_element(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n [\n" + ",\n".join(json.dumps(r) for r in ROWS) + "\n]\n", encoding="utf-8")
    # A 7-character read buffer: every element is completed across several reads.
    got = [obj for _, obj, err in _json_array_objects(path, chunk=7)]
    assert got == ROWS
    assert [r.id for r in read_records(path)] == [0, 1, 2]
    assert open_data(path).kind == "json" and open_data(path).unit == "record"
    numbers = tmp_path / "n.json"
    numbers.write_text('[1, 2345, "a\\u00e9b", {"k": [1, 2]}]', encoding="utf-8")
    for chunk in (1, 2, 3, 5):  # a number or an escape cut by the read buffer is completed, not cut
        assert [obj for _, obj, _ in _json_array_objects(numbers, chunk=chunk)] == [1, 2345, "a\u00e9b", {"k": [1, 2]}]
    broken = tmp_path / "b.json"
    broken.write_text('[{"prompt": "p", "answer": "a"}, {"prompt": }]', encoding="utf-8")
    first, second = read_records(broken)
    assert first.error is None and second.line == 2 and second.error.startswith("not valid JSON")


def test_json_array_element_too_large_is_refused(tmp_path, monkeypatch):
    import ce_inspect.data.readers as data

    monkeypatch.setattr(data, "MAX_JSON_ELEMENT_BYTES", 100)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "p" * 500, "answer": "a"}]), encoding="utf-8")
    with pytest.raises(InputError, match="element 1 of the JSON array is over .* convert the file to JSONL"):
        list(data._json_array_objects(path, chunk=16))
    assert MAX_JSON_ELEMENT_BYTES == 64 * 1024 * 1024


def test_parquet_and_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets extra: pip install 'ce-inspect[datasets]'")
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    expected = [Record(i + 1, i, prompt=p, answer=a) for i, (p, a) in enumerate(PAIRS)]
    assert list(read_records(tmp_path / "d.parquet")) == expected
    assert list(read_records(tmp_path / "saved")) == expected
    assert list(read_records(tmp_path / "dd", split="train")) == expected
    assert [r.id for r in read_records(tmp_path / "dd", split="test")] == [1]
    with pytest.raises(InputError, match="has the splits train, test; pick one with `split`"):
        list(read_records(tmp_path / "dd"))
    with pytest.raises(InputError, match="no split 'dev'"):
        list(read_records(tmp_path / "dd", split="dev"))
    info = open_data(tmp_path / "dd", split="test")
    assert (info.kind, info.format, info.split) == ("saved-dataset", "prompt-answer", "test")


def test_without_the_datasets_extra_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"needs the datasets library: pip install 'ce-inspect\[datasets\]'"):
        list(read_records(path))


# --- figures: every format against the equivalent text records and an independent loss ------------------


def _pretokenized_rows(lm, layout: Layout) -> tuple[list[dict], list[tuple[list[int], list[int]]]]:
    rows, examples = [], []
    for prompt, answer in PAIRS:
        e = encode(lm.tokenizer, prompt, answer, layout)
        labels = [t if t != e.ignore_index else -100 for t in e.labels]
        rows.append({"input_ids": list(e.input_ids), "labels": labels})
        examples.append((list(e.input_ids), labels))
    return rows, examples


def test_pretokenized_equals_text_records_and_flattened_cross_entropy(tiny_llama, tiny_llama_dir, tmp_path):
    text = jsonl(tmp_path / "text.jsonl", [{"prompt": p, "answer": a} for p, a in PAIRS])
    rows, examples = _pretokenized_rows(tiny_llama, Layout())
    masks = [{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]} for r in rows]
    tok = jsonl(tmp_path / "tok.jsonl", rows)
    mask = jsonl(tmp_path / "mask.jsonl", masks)
    model = ["-m", str(tiny_llama_dir)]
    by_text, s_text = batch_lines([str(text), *model], tmp_path, "text")
    by_ids, s_ids = batch_lines([str(tok), *model], tmp_path, "ids")
    by_mask, _ = batch_lines([str(mask), *model], tmp_path, "mask")
    same_figures(by_text, by_ids)
    same_figures(by_text, by_mask)
    assert s_ids["data"] == {"file": "jsonl", "format": "tokenized", "format_forced": False, "split": None}
    reference = flattened_ce(tiny_llama_dir, examples)
    assert s_ids["token_weighted_mean_loss"] == pytest.approx(reference, abs=1e-5)
    assert s_text["token_weighted_mean_loss"] == pytest.approx(reference, abs=1e-5)


def test_pretokenized_labels_are_the_targets_even_when_shifted(tiny_llama, tiny_llama_dir):
    """Labels shifted by hand are scored as training scores them: against the label, shifted again."""
    ids = list(encode(tiny_llama.tokenizer, *PAIRS[0], Layout()).input_ids)
    labels = ids[1:] + [-100]  # the classic mistake
    labels[0] = -100
    record = parse_record(1, {"input_ids": ids, "labels": labels})
    encoded = encode_record(tiny_llama, record, Layout())
    assert "differ from the input id" in encoded.notes[0]
    from ce_inspect.scoring import score_encoded

    result = score_encoded(tiny_llama, encoded)
    assert [t.token_id for t in result.tokens] == [labels[p] for p in encoded.scored_positions]
    assert result.summary.mean == pytest.approx(flattened_ce(tiny_llama_dir, [(ids, labels)]), abs=1e-5)


def test_pretokenized_out_of_vocabulary_and_padding(tiny_llama):
    vocab = tiny_llama.model.get_input_embeddings().weight.shape[0]
    for obj, words in [
        ({"input_ids": [1, vocab], "labels": [-100, vocab]}, f"item 1 is {vocab}, outside the model's vocabulary"),
        ({"input_ids": [1, 5], "labels": [-100, -7]}, "item 1 is -7: neither a token id"),
        ({"input_ids": [1, 5, 0], "labels": [-100, 5, 0], "attention_mask": [1, 1, 0]}, "the record is padded"),
    ]:
        with pytest.raises(InputError, match=words):
            encode_record(tiny_llama, parse_record(1, obj), Layout())


def test_prompt_completion_and_sharegpt_equal_their_ce_inspect_forms(tiny_llama_dir, tmp_path):
    model = ["-m", str(tiny_llama_dir)]
    answer = jsonl(tmp_path / "a.jsonl", [{"prompt": p, "answer": a} for p, a in PAIRS])
    completion = jsonl(tmp_path / "c.jsonl", [{"prompt": p, "completion": a} for p, a in PAIRS])
    same_figures(
        batch_lines([str(answer), *model], tmp_path, "a")[0], batch_lines([str(completion), *model], tmp_path, "c")[0]
    )

    msgs = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in PAIRS]
    messages = jsonl(tmp_path / "m.jsonl", [{"messages": m} for m in msgs])
    share = jsonl(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": a}]} for p, a in PAIRS],
    )
    conv_pc = jsonl(tmp_path / "cpc.jsonl", [{"prompt": m[:1], "completion": m[1:]} for m in msgs])
    by_messages = batch_lines([str(messages), *model], tmp_path, "m")[0]
    same_figures(by_messages, batch_lines([str(share), *model], tmp_path, "s")[0])
    same_figures(by_messages, batch_lines([str(conv_pc), *model], tmp_path, "cpc")[0])


def test_text_scores_every_token_as_language_modelling(tiny_llama, tiny_llama_dir, tmp_path):
    texts = ["the cat sat on the mat", "in winter there is snow"]
    data = jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    lines, summary = batch_lines([str(data), "-m", str(tiny_llama_dir)], tmp_path)
    examples = []
    for t, line in zip(texts, lines):
        ids = [1, *tiny_llama.tokenizer(t, add_special_tokens=False)["input_ids"], 2]  # BOS, text, EOS
        assert [s["token_id"] for s in line["sequence"]] == ids
        assert [s["index"] for s in line["tokens"]] == list(range(1, len(ids)))
        examples.append((ids, [-100, *ids[1:]]))
    assert summary["token_weighted_mean_loss"] == pytest.approx(flattened_ce(tiny_llama_dir, examples), abs=1e-5)


# --- run and batch accept exactly the same conversations --------------------------------------------------

USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}
MESSAGE_SHAPES = {
    "plain": [USER, ASSISTANT],
    "content parts": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
    ],
    "image part": [{"role": "user", "content": [{"type": "image", "url": "x"}]}, ASSISTANT],
    "wrapper": {"messages": [USER, ASSISTANT]},
    "empty user content": [{"role": "user", "content": ""}, ASSISTANT],
    "empty assistant content": [USER, {"role": "assistant", "content": ""}],
    "non-string role": [{"role": 1, "content": "Hi"}, ASSISTANT],
    "empty role": [{"role": "", "content": "Hi"}, ASSISTANT],
    "missing content": [{"role": "user"}, ASSISTANT],
    "null content": [{"role": "user", "content": None}, ASSISTANT],
    "number content": [{"role": "user", "content": 3}, ASSISTANT],
    "extra keys": [{"role": "user", "content": "Hi", "name": "bob"}, {**ASSISTANT, "weight": 1}],
    "message not an object": ["Hi", ASSISTANT],
    "empty list": [],
    "not a list": "Hi",
    "no assistant": [USER],
    "assistant first": [ASSISTANT, USER],
    "system first": [{"role": "system", "content": "Be kind."}, USER, ASSISTANT],
    "two turns": [USER, ASSISTANT, USER, ASSISTANT],
}


@pytest.mark.parametrize("shape", list(MESSAGE_SHAPES), ids=list(MESSAGE_SHAPES))
def test_run_and_batch_accept_the_same_conversations(shape, tiny_llama_dir, tmp_path, capsys):
    data = MESSAGE_SHAPES[shape]
    conversation = tmp_path / "conv.json"
    conversation.write_text(json.dumps(data), encoding="utf-8")
    run_code = main(["run", "--messages", str(conversation), "-m", str(tiny_llama_dir), "--json"])
    run_out, run_err = capsys.readouterr()
    records = jsonl(tmp_path / "d.jsonl", [{"messages": data}])
    batch_code = main(["batch", str(records), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl")])
    _, batch_err = capsys.readouterr()
    assert run_code in (0, 1) and batch_code == run_code, (run_err, batch_err)
    if run_code == 0:
        run_tokens = [(t["index"], t["token_id"]) for t in json.loads(run_out)["tokens"]]
        line = json.loads((tmp_path / "o.jsonl").read_text())
        assert [(t["index"], t["token_id"]) for t in line["tokens"]] == run_tokens
    else:
        # The same reason in both: the text after the name of the input.
        reason = run_err.strip().split(": ", 2)[-1]
        assert reason.split(" (")[0][:40] in batch_err, (run_err, batch_err)


# --- text longer than the context: sliding windows --------------------------------------------------------

LONG_TEXT = "the winter in the north is long; there the rivers freeze and the herders move in early autumn. " * 2


@pytest.fixture(scope="module")
def short_context_dir(tmp_path_factory):
    from conftest import build_model

    return build_model(tmp_path_factory.mktemp("ctx32"), "llama", seed=3, max_position_embeddings=32)


def guide_per_token(model_dir: Path, ids: list[int], window: int, stride: int) -> dict[int, float]:
    """The transformers perplexity guide's loop, written out independently: loss per scored position."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seq = torch.tensor([ids])
    out: dict[int, float] = {}
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        chunk = seq[:, begin:end]
        target = chunk.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(chunk).logits[0]  # [len, vocab]
        per = torch.nn.functional.cross_entropy(logits[:-1], target[0, 1:], reduction="none", ignore_index=-100)
        for j, loss in enumerate(per.tolist()):
            if target[0, j + 1] != -100:
                assert begin + j + 1 not in out  # each position once
                out[begin + j + 1] = loss
        prev_end = end
        if end == len(ids):
            break
    return out


@pytest.mark.parametrize("stride", [5, 16, 31])
def test_long_text_in_windows_matches_the_perplexity_guide(stride, short_context_dir, tmp_path):
    data = jsonl(tmp_path / "t.jsonl", [{"text": LONG_TEXT}])
    lines, summary = batch_lines([str(data), "-m", str(short_context_dir), "--stride", str(stride)], tmp_path)
    (line,) = lines
    ids = [t["token_id"] for t in line["sequence"]]
    assert len(ids) > 3 * 32
    reference = guide_per_token(short_context_dir, ids, 32, stride)
    assert sorted(reference) == list(range(1, len(ids)))  # every token but the first, exactly once
    got = {t["index"]: t["loss"] for t in line["tokens"]}
    assert sorted(got) == sorted(reference)
    assert [got[i] for i in sorted(got)] == pytest.approx([reference[i] for i in sorted(got)], abs=1e-5)
    assert summary["token_weighted_mean_loss"] == pytest.approx(sum(reference.values()) / len(reference), abs=1e-6)
    assert any("windows of 32 tokens" in n and f"every {stride} tokens" in n for n in line["notes"])


def test_long_text_without_stride_says_how(short_context_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "t.jsonl", [{"text": LONG_TEXT}])
    assert main(["batch", str(data), "-m", str(short_context_dir)]) == 1
    assert "score it in windows with --stride" in capsys.readouterr().err
    assert main(["batch", str(data), "-m", str(short_context_dir), "--stride", "32"]) == 2  # a usage error (issue 22)
    assert "--stride must be smaller than the window of 32 tokens" in capsys.readouterr().err
