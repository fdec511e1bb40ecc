"""The scorer contract: a backend that is not the Hugging Face one satisfies it, and ``HFScorer``, its one
implementation, gives torch's CrossEntropyLoss, the model's own loss and the log-softmax of the full logits."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from ce_inspect import Layout, encode, load
from ce_inspect.scoring import (
    HFScorer,
    ScoredLogits,
    ScoreOptions,
    Scorer,
    build_results,
    score_batch,
    scorer_for,
    token_figures,
)

PAIRS = [
    ("Where is the capital of China?", " The capital is Beijing."),
    ("What is 17 + 25?", " 42."),
    ("Hi", " the answer is a longer one, with more tokens in it."),
]


def _examples(lm):
    return [encode(lm.tokenizer, p, a, Layout(), max_length=lm.context_length) for p, a in PAIRS]


def _full_logits(lm, example) -> torch.Tensor:
    """The model's own logits [seq, vocab] of one example alone, every position, float32."""
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([example.input_ids])).logits[0].float()


# --- a toy backend: the contract without the Hugging Face forward pass ------------------------------------


class _ToyRows(ScoredLogits):
    """Scored rows kept whole: a [n_scored, vocab] tensor of logits."""

    def __init__(self, examples, targets, logits: torch.Tensor, rows: int) -> None:
        super().__init__(examples, targets, rows)
        self.all_logits = logits

    @property
    def vocab(self) -> int:
        return int(self.all_logits.shape[-1])

    def logits(self, start: int, stop: int) -> torch.Tensor:
        return self.all_logits[start:stop].float()


class ToyScorer(Scorer):
    """The naive backend: each example alone through the model, logits at every position, no chunking."""

    def __init__(self, lm) -> None:
        self.lm = lm

    def scored_logits(self, examples, options, *, padding_side="right") -> _ToyRows:
        rows, targets = [], []
        for example in examples:
            logits = _full_logits(self.lm, example)  # [seq, vocab]
            rows.extend(logits[p - 1] for p in example.scored_positions)  # the logits at p - 1 predict p
            targets.extend(example.labels[p] for p in example.scored_positions)
        return _ToyRows(examples, targets, torch.stack(rows), rows=2)

    def score(self, examples, options, *, padding_side="right"):
        scored = self.scored_logits(examples, options)
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(scored), scored.rows):
            logits = scored[start : start + scored.rows]
            targets = torch.tensor(scored.targets[start : start + scored.rows])
            figures = token_figures(logits, targets, label_smoothing=options.label_smoothing, top_k=options.top_k)
            for key, value in figures.items():
                parts.setdefault(key, []).append(value)
        figures = {key: torch.cat(values).tolist() for key, values in parts.items()}
        figures["target"] = scored.targets
        losses = self.own_losses(examples) if options.verify else [None] * len(examples)
        return build_results(self.lm, examples, figures, losses, options)

    def own_losses(self, examples):
        out = []
        for example in examples:
            ids = torch.tensor([example.input_ids])
            with torch.no_grad():
                out.append(float(self.lm.model(input_ids=ids, labels=torch.tensor([example.labels])).loss))
        return out


def test_a_scorer_must_implement_the_whole_contract():
    class Partial(Scorer):
        def score(self, examples, options, *, padding_side="right"):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    with pytest.raises(TypeError, match="abstract"):
        ScoredLogits([], [], 1)


def test_a_toy_scorer_satisfies_the_contract_and_agrees_with_hf(tiny_llama):
    examples = _examples(tiny_llama)
    options = ScoreOptions(top_k=3, verify=True, label_smoothing=0.1)
    toy, hf = ToyScorer(tiny_llama), scorer_for(tiny_llama)
    assert isinstance(hf, HFScorer) and isinstance(hf, Scorer) and isinstance(toy, Scorer)
    for a, b in zip(toy.score(examples, options), hf.score(examples, options)):
        assert [t.index for t in a.tokens] == [t.index for t in b.tokens]
        assert [t.token_id for t in a.tokens] == [t.token_id for t in b.tokens]
        assert [t.loss for t in a.tokens] == pytest.approx([t.loss for t in b.tokens], abs=1e-5)
        assert [t.rank for t in a.tokens] == [t.rank for t in b.tokens]
        assert a.summary.model_loss == pytest.approx(b.summary.model_loss, abs=1e-6)
    rows = toy.scored_logits(examples, options)
    assert len(rows) == sum(len(e.scored_positions) for e in examples)
    starts = [start for start, _ in rows.chunks()]
    assert starts == list(range(0, len(rows), 2))
    whole = torch.cat([chunk for _, chunk in rows.chunks()])  # [n_scored, vocab]
    assert torch.equal(whole, torch.log_softmax(rows.all_logits, dim=-1))


# --- HFScorer against independent computations ----------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("chunk_tokens", [None, 2])
def test_hf_figures_equal_cross_entropy_loss_and_the_models_own_loss(fixture, chunk_tokens, request):
    lm = request.getfixturevalue(fixture)
    examples = _examples(lm)
    options = ScoreOptions(verify=True, chunk_tokens=chunk_tokens)
    results = scorer_for(lm).score(examples, options)
    assert [r.to_dict() for r in results] == [r.to_dict() for r in score_batch(lm, examples, options)]
    for example, result in zip(examples, results):
        logits = _full_logits(lm, example)[:-1]  # [seq - 1, vocab]: position t predicts t + 1
        labels = torch.tensor(example.labels[1:])
        none = torch.nn.CrossEntropyLoss(reduction="none")(logits, labels)
        mean = torch.nn.CrossEntropyLoss()(logits, labels)
        scored = (labels != -100).nonzero().flatten().tolist()
        assert [t.index for t in result.tokens] == [i + 1 for i in scored]
        assert [t.loss for t in result.tokens] == pytest.approx(none[scored].tolist(), abs=1e-5)
        assert result.summary.mean == pytest.approx(mean.item(), abs=1e-5)
        with torch.no_grad():
            own = lm.model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
        assert result.summary.model_loss == pytest.approx(own.item(), abs=1e-6)
        assert result.summary.mean == pytest.approx(own.item(), abs=1e-5)
    assert scorer_for(lm).own_losses(examples) == pytest.approx([r.summary.model_loss for r in results], abs=0)


def test_hf_label_smoothing_equals_cross_entropy_loss(tiny_llama):
    (example, *_) = _examples(tiny_llama)
    (result,) = scorer_for(tiny_llama).score([example], ScoreOptions(label_smoothing=0.2))
    logits, labels = _full_logits(tiny_llama, example)[:-1], torch.tensor(example.labels[1:])
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(logits, labels)
    assert result.summary.mean == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("chunk_tokens", [None, 1, 3])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_hf_scored_logits_chunks_equal_log_softmax_of_the_full_logits(fixture, chunk_tokens, padding_side, request):
    lm = request.getfixturevalue(fixture)
    examples = _examples(lm)
    rows = scorer_for(lm).scored_logits(examples, ScoreOptions(chunk_tokens=chunk_tokens), padding_side=padding_side)
    want, targets = [], []
    for example in examples:
        logp = torch.log_softmax(_full_logits(lm, example), dim=-1)  # [seq, vocab]
        want.extend(logp[p - 1] for p in example.scored_positions)
        targets.extend(example.labels[p] for p in example.scored_positions)
    want = torch.stack(want)  # [n_scored, vocab]
    assert rows.targets == targets and len(rows) == len(targets) and rows.vocab == want.shape[-1]
    chunks = list(rows.chunks())
    assert [start for start, _ in chunks] == list(range(0, len(rows), rows.rows))
    assert all(chunk.dtype == torch.float32 and chunk.shape[-1] == rows.vocab for _, chunk in chunks)
    got = torch.cat([chunk for _, chunk in chunks])
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert torch.equal(rows.chunk(1, 4), torch.log_softmax(rows.logits(1, 4), dim=-1))
    assert torch.equal(rows[1:4], rows.logits(1, 4)) and rows[len(rows) - 1 : len(rows) + 5].shape[0] == 1


def test_hf_scored_logits_outlive_the_models_body(tiny_llama_dir):
    """What diff's sequential mode relies on: the scored rows keep the output head, not the model."""
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    examples = _examples(lm)
    full = [torch.log_softmax(_full_logits(lm, e), dim=-1) for e in examples]
    rows = scorer_for(lm).scored_logits(examples, ScoreOptions(chunk_tokens=2))  # the head runs chunk by chunk
    body = weakref.ref(lm.model.model)
    del lm
    gc.collect()
    assert body() is None
    want = torch.stack([logp[p - 1] for e, logp in zip(examples, full) for p in e.scored_positions])
    assert torch.allclose(torch.cat([c for _, c in rows.chunks()]), want, rtol=0, atol=1e-5)
    assert math.isfinite(float(rows.chunk(0, 1).exp().sum()))
