"""Scoring: BACKGROUND.md's worked numbers, and parity with torch and with the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from ce_inspect import Layout, ScoreOptions, cross_entropy, encode, score, score_encoded, token_figures
from ce_inspect.errors import InputError

WORKED_LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.5, 0.5, 2.0]]
WORKED_LABELS = [0, -100, 2]


def worked():
    return torch.tensor(WORKED_LOGITS), torch.tensor(WORKED_LABELS)


def test_worked_mean():
    logits, labels = worked()
    assert cross_entropy(logits, labels).item() == pytest.approx(0.51058030128479, abs=1e-7)


def test_worked_sum():
    logits, labels = worked()
    assert cross_entropy(logits, labels, reduction="sum").item() == pytest.approx(1.02116060256958, abs=1e-7)


def test_worked_none():
    logits, labels = worked()
    values = cross_entropy(logits, labels, reduction="none").tolist()
    assert values == pytest.approx([0.4170, 0.0, 0.6041], abs=1e-4)
    assert values[1] == 0.0


def test_worked_label_smoothing():
    logits, labels = worked()
    value = cross_entropy(logits, labels, label_smoothing=0.1).item()
    assert value == pytest.approx(0.592246949672699, abs=1e-7)


def test_worked_probabilities_and_perplexity():
    logits, labels = worked()
    keep = labels != -100
    figures = token_figures(logits[keep], labels[keep])
    probs = [math.exp(lp) for lp in figures["logprob"].tolist()]
    assert probs == pytest.approx([0.6590, 0.5465], abs=1e-4)
    assert math.exp(cross_entropy(logits, labels).item()) == pytest.approx(math.exp(0.51058030128479), rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.3])
def test_cross_entropy_matches_torch_on_random_logits(reduction, smoothing):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(40, 97, generator=gen) * 4
    labels = torch.randint(0, 97, (40,), generator=gen)
    labels[torch.rand(40, generator=gen) < 0.3] = -100
    ours = cross_entropy(logits, labels, reduction=reduction, label_smoothing=smoothing)
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(logits, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_custom_ignore_index_matches_torch():
    logits, _ = worked()
    labels = torch.tensor([0, 7, 2])
    ours = cross_entropy(logits, labels, ignore_index=7)
    theirs = torch.nn.CrossEntropyLoss(ignore_index=7)(logits, labels)
    torch.testing.assert_close(ours, theirs)


def test_rank_and_top_choice():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 1.0, 1.5, 0.0]])
    figures = token_figures(logits, torch.tensor([2, 0]), top_k=2)
    assert figures["rank"].tolist() == [2, 1]
    assert figures["top_ids"].tolist() == [[1, 2], [0, 2]]


def test_token_figures_upcasts_half_precision():
    logits = torch.randn(3, 50, dtype=torch.bfloat16)
    figures = token_figures(logits, torch.tensor([1, 2, 3]))
    assert figures["logprob"].dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(3), torch.tensor([1, 2, 3])]
    torch.testing.assert_close(figures["logprob"], expected)


def _independent(lm, example):
    """Per-token loss the way a training step computes it, with plain torch on the model's full logits."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor([example.labels])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits  # [1, seq, vocab]
    shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[..., 1:].reshape(-1)
    none = torch.nn.CrossEntropyLoss(reduction="none")(shift_logits, shift_labels)
    mean = torch.nn.CrossEntropyLoss()(shift_logits, shift_labels)
    return none, mean, shift_labels


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_model_path_matches_torch_and_model_loss(fixture, request):
    lm = request.getfixturevalue(fixture)
    example = encode(lm.tokenizer, "Where is the capital of China?", " The capital is Beijing.", Layout())
    result = score_encoded(lm, example, ScoreOptions(verify=True))
    none, mean, shift_labels = _independent(lm, example)
    scored = (shift_labels != -100).nonzero().flatten().tolist()
    assert [t.index for t in result.tokens] == [i + 1 for i in scored]
    assert [t.loss for t in result.tokens] == pytest.approx(none[scored].tolist(), abs=1e-5)
    assert result.summary.mean == pytest.approx(mean.item(), abs=1e-5)
    assert result.summary.sum == pytest.approx(none.sum().item(), abs=1e-4)
    assert result.summary.count == len(scored)
    assert result.summary.model_loss == pytest.approx(mean.item(), abs=1e-5)
    assert result.summary.verify_abs_diff < 1e-5
    for t in result.tokens:
        assert t.prob == pytest.approx(math.exp(-t.loss), rel=1e-6)
        assert t.logprob == pytest.approx(-t.loss, abs=1e-6)


def test_model_path_label_smoothing_matches_torch(tiny_llama):
    example = encode(tiny_llama.tokenizer, "abc", " def ghi", Layout())
    result = score_encoded(tiny_llama, example, ScoreOptions(label_smoothing=0.2))
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=ids).logits[0, :-1]
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(logits, labels[0, 1:])
    assert result.summary.mean == pytest.approx(expected.item(), abs=1e-5)
    # perplexity stays exp(mean NLL), not exp of the smoothed loss
    plain = torch.nn.CrossEntropyLoss()(logits, labels[0, 1:])
    assert result.summary.perplexity == pytest.approx(math.exp(plain.item()), rel=1e-5)


def test_reduction_headline(tiny_llama):
    example = encode(tiny_llama.tokenizer, "hello", " world", Layout())
    for reduction in ("mean", "sum", "none"):
        result = score_encoded(tiny_llama, example, ScoreOptions(reduction=reduction))
        none, mean, shift_labels = _independent(tiny_llama, example)
        expected = {"mean": mean.item(), "sum": none.sum().item(), "none": none.tolist()}[reduction]
        assert result.summary.loss == pytest.approx(expected, abs=1e-5)


def test_rank_matches_full_sort(tiny_llama):
    example = encode(tiny_llama.tokenizer, "The cat", " sat on the mat", Layout())
    result = score_encoded(tiny_llama, example, ScoreOptions(top_k=3))
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=torch.tensor([example.input_ids])).logits[0]
    for t in result.tokens:
        row = logits[t.index - 1]
        order = torch.argsort(row, descending=True).tolist()
        assert t.rank == order.index(t.token_id) + 1
        assert t.top_id == order[0]
        assert [a.token_id for a in t.top_k] == order[:3]
        assert (t.rank == 1) == (t.token_id == t.top_id)
    assert result.summary.greedy_hits == sum(t.rank == 1 for t in result.tokens)


def test_prompt_is_never_scored(tiny_llama):
    result = score(tiny_llama, "a long prompt that must stay masked", " ok", layout=Layout(sep=" ->"))
    scored_segments = {t.segment for t in result.tokens}
    assert scored_segments == {"answer", "eos"}
    assert all(not s.scored for s in result.sequence if s.segment in ("bos", "prompt", "sep"))
    assert [s.index for s in result.sequence if s.scored] == [t.index for t in result.tokens]


def test_no_mask_prompt_scores_everything_but_the_first_token(tiny_llama):
    result = score(tiny_llama, "abc", " de", layout=Layout(mask_prompt=False))
    assert [t.index for t in result.tokens] == list(range(1, len(result.sequence)))


def test_invalid_options():
    with pytest.raises(InputError):
        ScoreOptions(reduction="avg")
    with pytest.raises(InputError):
        ScoreOptions(label_smoothing=1.5)
    with pytest.raises(InputError):
        ScoreOptions(chunk_tokens=0)
