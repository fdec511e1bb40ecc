"""Non-finite logits: NaN or +inf anywhere in a row, or a non-finite figure of a scored token, is a one-line
error naming the token (and the input line); -inf logits elsewhere are probabilities of 0, which models
legitimately give masked (padded) vocabulary entries, and every figure must then match torch.

The one-line errors of the command line are rows of tests/test_hostile.py (LOADING_CASES, ``nan-logits-*``);
these are the behaviours a row cannot express: figures against torch, a batch output's lines, windows.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_model, byte_tokenizer

from ce_inspect import Layout, ScoreOptions, encode, load, score
from ce_inspect.cli import main
from ce_inspect.cli.render import _HEAT, HEAT_BG, loss_style
from ce_inspect.contract import dumps
from ce_inspect.diff import diff
from ce_inspect.errors import NonFiniteError
from ce_inspect.scoring import nonfinite_row, score_windows, token_figures
from ce_inspect.text import Encoded

PROMPT, ANSWER = "the cat", " sat on it"
Z = byte_tokenizer().convert_tokens_to_ids("Z")


# --- the check on a block of logits ------------------------------------------------------------------------


def _why(logits: torch.Tensor, targets: list[int], smoothing: float = 0.0):
    t = torch.tensor(targets)
    return nonfinite_row(logits, t, token_figures(logits, t, label_smoothing=smoothing))


def test_each_non_finite_row_is_found_with_its_cause():
    logits = torch.randn(4, 10)
    assert _why(logits, [0, 1, 2, 3]) is None
    nan, pos, neg = logits.clone(), logits.clone(), logits.clone()
    nan[2, 7] = math.nan  # not the target's logit: the whole row's log-softmax is NaN all the same
    assert _why(nan, [0, 1, 2, 3]) == (2, "nan")
    pos[1, 9] = math.inf
    assert _why(pos, [0, 1, 2, 3]) == (1, "+inf")
    neg[3, 3] = -math.inf  # the target's own logit: probability 0, an infinite loss
    assert _why(neg, [0, 1, 2, 3]) == (3, "zero")
    assert _why(neg, [0, 1, 2, 4]) is None  # another entry's: probability 0, every figure finite
    assert _why(neg, [0, 1, 2, 4], smoothing=0.1) == (3, "smoothing")  # label smoothing averages it in
    far = logits.clone()
    far[0, 0], far[0, 1] = 3e38, -3e38  # finite, but log p of the second is -6e38: beyond float32
    assert _why(far, [1, 1, 2, 3]) == (0, "overflow")


def test_minus_inf_logits_give_torch_figures():
    """Masked entries: loss, log-probability, rank and top-k as torch computes them, top-k probabilities 0."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 50, generator=gen) * 3
    logits[:, 30:] = -math.inf
    logits[2, 5] = -math.inf
    targets = torch.tensor([0, 4, 6, 29, 1, 2])
    figures = token_figures(logits, targets, top_k=50)
    assert nonfinite_row(logits, targets, figures) is None
    reference = torch.nn.CrossEntropyLoss(reduction="none")(logits, targets)
    torch.testing.assert_close(figures["loss"], reference)
    torch.testing.assert_close(figures["logprob"], -reference)
    logp = torch.log_softmax(logits, dim=-1)
    target_logp = logp[torch.arange(6), targets]
    assert figures["rank"].tolist() == [int((row > lp).sum()) + 1 for row, lp in zip(logp, target_logp)]
    probs = figures["top_logp"].exp()
    assert torch.isfinite(probs).all() and probs[:, 30:].eq(0).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(6))
    # Label smoothing averages -log p over every entry: torch's loss is infinite too, hence the error.
    assert torch.isinf(torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, targets))


# --- a model whose logits hold -inf -------------------------------------------------------------------------


def _masked(lm, scaled: bool = False) -> torch.Tensor:
    """Mask the ids 150 and up (but the answer's) to -inf in the head; with ``scaled``, the model's forward also
    scales its logits after the head, which the fast head path cannot reproduce. Returns the mask [vocab]."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[150:] = True
    mask[lm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]] = False
    mask[lm.tokenizer.eos_token_id] = False

    def head_hook(module, args, out):
        return out.masked_fill(mask, -math.inf)

    def model_hook(module, args, kwargs, out):
        out.logits = out.logits * 1.5
        return out

    lm.model.get_output_embeddings().register_forward_hook(head_hook)
    if scaled:
        lm.model.register_forward_hook(model_hook, with_kwargs=True)
    return mask


def _reference(lm, example: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-logit loss [n] and log-probabilities [n, vocab] at the scored positions, from the model's forward."""
    positions = list(example.scored_positions)
    with torch.no_grad():
        logits = lm.model(torch.tensor([example.input_ids])).logits[0]  # [seq, vocab]
    rows = logits[[p - 1 for p in positions]]
    targets = torch.tensor([example.input_ids[p] for p in positions])
    return torch.nn.CrossEntropyLoss(reduction="none")(rows, targets), torch.log_softmax(rows, dim=-1)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("chunk_tokens", [None, 1])  # the model's own logits, or the fast head row by row
def test_masked_vocabulary_scores_like_torch(tiny_llama_dir, scaled, chunk_tokens):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    mask = _masked(lm, scaled)
    vocab = mask.numel()
    result = score(lm, PROMPT, ANSWER, options=ScoreOptions(top_k=vocab, chunk_tokens=chunk_tokens))
    example = encode(lm.tokenizer, PROMPT, ANSWER, Layout(), max_length=None)
    loss, logp = _reference(lm, example)
    assert torch.isneginf(logp[:, mask]).all()  # the reference sees the masked logits
    assert [t.loss for t in result.tokens] == pytest.approx(loss.tolist(), abs=1e-5)
    for t, row in zip(result.tokens, logp):
        assert t.rank == int((row > row[t.token_id]).sum()) + 1
        shown = {a.token_id: a.prob for a in t.top_k}
        assert all(shown[i] == 0.0 for i in mask.nonzero().flatten().tolist())
        assert [shown[i] for i in range(vocab)] == pytest.approx(row.exp().tolist(), abs=1e-6)
    json.loads(dumps(result.to_dict()))  # every figure is JSON: nothing non-finite
    if chunk_tokens == 1:
        # The head check compares the finite logits at their own scale (a -inf one made any head pass).
        assert lm.fast_head is not scaled


def test_masked_vocabulary_with_label_smoothing_or_a_masked_target_is_an_error(tiny_llama_dir):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    _masked(lm)
    with pytest.raises(NonFiniteError, match=r"with `label_smoothing` 0.1 the loss of scored token 1 of \d+ "):
        score(lm, PROMPT, ANSWER, options=ScoreOptions(label_smoothing=0.1))
    masked_answer = " " + lm.tokenizer.decode([200])  # a masked id as the second scored token
    with pytest.raises(NonFiniteError, match=r"gives scored token 2 of \d+ \(target .*\) probability 0"):
        score(lm, PROMPT, masked_answer)


def test_diff_of_two_models_masking_the_same_entries_is_finite_kl(tiny_llama_dir, tmp_path):
    """p = 0 on both sides contributes 0 to KL both ways (it was 0·(-inf) = NaN, refused as infinite)."""
    ref = load(str(tiny_llama_dir), device="cpu", quiet=True)
    cand = load(str(build_model(tmp_path / "b", "llama", seed=1)), device="cpu", quiet=True)
    mask = _masked(ref)
    _masked(cand)
    result = diff(ref, cand, PROMPT, ANSWER)
    example = encode(ref.tokenizer, PROMPT, ANSWER, Layout(), max_length=None)
    _, p = _reference(ref, example)
    _, q = _reference(cand, example)
    keep = ~mask
    kl = (p[:, keep].exp() * (p[:, keep] - q[:, keep])).sum(dim=-1)
    kl_reverse = (q[:, keep].exp() * (q[:, keep] - p[:, keep])).sum(dim=-1)
    assert [t.kl for t in result.tokens] == pytest.approx(kl.tolist(), abs=1e-5)
    assert [t.kl_reverse for t in result.tokens] == pytest.approx(kl_reverse.tolist(), abs=1e-5)


# --- where the error points: windows and batch lines -------------------------------------------------------


def _nan_after_z(lm) -> None:
    """The final hidden state NaN exactly where the input token is Z (no spreading through attention)."""
    seen = {}
    lm.model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(ids=kwargs["input_ids"]), with_kwargs=True)

    def norm_hook(module, args, out):
        return out.masked_fill((seen["ids"] == Z)[..., None].to(out.device), math.nan)

    lm.model.model.norm.register_forward_hook(norm_hook)


def test_windows_name_the_token_among_the_whole_texts(tiny_llama_dir):
    lm = load(str(tiny_llama_dir), device="cpu", quiet=True)
    _nan_after_z(lm)
    ids = [1, *lm.tokenizer("xy" * 40 + "Z" + "xy" * 20, add_special_tokens=False)["input_ids"]]
    at = ids.index(Z)  # 81: windows of 32 every 16 tokens; the one scoring 80..95 holds it
    example = Encoded(
        input_ids=tuple(ids),
        labels=tuple([-100, *ids[1:]]),
        segments=tuple(["text"] * len(ids)),
        layout={"windows": {"window": 32, "stride": 16}},
    )
    with pytest.raises(NonFiniteError) as caught:
        score_windows(lm, example, ScoreOptions())
    # Every position from 1 is scored once, in order: the token after Z is scored token `at + 1`.
    assert str(caught.value).startswith(
        f"the model's logits are not finite (NaN) at scored token {at + 1} of {len(ids) - 1} (target 'x'): "
    )
    assert caught.value.example is example


def _nan_z_model(folder):
    from safetensors.torch import load_file, save_file

    build_model(folder, "llama")
    weights = load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"][Z] = math.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_batch_stops_at_the_line_and_keeps_whole_lines(tmp_path, capsys, skip_invalid):
    """A record the model gives NaN stops the run, even with --skip-invalid (a model fault, not a record's:
    skipping would leave the hardest records out of the data-set mean); the output keeps whole lines and
    resumes to the same error."""
    model = _nan_z_model(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    records = [{"prompt": "Q", "answer": " a"}, {"prompt": "Q", "answer": " b"}, {"prompt": "Q", "answer": " Z!"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in [*records, records[0]]))
    out = tmp_path / "o.jsonl"
    args = ["batch", str(data), "-m", str(model), "--device", "cpu", "-o", str(out), "--sort-window", "1"]
    args += ["--skip-invalid"] * skip_invalid
    for resume in ([], ["--resume"]):
        code = main([*args, *resume])
        stdout, err = capsys.readouterr()
        assert code == 1 and stdout == "" and "Traceback" not in err
        (line,) = [x for x in err.splitlines() if x.startswith("Error: ")]
        assert line.startswith(f"Error: {data} line 3: the model's logits are not finite (NaN) at scored token 1 of")
        text = out.read_text()
        assert text.endswith("\n")
        assert [json.loads(x)["line"] for x in text.splitlines()] == [1, 2]


def test_loss_style_is_total():
    for scale in (_HEAT, HEAT_BG):
        assert loss_style(math.nan, scale) == loss_style(math.inf, scale) == scale[-1][1]
        assert loss_style(-math.inf, scale) == scale[0][1]
