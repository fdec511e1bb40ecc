"""Bounded-memory scoring: the output head runs only at scored positions, in chunks, and every path gives
the figures CrossEntropyLoss gives on the model's full logits."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import build_model, synthetic_batch

from ce_inspect import Layout, ScoreOptions, encode, load, score_batch, score_encoded
from ce_inspect.scoring import DEFAULT_CHUNK_BYTES

PROMPT = "Where is the capital of China? Answer in one sentence."
ANSWER = " The capital of China is Beijing, in the north."
TOL = 1e-5


@pytest.fixture
def warnings_seen():
    """Warnings of the ce_inspect logger, whatever its propagation (the CLI turns propagation off)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("ce_inspect")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def example_for(lm, prompt=PROMPT, answer=ANSWER, **layout):
    return encode(lm.tokenizer, prompt, answer, Layout(**layout), max_length=lm.context_length)


def reference(lm, example, label_smoothing=0.0):
    """The usual way: full logits from the model's own forward, then CrossEntropyLoss on the shifted pairs."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor([[t if t != example.ignore_index else -100 for t in example.labels]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits.float()[0, :-1]  # [seq-1, vocab]
    shift_labels = labels[0, 1:]  # [seq-1]
    ce = torch.nn.functional.cross_entropy
    none = ce(logits, shift_labels, reduction="none", label_smoothing=label_smoothing)
    scored = shift_labels != -100
    logp = logits.log_softmax(-1)[scored]  # [n, vocab]
    targets = shift_labels[scored]
    target_logp = logp.gather(1, targets[:, None])[:, 0]
    return {
        "per_token": none.tolist(),
        "loss": none[scored].tolist(),
        "mean": ce(logits, shift_labels, label_smoothing=label_smoothing).item(),
        "sum": ce(logits, shift_labels, reduction="sum", label_smoothing=label_smoothing).item(),
        "logprob": target_logp.tolist(),
        "rank": ((logp > target_logp[:, None]).sum(-1) + 1).tolist(),
        "top_ids": logp.topk(3, dim=-1).indices.tolist(),
        "logits": logits,
    }


def assert_same(result, other, tol=TOL):
    """Two ScoreResults agree figure by figure."""
    assert [t.token_id for t in result.tokens] == [t.token_id for t in other.tokens]
    for a, b in zip(result.tokens, other.tokens):
        assert a.loss == pytest.approx(b.loss, abs=tol)
        assert a.logprob == pytest.approx(b.logprob, abs=tol)
        assert a.rank == b.rank
        assert [x.token_id for x in a.top_k] == [x.token_id for x in b.top_k]
        assert [x.prob for x in a.top_k] == pytest.approx([x.prob for x in b.top_k], abs=tol)
    assert result.summary.mean == pytest.approx(other.summary.mean, abs=tol)
    assert result.summary.sum == pytest.approx(other.summary.sum, abs=tol * len(result.tokens))


def assert_matches_reference(result, ref, tol=TOL):
    assert [t.loss for t in result.tokens] == pytest.approx(ref["loss"], abs=tol)
    assert [t.logprob for t in result.tokens] == pytest.approx(ref["logprob"], abs=tol)
    assert [t.rank for t in result.tokens] == ref["rank"]
    assert list(result.summary.per_token) == pytest.approx(ref["per_token"], abs=tol)
    assert result.summary.mean == pytest.approx(ref["mean"], abs=tol)
    # torch sums float32 values in float32; ce-inspect sums them exactly (math.fsum).
    assert result.summary.sum == pytest.approx(ref["sum"], abs=tol * len(result.tokens))


class HeadRows:
    """Counts the rows of logits each call of the output head produces."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.handle = model.get_output_embeddings().register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls.append(output.shape[:-1].numel())

    def remove(self):
        self.handle.remove()


# --- chunked == unchunked ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunked_equals_unchunked(tiny_llama, chunk):
    example = example_for(tiny_llama)
    n = len(example.scored_positions)
    assert chunk < n  # a chunk smaller than the answer
    whole = score_encoded(tiny_llama, example, ScoreOptions(top_k=3, chunk_tokens=n))
    chunked = score_encoded(tiny_llama, example, ScoreOptions(top_k=3, chunk_tokens=chunk))
    assert_same(chunked, whole)
    assert_matches_reference(chunked, reference(tiny_llama, example))


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_one_token_answer(tiny_llama, chunk):
    example = example_for(tiny_llama, answer="B", add_eos=False)
    assert len(example.scored_positions) == 1
    result = score_encoded(tiny_llama, example, ScoreOptions(top_k=3, chunk_tokens=chunk))
    assert len(result.tokens) == 1
    assert_matches_reference(result, reference(tiny_llama, example))


def test_chunk_bytes_bounds_rows():
    options = ScoreOptions(chunk_bytes=DEFAULT_CHUNK_BYTES)
    # Three float32 [rows, vocab] buffers fit in chunk_bytes.
    assert 3 * 4 * 152_064 * options.rows_per_chunk(152_064) <= DEFAULT_CHUNK_BYTES
    assert options.rows_per_chunk(152_064) == DEFAULT_CHUNK_BYTES // (12 * 152_064)
    assert ScoreOptions(chunk_bytes=1).rows_per_chunk(50_000) == 1
    assert ScoreOptions(chunk_tokens=5, chunk_bytes=1).rows_per_chunk(50_000) == 5


def test_chunk_bytes_gives_same_figures(tiny_llama):
    example = example_for(tiny_llama)
    vocab = tiny_llama.model.get_output_embeddings().weight.shape[0]
    small = ScoreOptions(top_k=3, chunk_bytes=2 * 12 * vocab)  # two rows per chunk
    assert small.rows_per_chunk(vocab) == 2
    assert_same(score_encoded(tiny_llama, example, small), score_encoded(tiny_llama, example, ScoreOptions(top_k=3)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_figures_match_cross_entropy_loss(tiny_llama, smoothing):
    example = example_for(tiny_llama, sep="\n")
    result = score_encoded(tiny_llama, example, ScoreOptions(top_k=3, chunk_tokens=4, label_smoothing=smoothing))
    ref = reference(tiny_llama, example, label_smoothing=smoothing)
    assert_matches_reference(result, ref)
    assert [[a.token_id for a in t.top_k] for t in result.tokens] == ref["top_ids"]


def test_head_runs_only_on_scored_rows_in_chunks(tiny_llama):
    example = example_for(tiny_llama, prompt=PROMPT * 4)
    n = len(example.scored_positions)
    rows = HeadRows(tiny_llama.model)
    try:
        score_encoded(tiny_llama, example, ScoreOptions(chunk_tokens=4))
    finally:
        rows.remove()
    # The check: the model projects two rows inside its forward, and ce-inspect the same two rows.
    assert rows.calls[:2] == [2, 2]
    # Then the scored rows only, 4 at a time.
    assert rows.calls[2:] == [min(4, n - i) for i in range(0, n, 4)]
    assert sum(rows.calls[2:]) == n < len(example)


def test_rows_that_fit_one_chunk_are_projected_once_by_the_model(tiny_llama):
    example = example_for(tiny_llama, prompt=PROMPT * 4)
    n = len(example.scored_positions)
    rows = HeadRows(tiny_llama.model)
    try:
        result = score_encoded(tiny_llama, example, ScoreOptions(top_k=3, chunk_tokens=n))
    finally:
        rows.remove()
    assert rows.calls == [n]  # one weight pass, at the scored positions only
    assert_matches_reference(result, reference(tiny_llama, example))


def test_no_cache_and_a_mask_only_for_left_padding(tiny_llama):
    """No KV cache ever; no mask without padding, nor for right padding (a causal model's real positions never
    see it: SDPA's causal kernel, no [batch, seq, seq] mask); left padding needs the mask and positions."""
    pair = [example_for(tiny_llama), example_for(tiny_llama, answer=" Beijing.")]
    score_batch(tiny_llama, pair)  # the one-time probe of right padding, before the calls are recorded
    assert tiny_llama.unmasked_padding is True
    seen: list[dict] = []
    handle = tiny_llama.model.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True)
    try:
        score_encoded(tiny_llama, example_for(tiny_llama))
        score_batch(tiny_llama, pair)
        score_batch(tiny_llama, pair, padding_side="left")
    finally:
        handle.remove()
    single, right, left = seen
    assert single["use_cache"] is False and right["use_cache"] is False and left["use_cache"] is False
    assert "attention_mask" not in single and "position_ids" not in single
    assert "attention_mask" not in right and "position_ids" not in right
    assert left["attention_mask"].shape == left["input_ids"].shape
    assert not bool(left["attention_mask"].all()) and "position_ids" in left


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_one_at_a_time(tiny_llama_dir, tiny_llama, side, warnings_seen):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    # The short example's scored columns are padding in the long one's row and vice versa.
    examples = [example_for(lm, prompt=PROMPT * 2), example_for(lm, prompt="", answer="Beijing")]
    batch = score_batch(lm, examples, ScoreOptions(top_k=3, chunk_tokens=3), padding_side=side)
    assert lm.fast_head is True and not warnings_seen  # the head check looked at real positions only
    for example, result in zip(examples, batch):
        assert_same(result, score_encoded(tiny_llama, example, ScoreOptions(top_k=3)))


# --- architectures: tied embeddings, soft-capping, and the fallback -------------------------------------


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [("llama", {"tie_word_embeddings": True}), ("gpt2", {}), ("gemma2", {})],
    ids=["llama-tied", "gpt2-tied", "gemma2-softcap"],
)
def test_fast_path_on_architectures(tmp_path, arch, overrides, warnings_seen):
    lm = load(str(build_model(tmp_path / arch, arch, add_bos=arch != "gpt2", **overrides)), device="cpu", quiet=True)
    model = lm.model
    if arch != "gemma2":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    example = example_for(lm)
    result = score_encoded(lm, example, ScoreOptions(top_k=3, chunk_tokens=3))
    assert lm.fast_head is True and not warnings_seen
    ref = reference(lm, example)
    assert_matches_reference(result, ref)
    if arch == "gemma2":
        cap = model.config.final_logit_softcapping
        assert cap and ref["logits"].abs().max() <= cap  # the cap is in force, and reproduced
        assert max(t.loss for t in result.tokens) <= 2 * cap + 10


class Wrapped(torch.nn.Module):
    """An output head that is not a plain Linear layer (as in some remote-code models)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden):
        return self.inner(hidden)


def test_fallback_when_head_is_not_linear(tiny_llama_dir, tiny_llama, warnings_seen):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    lm.model.lm_head = Wrapped(lm.model.lm_head)
    example = example_for(lm)
    fallback = score_encoded(lm, example, ScoreOptions(top_k=3, chunk_tokens=2))
    assert lm.fast_head is False
    assert len(warnings_seen) == 1 and "own logits" in warnings_seen[0].getMessage()
    fast = score_encoded(tiny_llama, example, ScoreOptions(top_k=3))
    assert tiny_llama.fast_head is True
    assert_same(fallback, fast)
    assert_matches_reference(fallback, reference(lm, example))
    score_encoded(lm, example)
    assert len(warnings_seen) == 1  # once per model


def test_fallback_when_model_post_processes_logits_unknown_to_us(tiny_llama_dir, warnings_seen):
    """A forward that changes logits after the head: the check catches it and the model's own logits win."""
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    own_forward = lm.model.forward

    def scaled_forward(*args, **kwargs):
        out = own_forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    lm.model.forward = scaled_forward
    example = example_for(lm)
    result = score_encoded(lm, example, ScoreOptions(chunk_tokens=2))
    assert lm.fast_head is False and warnings_seen
    assert_matches_reference(result, reference(lm, example))


def test_fallback_when_config_claims_a_scale_the_model_does_not_apply(tiny_llama_dir, warnings_seen):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    lm.model.config.logit_scale = 2.0  # _head would apply it; LlamaForCausalLM does not
    example = example_for(lm)
    result = score_encoded(lm, example, ScoreOptions(chunk_tokens=2))
    assert lm.fast_head is False and warnings_seen
    assert_matches_reference(result, reference(lm, example))


def test_device_map_with_an_offloaded_head(tiny_llama_dir, tiny_llama, tmp_path, warnings_seen):
    """Under accelerate's dispatch (as with --device-map), the head's weight may live on disk (meta)."""
    from accelerate import dispatch_model

    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    lm.model = dispatch_model(lm.model, device_map={"model": "cpu", "lm_head": "disk"}, offload_dir=str(tmp_path))
    assert lm.model.lm_head.weight.device.type == "meta"
    example = example_for(lm)
    result = score_encoded(lm, example, ScoreOptions(top_k=3, chunk_tokens=2))
    assert lm.fast_head is True and not warnings_seen
    assert_same(result, score_encoded(tiny_llama, example, ScoreOptions(top_k=3)))


# --- the real model -------------------------------------------------------------------------------------


# float32 matrix products round differently with the number of rows (CPU sgemm runs rows in panels of 4 and
# the remainder through another kernel): on this 49k vocabulary, logits of one row differ by up to ~1e-5
# between a 1-row and a 12-row product, and so do losses. The tiny models above hold 1e-5; this one is
# held to 5e-5, which still catches any real error (a wrong row or a missing cap moves losses by > 1e-2).
FP32_GEMM_TOL = 5e-5


@pytest.mark.default_model
def test_default_model_chunked_equals_full_logits(smollm2):
    prompt = "You are a helpful assistant. " * 30 + "Where is the capital of China?"
    example = example_for(smollm2, prompt=prompt)
    n = len(example.scored_positions)
    whole = score_encoded(smollm2, example, ScoreOptions(top_k=3, chunk_tokens=n, verify=True))
    assert whole.summary.verify_abs_diff < FP32_GEMM_TOL
    assert_matches_reference(whole, reference(smollm2, example), tol=FP32_GEMM_TOL)
    for chunk in (1, 4, 5):
        assert_same(score_encoded(smollm2, example, ScoreOptions(top_k=3, chunk_tokens=chunk)), whole, FP32_GEMM_TOL)
    assert smollm2.fast_head is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(tiny_llama_dir, tiny_llama):
    lm = load(str(tiny_llama_dir), device="cuda", dtype="float32", quiet=True)
    example = example_for(lm)
    result = score_encoded(lm, example, ScoreOptions(top_k=3, chunk_tokens=3))
    assert lm.fast_head is True
    assert_same(result, score_encoded(tiny_llama, example, ScoreOptions(top_k=3)), tol=1e-4)


# --- result building ------------------------------------------------------------------------------------


class CountingList(list):
    """A figure list that counts the elements its slices copy."""

    copied = 0

    def __getitem__(self, index):
        if isinstance(index, slice):
            CountingList.copied += len(range(*index.indices(len(self))))
        return super().__getitem__(index)


@pytest.mark.parametrize("top_k", [0, 5])
def test_result_building_is_one_pass_at_16k_scored_tokens(tiny_llama, top_k):
    """Turning the figure lists into results is one pass over them: each list is sliced once per example,
    so building 16,384 tokens copies each list's 16,384 entries once (re-slicing the lists for every token,
    as it once did, copies them 16,384 times). Its time is measured in `bench/result_building.py`."""
    from ce_inspect.scoring import build_results

    options = ScoreOptions(top_k=top_k)
    example, figures = synthetic_batch(16_384, len(tiny_llama.tokenizer), top_k)
    counted = {key: CountingList(values) for key, values in figures.items()}
    CountingList.copied = 0
    (result,) = build_results(tiny_llama, [example], counted, [None], options)
    assert CountingList.copied <= len(figures) * 16_384, f"{CountingList.copied} figure entries copied"
    # The figures land on the right tokens, computed independently from the synthetic lists.
    assert [t.loss for t in result.tokens] == figures["loss"]
    assert [t.index for t in result.tokens] == list(range(1, 16_385))
    assert [t.rank for t in result.tokens] == figures["rank"]
    assert [a.token_id for a in result.tokens[-1].top_k] == figures["top_ids"][-1][:top_k]
    assert result.summary.sum == pytest.approx(math.fsum(figures["loss"]))
    assert list(result.summary.per_token) == figures["loss"]
