"""Bits per byte, byte and word perplexity (issue 18): each example's and the data set's against the
definition computed here from torch's cross_entropy on the full logits and the texts' UTF-8 bytes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from ce_inspect import load
from ce_inspect.cli import main
from ce_inspect.dataset import BatchSettings, JsonlSink, run_scan, scan_dataset
from ce_inspect.text import count_words, token_bytes

# Multi-byte characters on purpose: 2-byte (é, ß), 3-byte (€, 中文, ✓) and 4-byte (🙂) UTF-8, which the
# byte-level tokenizer splits into tokens that are parts of characters.
RECORDS = [
    {"prompt": "Say it:", "answer": " café crème, ß and 5 €"},
    {"prompt": "x", "answer": "y"},
    {"prompt": "Translate: hello", "answer": " 你好 中文 ✓ 🙂🙂"},
    {"prompt": "Q", "answer": " a plain ASCII answer\nover two lines"},
]


def independent(model_dir: Path, rows) -> list[tuple[float, int, int]]:
    """Per example: (sum NLL of the answer and EOS, UTF-8 bytes of that text, its words), from the model and
    tokenizer alone. The scored text is the answer followed by the EOS token's text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for row in rows:
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([[tok.bos_token_id, *prompt, *answer]])
        labels = torch.tensor([-100] * (1 + len(prompt)) + answer)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], reduction="sum").item()
        text = row["answer"] + tok.eos_token
        out.append((nll, len(text.encode("utf-8")), len(re.split(r"\s+", text))))
    return out


def run(lm, data: Path, out: Path):
    scan = scan_dataset(lm, data)
    with JsonlSink.open(out) as sink:
        summary = run_scan(lm, scan, sink, settings=BatchSettings(batch_size=3))
    return summary, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_bits_per_byte_matches_the_definition(tiny_llama_dir, tmp_path):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    summary, lines = run(lm, data, tmp_path / "out.jsonl")
    expected = independent(tiny_llama_dir, RECORDS)
    assert any(len(r["answer"].encode()) > len(r["answer"]) for r in RECORDS)  # multi-byte text is covered

    for line, (nll, n_bytes, n_words) in zip(lines, expected):
        s = line["summary"]
        assert s["scored_bytes"] == n_bytes and s["scored_words"] == n_words
        assert s["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
        assert s["byte_perplexity"] == pytest.approx(math.exp(nll / n_bytes), rel=1e-5)
        assert s["word_perplexity"] == pytest.approx(math.exp(nll / n_words), rel=1e-5)

    total_nll = math.fsum(e[0] for e in expected)
    total_bytes = sum(e[1] for e in expected)
    total_words = sum(e[2] for e in expected)
    assert summary.scored_bytes == total_bytes and summary.scored_words == total_words
    assert summary.bits_per_byte == pytest.approx(total_nll / math.log(2) / total_bytes, rel=1e-5)
    assert summary.byte_perplexity == pytest.approx(math.exp(total_nll / total_bytes), rel=1e-5)
    assert summary.word_perplexity == pytest.approx(math.exp(total_nll / total_words), rel=1e-5)
    # Not the mean of the examples' figures: the set's figure weighs each example by its bytes.
    mean_of_examples = sum(line["summary"]["bits_per_byte"] for line in lines) / len(lines)
    assert summary.bits_per_byte != pytest.approx(mean_of_examples, rel=1e-3)
    d = summary.to_dict()
    assert d["bits_per_byte"] == summary.bits_per_byte and d["scored_bytes"] == total_bytes


def test_token_bytes_are_exact_for_parts_of_characters(tiny_llama):
    text = " 你好 🙂 é"
    ids = tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]
    utf8 = token_bytes(tiny_llama.tokenizer, ids)
    assert any(utf8[i].decode("utf-8", errors="replace") == "\ufffd" for i in ids)  # a token cuts a character
    assert b"".join(utf8[i] for i in ids) == text.encode("utf-8")


def test_count_words_is_lm_evals_rule():
    assert count_words("a b\n c") == 3
    assert count_words(" a b") == 3  # re.split counts the empty string before a leading space, as lm-eval does


def test_batch_table_and_summary_json_show_bits_per_byte(capsys, tiny_llama_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    summary_json = tmp_path / "s.json"
    args = ["batch", str(data), "--model", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl")]
    assert main([*args, "--summary-json", str(summary_json)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(summary_json.read_text(encoding="utf-8"))
    expected = independent(tiny_llama_dir, RECORDS)
    total_bytes = sum(e[1] for e in expected)
    assert doc["scored_bytes"] == total_bytes
    assert doc["bits_per_byte"] == pytest.approx(
        math.fsum(e[0] for e in expected) / math.log(2) / total_bytes, rel=1e-5
    )
    assert "bits per byte" in out and f"{doc['bits_per_byte']:.4f}" in out and f"{total_bytes:,} scored UTF-8" in out
