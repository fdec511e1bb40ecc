"""Per-token math on logits: the figures of each scored row, the non-finite check and its error, the loss.

The loss is the one a causal-LM training step computes: the logits at position ``t`` predict the
token at ``t + 1`` (shift by one), positions whose label is ``ignore_index`` contribute nothing, and
``mean`` is the token-level mean over scored targets, as ``torch.nn.CrossEntropyLoss`` returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import NonFiniteError
from ce_inspect.scoring.options import check_reduction
from ce_inspect.text import Encoded, decode_tokens

if TYPE_CHECKING:
    import torch


def token_figures(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    top_k: int = 0,
    entropy: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-row figures for ``logits`` [n, vocab] (any dtype) and class-index ``targets`` [n].

    The log-softmax runs in float32 whatever the model's dtype. With label smoothing ε the loss is
    ``(1-ε)·(-log p_target) + ε·mean_j(-log p_j)``, which is what CrossEntropyLoss computes. ``entropy``
    adds ``-sum_j p_j log p_j`` of each row (nats; a probability of 0 contributes 0), on the chunk's rows only.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # [n, vocab]
    target_logp = logp.gather(1, targets[:, None]).squeeze(1)  # [n]
    loss = -target_logp
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp.mean(dim=-1)
    # [n]; ties count in the target's favour. An int32 sum is twice as fast as the default int64 on CPU.
    rank = (logp > target_logp[:, None]).sum(dim=-1, dtype=torch.int32) + 1
    top_logp, top_ids = logp.topk(max(top_k, 1), dim=-1)  # [n, k]
    figures = {"logprob": target_logp, "loss": loss, "rank": rank, "top_logp": top_logp, "top_ids": top_ids}
    if entropy:
        p_logp = logp.exp() * logp  # [n, vocab]; 0 * -inf is NaN where a logit is -inf: that term is 0
        figures["entropy"] = -torch.where(torch.isneginf(logp), 0.0, p_logp).sum(dim=-1)  # [n]
    return figures


def nonfinite_row(
    logits: torch.Tensor, targets: torch.Tensor, figures: dict[str, torch.Tensor]
) -> tuple[int, str] | None:
    """The first row of ``logits`` [n, vocab] whose ``token_figures`` are not all finite, and why; None if none.

    One NaN or +inf logit anywhere in a row makes the row's whole log-softmax NaN, so the target's
    log-probability and loss catch it without another pass over the vocabulary. A -inf logit is a
    probability of 0, which is legitimate (models mask padded vocabulary entries that way) unless it is
    the target's, or label smoothing averages it into the loss. Top-k probabilities and ranks are finite
    whenever the target's log-probability is.
    """
    import torch

    ok = torch.isfinite(figures["logprob"]) & torch.isfinite(figures["loss"])  # [n]
    if bool(ok.all()):
        return None
    i = int((~ok).nonzero()[0, 0])
    row = logits[i]  # [vocab]
    if bool(torch.isnan(row).any()):
        return i, "nan"
    if bool(torch.isposinf(row).any()):
        return i, "+inf"
    if bool(torch.isneginf(row[targets[i]])):
        return i, "zero"
    if bool(torch.isneginf(row).any()) and bool(torch.isfinite(figures["logprob"][i])):
        return i, "smoothing"
    return i, "overflow"  # finite logits so far apart that float32's log-softmax overflows


def nonfinite_error(
    tokenizer: Any,
    examples: Sequence[Encoded],
    row: int,
    why: str,
    *,
    target: int,
    dtype: str,
    label_smoothing: float,
    whose: str = "the model",
    dtype_param: str = "dtype",
) -> NonFiniteError:
    """The one error for a scored token whose figures are not finite: ``row`` counts the scored targets of
    ``examples`` in order, ``why`` is what ``nonfinite_row`` found, ``whose`` names the model."""
    example = examples[0]
    for example in examples:
        if row < len(example.scored_positions):
            break
        row -= len(example.scored_positions)
    (text,) = decode_tokens(tokenizer, [target])
    where = f"scored token {row + 1} of {len(example.scored_positions)} (target {text!r})"
    if why in ("kl", "kl_reverse"):
        p, q = ("reference", "candidate") if why == "kl" else ("candidate", "reference")
        message = (
            f"{'KL(ref‖cand)' if why == 'kl' else 'KL(cand‖ref)'} is infinite at {where}: the {q} model gives "
            f"probability 0 (a logit of -inf) to a token the {p} model does not"
        )
    elif why == "zero":
        message = f"{whose} gives {where} probability 0 (its logit is -inf), so its loss is infinite"
    elif why == "smoothing":
        message = (
            f"with `label_smoothing` {label_smoothing:g} the loss of {where} is infinite: {whose} gives some "
            "vocabulary entries a logit of -inf (probability 0), and label smoothing averages -log p over every "
            "entry, as CrossEntropyLoss does"
        )
    else:
        cause = f"its weights hold NaN or inf, or its computation overflows {dtype}"
        if dtype == "float16":
            cause += f" (try `{dtype_param}` bfloat16 or float32)"
        elif dtype != "float32":
            cause += f" (try `{dtype_param}` float32)"
        if why in ("nan", "+inf"):
            message = f"{whose}'s logits are not finite ({'NaN' if why == 'nan' else why}) at {where}: {cause}"
        else:
            message = f"{whose}'s logits at {where} are too far apart for a float32 log-softmax: {cause}"
    return NonFiniteError(message, example=example, scored=row, why=why, target=target)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.CrossEntropyLoss`` on [N, vocab] logits and [N] labels, computed by ce-inspect's own code.

    This is the reduction the tool reports; tests hold it to torch's implementation.
    """
    import torch

    check_reduction(reduction)
    keep = labels != ignore_index  # [N]
    losses = token_figures(logits[keep], labels[keep], label_smoothing=label_smoothing)["loss"]
    if reduction == "none":
        out = torch.zeros(labels.shape, dtype=losses.dtype, device=losses.device)
        out[keep] = losses
        return out
    total = losses.sum()
    return total if reduction == "sum" else total / keep.sum()
