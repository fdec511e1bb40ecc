"""``entropy``: the entropy of the model's distribution at each scored position, computed in the chunked head,
checked against torch's softmax entropy over the model's full logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ce_inspect
from ce_inspect.cli import main
from ce_inspect.scoring import ScoreOptions, token_figures
from ce_inspect.text import Layout

PROMPT, ANSWER = "Where is the capital of China?", " The capital is Beijing."


def full_entropy(lm, result) -> list[float]:
    """Entropy at each scored token from the model's own full logits [seq, vocab]: -sum softmax * log_softmax."""
    ids = torch.tensor([[t.token_id for t in result.sequence]])
    with torch.no_grad():
        logits = lm.model(ids).logits[0].float()  # [seq, vocab]
    probs = torch.softmax(logits, dim=-1)
    entropy = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)  # [seq]
    return [float(entropy[t.index - 1]) for t in result.tokens]  # the logits at index - 1 predict the token


@pytest.mark.parametrize("chunk_tokens", [None, 1, 3])  # one chunk, a row at a time, and a ragged last chunk
def test_each_entropy_equals_torchs_softmax_entropy_of_the_full_logits(tiny_llama, chunk_tokens):
    options = ScoreOptions(entropy=True, chunk_tokens=chunk_tokens)
    result = ce_inspect.score(tiny_llama, PROMPT, ANSWER, options=options)
    want = full_entropy(tiny_llama, result)
    assert [t.entropy for t in result.tokens] == pytest.approx(want, abs=1e-5)
    assert result.summary.mean_entropy == pytest.approx(sum(want) / len(want), abs=1e-5)
    d = result.to_dict()
    assert all("entropy" in t for t in d["tokens"]) and "mean_entropy" in d["summary"]
    plain = ce_inspect.score(tiny_llama, PROMPT, ANSWER).to_dict()
    assert not any("entropy" in t for t in plain["tokens"]) and "mean_entropy" not in plain["summary"]


def test_a_zero_probability_adds_nothing_to_the_entropy():
    logits = torch.tensor([[0.0, 0.0, -math.inf], [1.0, 2.0, 3.0]])  # [2, vocab]
    got = token_figures(logits, torch.tensor([0, 2]), entropy=True)["entropy"]
    finite = torch.tensor([1.0, 2.0, 3.0])
    want = -(torch.softmax(finite, -1) * torch.log_softmax(finite, -1)).sum()
    assert got.tolist() == pytest.approx([math.log(2), float(want)], abs=1e-6)


def test_long_text_in_windows_carries_the_entropy_of_each_window(tiny_llama, tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "the cat sat on the mat " * 20}) + "\n")
    out = tmp_path / "out.jsonl"
    options = ScoreOptions(entropy=True)
    layout = Layout(rolling=True, rolling_window=40)
    summary = ce_inspect.score_dataset(tiny_llama, data, out, layout=layout, options=options).to_dict()
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    entropies = [t["entropy"] for t in line["tokens"]]
    assert len(entropies) == line["summary"]["count"] and all(e >= 0 for e in entropies)
    assert summary["mean_entropy"] == pytest.approx(sum(entropies) / len(entropies), rel=1e-9)
    assert line["summary"]["mean_entropy"] == pytest.approx(summary["mean_entropy"], rel=1e-9)


def test_the_table_shows_an_entropy_column_on_request(tiny_llama_dir, capsys):
    args = ["run", "-m", str(tiny_llama_dir), "--prompt", PROMPT, "--answer", ANSWER]
    assert main(args) == 0
    assert "entropy" not in capsys.readouterr().out
    assert main([*args, "--entropy"]) == 0
    out = capsys.readouterr().out
    assert "entropy" in out and "mean entropy" in out
