"""Two models on the same tokens: the library's entry points (``diff``, ``diff_messages``), the same-tokens check,
and the two forward passes compared row by row."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ce_inspect.diff.figures import DiffResult, DiffSummary, TokenDiff
from ce_inspect.errors import InputError
from ce_inspect.model import check_model_unchanged
from ce_inspect.scoring import (
    ScoreOptions,
    build_results,
    nonfinite_error,
    nonfinite_row,
    scorer_for,
    token_figures,
)
from ce_inspect.text import Encoded, Layout, decode_tokens, encode, encode_messages

if TYPE_CHECKING:
    import torch

    from ce_inspect.model import LoadedModel

log = logging.getLogger("ce_inspect")


# --- the library's entry points -------------------------------------------------------------------------


def diff(
    lm_ref: LoadedModel | Callable[[], LoadedModel],
    lm_cand: LoadedModel | Callable[[], LoadedModel],
    prompt: str,
    answer: str,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
) -> DiffResult:
    """Compare the candidate model with the reference on one prompt/answer pair, each side laid out with its
    own tokenizer. Give a model as a zero-argument loader (``lambda: load(...)``) to run sequentially: the
    reference is released before the candidate loads (keep no reference to it yourself)."""
    layout = layout or Layout()

    def build(lm: LoadedModel) -> Encoded:
        return encode(lm.tokenizer, prompt, answer, layout, max_length=lm.context_length)

    return diff_examples(lm_ref, lm_cand, [build], options)[0]


def diff_messages(
    lm_ref: LoadedModel | Callable[[], LoadedModel],
    lm_cand: LoadedModel | Callable[[], LoadedModel],
    messages: Sequence[dict[str, Any]] | dict[str, Any],
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    last_turn: bool = False,
) -> DiffResult:
    """``diff`` on a conversation: each side renders it with its own chat template."""
    layout = layout or Layout()

    def build(lm: LoadedModel) -> Encoded:
        return encode_messages(lm.tokenizer, messages, layout, max_length=lm.context_length, last_turn=last_turn)

    return diff_examples(lm_ref, lm_cand, [build], options)[0]


def diff_examples(
    lm_ref: LoadedModel | Callable[[], LoadedModel],
    lm_cand: LoadedModel | Callable[[], LoadedModel],
    builders: Sequence[Callable[[LoadedModel], Encoded]],
    options: ScoreOptions | None = None,
) -> list[DiffResult]:
    """Compare the two models on examples that each side encodes with ``builder(lm)``, one forward pass
    per model for all of them (padded on the right)."""
    options = options or ScoreOptions()
    if not builders:
        return []
    if callable(lm_ref) and not _is_loaded(lm_ref):
        ref_lm = lm_ref()
        ref_examples = [b(ref_lm) for b in builders]
        ref = _Side.run(ref_lm, ref_examples, options, keep_model=False)
        del ref_lm
        _release()
        cand_lm = _resolve(lm_cand)
        cand_examples = [b(cand_lm) for b in builders]
        for i, (a, b) in enumerate(zip(ref_examples, cand_examples)):
            check_same_tokens(a, b, ref.lm.tokenizer, cand_lm.tokenizer, example=i if len(builders) > 1 else None)
    else:
        ref_lm = _resolve(lm_ref)
        cand_lm = _resolve(lm_cand)
        ref_examples = [b(ref_lm) for b in builders]
        cand_examples = [b(cand_lm) for b in builders]
        for i, (a, b) in enumerate(zip(ref_examples, cand_examples)):
            check_same_tokens(a, b, ref_lm.tokenizer, cand_lm.tokenizer, example=i if len(builders) > 1 else None)
        ref = _Side.run(ref_lm, ref_examples, options)
    cand = _Side.run(cand_lm, cand_examples, options)
    return compare(ref, cand, options)


def _is_loaded(source: Any) -> bool:
    return hasattr(source, "model") and hasattr(source, "tokenizer")


def _resolve(source: LoadedModel | Callable[[], LoadedModel]) -> LoadedModel:
    return source if _is_loaded(source) else source()  # type: ignore[operator]


def _release() -> None:
    """Return the memory of a model nothing refers to any more (and its cached CUDA blocks)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing is best effort; the figures do not depend on it
        pass


# --- same tokens or a refusal ---------------------------------------------------------------------------


def check_same_tokens(
    ref: Encoded, cand: Encoded, ref_tokenizer: Any, cand_tokenizer: Any, *, example: int | None = None
) -> None:
    """Refuse unless both sides laid out the same token ids with the same positions scored, and the same
    target (label) at each."""
    where = "" if example is None else f"example {example + 1}: "
    a, b = list(ref.input_ids), list(cand.input_ids)
    if a == b:
        if list(ref.scored_positions) != list(cand.scored_positions):
            raise InputError(
                f"{where}the two models' layouts score different positions of the same tokens "
                "(their chat templates or special tokens differ); diff compares the same scored tokens only"
            )
        if [ref.labels[p] for p in ref.scored_positions] != [cand.labels[p] for p in cand.scored_positions]:
            raise InputError(
                f"{where}the two models' layouts train other labels at the same scored positions; diff compares "
                "the same scored tokens only"
            )
        return
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    shown_a = _shown(ref_tokenizer, a[at : at + 3])
    shown_b = _shown(cand_tokenizer, b[at : at + 3])
    raise InputError(
        f"{where}the two models' tokenizers give different tokens from token {at} on: reference {shown_a} "
        f"vs candidate {shown_b} ({len(a)} vs {len(b)} tokens); diff compares the same tokens only"
    )


def _shown(tokenizer: Any, ids: list[int]) -> str:
    if not ids:
        return "(end of sequence)"
    texts = decode_tokens(tokenizer, ids)
    return "[" + ", ".join(f"{t!r} (id {i})" for t, i in zip(texts, ids)) + "]"


# --- the two passes and the comparison -------------------------------------------------------------------


@dataclass
class _Side:
    """What the comparison needs from one model: its scored rows, and how to describe it."""

    lm: LoadedModel  # with ``model`` set to None once the pass is done in sequential mode
    examples: list[Encoded]
    targets: list[int]  # each scored target's id, as ``scoring.pack`` gives it (the label)
    selected: Any  # the scored rows by row: the scorer's ``ScoredLogits`` (a slice is its logits), or logits
    head: Callable[[Any], Any]  # a slice of ``selected`` -> its logits [rows, vocab]
    rows: int
    vocab: int
    model_losses: list[float | None]

    @classmethod
    def run(cls, lm: LoadedModel, examples: list[Encoded], options: ScoreOptions, keep_model: bool = True) -> _Side:
        """One forward pass through the scorer contract, ``batch``'s packer laying the examples out: the same
        targets (labels) at the same positions. The scored rows keep the output head, not the model's body."""
        scorer = scorer_for(lm)
        scored = scorer.scored_logits(examples, options)
        vocab = scored.vocab
        losses = scorer.own_losses(examples) if options.verify else [None] * len(examples)
        kept = lm if keep_model else dataclasses.replace(lm, model=None)
        return cls(kept, scored.examples, scored.targets, scored, _as_logits, scored.rows, vocab, list(losses))


def _as_logits(rows: Any) -> Any:
    return rows  # a slice of a ``ScoredLogits`` is already its logits


def compare(ref: _Side, cand: _Side, options: ScoreOptions) -> list[DiffResult]:
    """Project both sides' scored rows chunk by chunk and compute every per-token figure of both and between."""
    import torch

    shared = min(ref.vocab, cand.vocab)
    targets = ref.targets  # == cand.targets: ``check_same_tokens`` compared the labels
    if max(targets) >= shared:
        raise InputError(f"a scored token id ({max(targets)}) is outside the shared vocabulary of {shared} ids")
    # Both sides' logits, their log-softmax and the KL terms are live at once: about twice what `run` holds.
    rows = options.chunk_tokens or max(1, min(ref.rows, cand.rows) // 2)
    target_tensor = torch.tensor(targets)
    parts: dict[str, dict[str, list[torch.Tensor]]] = {"ref": {}, "cand": {}, "pair": {}}
    with torch.inference_mode():
        for start in range(0, len(targets), rows):
            ref_logits = ref.head(ref.selected[start : start + rows]).float()  # [rows, vocab_ref]
            cand_logits = cand.head(cand.selected[start : start + rows]).float().to(ref_logits.device)
            chunk_targets = target_tensor[start : start + rows].to(ref_logits.device)
            for name, logits in (("ref", ref_logits), ("cand", cand_logits)):
                figures = token_figures(
                    logits, chunk_targets, label_smoothing=options.label_smoothing, top_k=options.top_k
                )
                bad = nonfinite_row(logits, chunk_targets, figures)
                if bad is not None:
                    raise _nonfinite(ref if name == "ref" else cand, name, start + bad[0], bad[1], targets, options)
                for key, value in figures.items():
                    parts[name].setdefault(key, []).append(value.cpu())
            pair = _pair_figures(ref_logits[:, :shared], cand_logits[:, :shared])
            for key in ("kl", "kl_reverse"):
                bad = (~torch.isfinite(pair[key])).nonzero()  # [n_bad, 1]
                if bad.numel():
                    raise _nonfinite(ref, "ref", start + int(bad[0, 0]), key, targets, options)
            for key, value in pair.items():
                parts["pair"].setdefault(key, []).append(value.cpu())
            del ref_logits, cand_logits
    for side in (ref, cand):  # both passes and the heads above read the weights from their files
        check_model_unchanged(side.lm)
    figures = {side: {k: torch.cat(v).tolist() for k, v in p.items()} for side, p in parts.items()}
    figures["ref"]["target"] = targets
    figures["cand"]["target"] = targets
    return _diff_results(ref, cand, figures, options, shared)


def _nonfinite(side: _Side, name: str, row: int, why: str, targets: list[int], options: ScoreOptions) -> Exception:
    return nonfinite_error(
        side.lm.tokenizer,
        side.examples,
        row,
        why,
        target=targets[row],
        dtype=side.lm.dtype,
        label_smoothing=options.label_smoothing,
        whose="the reference model" if name == "ref" else "the candidate model",
        dtype_param="dtype" if name == "ref" else "dtype_b",
    )


def _pair_figures(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """KL both ways and top-1 agreement of two [rows, vocab] float32 logit blocks over the same ids."""
    import torch

    ref_logp = torch.log_softmax(ref_logits, dim=-1)  # [rows, vocab]
    cand_logp = torch.log_softmax(cand_logits, dim=-1)  # [rows, vocab]
    diff = ref_logp - cand_logp  # [rows, vocab]
    # p·(log p − log q) with p = 0 contributing 0, as kl_div defines it. Where p is 0 because its logit is -inf
    # (a masked vocabulary entry) the product is 0·inf or 0·NaN (-inf − -inf): NaN, set to 0. No other term
    # can be NaN: ``compare`` refused rows with a NaN or +inf logit, so where p > 0, log p is finite and log q
    # finite or -inf.
    kl = (ref_logp.exp() * diff).nan_to_num_(0.0, math.inf, -math.inf).sum(dim=-1)  # [rows]
    kl_reverse = (cand_logp.exp() * -diff).nan_to_num_(0.0, math.inf, -math.inf).sum(dim=-1)  # [rows]
    # Probability 0 for every shared id: a log-softmax of NaN throughout, and no KL over those ids.
    undefined = ref_logp[:, 0].isnan() | cand_logp[:, 0].isnan()  # [rows]
    kl, kl_reverse = kl.masked_fill(undefined, math.nan), kl_reverse.masked_fill(undefined, math.nan)
    same = ref_logp.argmax(dim=-1) == cand_logp.argmax(dim=-1)  # [rows]
    return {"kl": kl, "kl_reverse": kl_reverse, "same_top1": same}


def _diff_results(
    ref: _Side, cand: _Side, figures: dict[str, dict[str, list[Any]]], options: ScoreOptions, shared: int
) -> list[DiffResult]:
    ref_results = build_results(ref.lm, ref.examples, figures["ref"], ref.model_losses, options)
    cand_results = build_results(cand.lm, cand.examples, figures["cand"], cand.model_losses, options)
    notes: list[str] = []
    if ref.vocab != cand.vocab:
        notes.append(
            f"the models' vocabularies differ in size ({ref.vocab} vs {cand.vocab}, padded embeddings): KL and "
            f"top-1 agreement are over the {shared} shared ids, each side's distribution renormalised over them"
        )
        log.warning("Note: %s.", notes[-1])
    out = []
    cursor = 0
    pair = figures["pair"]
    for r, c in zip(ref_results, cand_results):
        tokens = []
        for a, b in zip(r.tokens, c.tokens):
            tokens.append(
                TokenDiff(
                    index=a.index,
                    token_id=a.token_id,
                    token=a.token,
                    segment=a.segment,
                    ref=a,
                    cand=b,
                    kl=pair["kl"][cursor],
                    kl_reverse=pair["kl_reverse"][cursor],
                    same_top1=bool(pair["same_top1"][cursor]),
                )
            )
            cursor += 1
        example_notes = tuple(dict.fromkeys([*r.notes, *c.notes, *notes]))
        out.append(
            DiffResult(r, c, tuple(tokens), DiffSummary.of([t.figures() for t in tokens], shared), example_notes)
        )
    return out


def diff_encoded(
    ref_lm: LoadedModel, cand_lm: LoadedModel, examples: Sequence[Encoded], options: ScoreOptions | None = None
) -> list[DiffResult]:
    """Compare two loaded models on examples already checked to lay out the same tokens on both sides
    (``record_encoder`` checks them), one padded forward pass per model."""
    options = options or ScoreOptions()
    if not examples:
        return []
    ref = _Side.run(ref_lm, list(examples), options)
    cand = _Side.run(cand_lm, list(examples), options)
    return compare(ref, cand, options)
