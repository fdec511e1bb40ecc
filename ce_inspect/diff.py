"""Two models on the same tokens: per-token ΔNLL, KL divergence and top-1 agreement, with llama.cpp's statistics.

Each side lays the example out with its own tokenizer; the comparison goes on only when both give the
same tokens and the same scored positions. Each model runs its body once (``scoring.scored_rows``) and
its head only at the scored positions, ``rows`` at a time, so no (sequence x vocabulary) tensor exists
for either model. Every figure is computed in float32; sums and statistics in float64.

Sequential mode (each model given as a zero-argument loader): the reference's body runs, only its scored
rows and its output head are kept, the reference is released, and then the candidate loads. The same
comparison code runs on the same tensors, so the figures are the same as with both models loaded.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

from .encoding import Encoded, Layout, decode_tokens, encode, encode_messages
from .errors import InputError
from .loading import check_model_unchanged
from .result import (
    BatchingDict,
    LayoutDict,
    ResultDict,
    ScoreResult,
    SkippedDict,
    SummaryDict,
    TokenDict,
    TurnDict,
    dumps,
)
from .scoring import (
    ScoreOptions,
    build_results,
    nonfinite_error,
    nonfinite_row,
    own_losses,
    pack,
    scored_rows,
    token_figures,
)

if TYPE_CHECKING:
    import torch

    from .job import Job
    from .loading import LoadedModel

log = logging.getLogger("ce_inspect")

DIFF_SCHEMA_VERSION = 1
#: The KL quantiles llama.cpp's ``--kl-divergence`` prints, as (JSON key suffix, fraction).
KL_QUANTILES = (
    ("p999", 0.999),
    ("p99", 0.99),
    ("p95", 0.95),
    ("p90", 0.90),
    ("median", 0.5),
    ("p10", 0.10),
    ("p05", 0.05),
    ("p01", 0.01),
    ("p001", 0.001),
)
COLOR_BY = ("kl", "dnll")


# --- wire format ----------------------------------------------------------------------------------------


class TokenDiffDict(TypedDict):
    index: int
    token_id: int
    token: str
    segment: str
    ref: TokenDict  # the reference's figures for this token, keys as in `run`
    cand: TokenDict  # the candidate's
    kl: float  # KL(ref ‖ cand) of the next-token distributions, nats
    kl_reverse: float  # KL(cand ‖ ref)
    dnll: float  # candidate NLL − reference NLL of the target
    dp: float  # candidate p(target) − reference p(target)
    same_top1: bool  # both models' most likely token is the same


class DiffSummaryDict(TypedDict):
    count: int
    ref_loss_mean: float
    cand_loss_mean: float
    ref_nll_mean: float
    cand_nll_mean: float
    dnll_mean: float
    dnll_se: float | None
    kl_mean: float
    kl_se: float | None
    kl_max: float
    kl_p999: float
    kl_p99: float
    kl_p95: float
    kl_p90: float
    kl_median: float
    kl_p10: float
    kl_p05: float
    kl_p01: float
    kl_p001: float
    kl_min: float
    kl_reverse_mean: float
    kl_reverse_se: float | None
    dp_mean: float
    dp_rms: float
    dp_rms_se: float | None
    same_top1: int
    same_top1_pct: float
    same_top1_se_pct: float | None
    shared_vocab: int


class DiffSideDict(TypedDict):
    model: str
    device: str
    dtype: str
    summary: SummaryDict  # `run`'s summary of this side
    turns: list[TurnDict]  # `run`'s per-turn figures of this side


class DiffDict(TypedDict):
    schema_version: int
    kind: Literal["diff"]
    reference: DiffSideDict
    candidate: DiffSideDict
    layout: LayoutDict
    tokens: list[TokenDiffDict]
    summary: DiffSummaryDict
    notes: list[str]


class DiffLineDict(DiffDict):
    """One line of ``diff --input``: the pair's document plus the record's id and input line."""

    id: str | int | None
    line: int
    # ``batch.line_settings`` of the reference, plus the candidate's ``model_b``, ``model_b_fingerprint`` and
    # ``dtype_b``: ``--resume`` refuses to mix lines whose settings differ.
    settings: dict[str, Any]


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenDiff:
    """One scored target under both models; ``ref`` and ``cand`` are what ``run`` reports for it."""

    index: int
    token_id: int
    token: str
    segment: str
    ref: Any  # TokenScore
    cand: Any  # TokenScore
    kl: float
    kl_reverse: float
    same_top1: bool

    @property
    def dnll(self) -> float:
        return self.ref.logprob - self.cand.logprob

    @property
    def dp(self) -> float:
        return self.cand.prob - self.ref.prob

    def figures(self) -> TokenFigures:
        return TokenFigures(
            self.kl,
            self.kl_reverse,
            self.dnll,
            self.dp,
            self.same_top1,
            self.ref.loss,
            self.cand.loss,
            -self.ref.logprob,
            -self.cand.logprob,
        )

    def to_dict(self) -> TokenDiffDict:
        return {
            "index": self.index,
            "token_id": self.token_id,
            "token": self.token,
            "segment": self.segment,
            "ref": self.ref.to_dict(),
            "cand": self.cand.to_dict(),
            "kl": self.kl,
            "kl_reverse": self.kl_reverse,
            "dnll": self.dnll,
            "dp": self.dp,
            "same_top1": self.same_top1,
        }


class TokenFigures(NamedTuple):
    """The per-token numbers a summary needs (a data set keeps these, not whole results)."""

    kl: float
    kl_reverse: float
    dnll: float
    dp: float
    same_top1: bool
    ref_loss: float
    cand_loss: float
    ref_nll: float
    cand_nll: float


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error as llama.cpp computes them: sqrt((E[x²] − E[x]²) / (n − 1)).

    llama.cpp prints 0 for the error below 11 values; here it is the same formula from 2 values, None for 1.
    """
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum(v * v for v in values) / n - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 else 0.0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks at ``fraction * (n - 1)`` (llama.cpp's and numpy's default)."""
    if fraction <= 0:
        return ordered[0]
    if fraction >= 1:
        return ordered[-1]
    at = fraction * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return (1 - (at - low)) * ordered[low] + (at - low) * ordered[high]


@dataclass(frozen=True)
class DiffSummary:
    count: int
    ref_loss_mean: float
    cand_loss_mean: float
    ref_nll_mean: float
    cand_nll_mean: float
    dnll_mean: float
    dnll_se: float | None
    kl_mean: float
    kl_se: float | None
    kl_quantiles: dict[str, float]  # "max", "p999", ..., "median", ..., "min"
    kl_reverse_mean: float
    kl_reverse_se: float | None
    dp_mean: float
    dp_rms: float
    dp_rms_se: float | None
    same_top1: int
    same_top1_pct: float
    same_top1_se_pct: float | None
    shared_vocab: int

    @classmethod
    def of(cls, tokens: Sequence[TokenFigures], shared_vocab: int) -> DiffSummary:
        """The summary of ``tokens`` (one example or a whole data set, token-weighted)."""
        n = len(tokens)
        kl = [t.kl for t in tokens]
        ordered = sorted(kl)
        quantiles = {"max": ordered[-1], **{k: percentile(ordered, f) for k, f in KL_QUANTILES}, "min": ordered[0]}
        quantiles["median"] = _median(ordered)
        kl_mean, kl_se = mean_se(kl)
        kl_rev_mean, kl_rev_se = mean_se([t.kl_reverse for t in tokens])
        dnll_mean, dnll_se = mean_se([t.dnll for t in tokens])
        dp = [t.dp for t in tokens]
        dp2 = [d * d for d in dp]
        mse, mse_se = mean_se(dp2)
        rms = math.sqrt(mse)
        # d sqrt(x) = dx / (2 sqrt(x)): llama.cpp's error of the RMS from the error of the mean square.
        rms_se = None if mse_se is None else (0.5 / rms * mse_se if rms > 0 else 0.0)
        same = sum(t.same_top1 for t in tokens)
        p = same / n
        same_se = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None
        return cls(
            count=n,
            ref_loss_mean=math.fsum(t.ref_loss for t in tokens) / n,
            cand_loss_mean=math.fsum(t.cand_loss for t in tokens) / n,
            ref_nll_mean=math.fsum(t.ref_nll for t in tokens) / n,
            cand_nll_mean=math.fsum(t.cand_nll for t in tokens) / n,
            dnll_mean=dnll_mean,
            dnll_se=dnll_se,
            kl_mean=kl_mean,
            kl_se=kl_se,
            kl_quantiles=quantiles,
            kl_reverse_mean=kl_rev_mean,
            kl_reverse_se=kl_rev_se,
            dp_mean=math.fsum(dp) / n,
            dp_rms=rms,
            dp_rms_se=rms_se,
            same_top1=same,
            same_top1_pct=100.0 * p,
            same_top1_se_pct=None if same_se is None else 100.0 * same_se,
            shared_vocab=shared_vocab,
        )

    def to_dict(self) -> DiffSummaryDict:
        q = self.kl_quantiles
        return {
            "count": self.count,
            "ref_loss_mean": self.ref_loss_mean,
            "cand_loss_mean": self.cand_loss_mean,
            "ref_nll_mean": self.ref_nll_mean,
            "cand_nll_mean": self.cand_nll_mean,
            "dnll_mean": self.dnll_mean,
            "dnll_se": self.dnll_se,
            "kl_mean": self.kl_mean,
            "kl_se": self.kl_se,
            "kl_max": q["max"],
            "kl_p999": q["p999"],
            "kl_p99": q["p99"],
            "kl_p95": q["p95"],
            "kl_p90": q["p90"],
            "kl_median": q["median"],
            "kl_p10": q["p10"],
            "kl_p05": q["p05"],
            "kl_p01": q["p01"],
            "kl_p001": q["p001"],
            "kl_min": q["min"],
            "kl_reverse_mean": self.kl_reverse_mean,
            "kl_reverse_se": self.kl_reverse_se,
            "dp_mean": self.dp_mean,
            "dp_rms": self.dp_rms,
            "dp_rms_se": self.dp_rms_se,
            "same_top1": self.same_top1,
            "same_top1_pct": self.same_top1_pct,
            "same_top1_se_pct": self.same_top1_se_pct,
            "shared_vocab": self.shared_vocab,
        }


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _side_dict(result: ScoreResult) -> DiffSideDict:
    d: ResultDict = result.to_dict()
    return {
        "model": result.model,
        "device": result.device,
        "dtype": result.dtype,
        "summary": d["summary"],
        "turns": d["turns"],
    }


@dataclass(frozen=True)
class DiffResult:
    """One example under two models: each side's ``run`` result, the per-token comparison and its summary."""

    reference: ScoreResult
    candidate: ScoreResult
    tokens: tuple[TokenDiff, ...]
    summary: DiffSummary
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> DiffDict:
        return {
            "schema_version": DIFF_SCHEMA_VERSION,
            "kind": "diff",
            "reference": _side_dict(self.reference),
            "candidate": _side_dict(self.candidate),
            "layout": dict(self.reference.layout),
            "tokens": [t.to_dict() for t in self.tokens],
            "summary": self.summary.to_dict(),
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)


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
    """What the comparison needs from one model: its scored rows and head, and how to describe it."""

    lm: LoadedModel  # with ``model`` set to None once the pass is done in sequential mode
    examples: list[Encoded]
    targets: list[int]  # each scored target's id, as ``scoring.pack`` gives it (the label)
    selected: Any  # [n_scored, hidden] or [n_scored, vocab]
    head: Callable[[Any], Any]
    rows: int
    vocab: int
    model_losses: list[float | None]

    @classmethod
    def run(cls, lm: LoadedModel, examples: list[Encoded], options: ScoreOptions, keep_model: bool = True) -> _Side:
        import torch

        packed = pack(lm, examples)  # `batch`'s packer: the same targets (labels) at the same positions
        with torch.inference_mode():
            selected, head, rows = scored_rows(
                lm, packed.input_ids, packed.attention, packed.position_ids, packed.rows_b, packed.rows_t, options
            )
            vocab = int(head(selected[:1]).shape[-1])
            losses = own_losses(lm, examples) if options.verify else [None] * len(examples)
        kept = lm if keep_model else dataclasses.replace(lm, model=None)
        return cls(kept, examples, packed.targets, selected, head, rows, vocab, list(losses))


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


# --- data sets: `batch`'s runner with a two-model score function and this report --------------------------


def diff_job(ref: LoadedModel, cand: LoadedModel, options: ScoreOptions, worst: int) -> Job:
    """``diff --input``'s job for the one runner: both models on the same tokens, one line of KL, ΔNLL and top-1
    agreement per example, the lines read back for ``resume`` and the torchrun merge."""
    from .job import Job

    return Job(
        command="diff",
        make_report=lambda scan: DiffReport(ref, cand, scan, worst, options),
        score=lambda examples: diff_encoded(ref, cand, examples, options),
        parse=diff_line_stats,
        counts_resumed=False,  # diff's summary has no count of resumed examples
    )


def record_encoder(ref_lm: LoadedModel, cand_lm: LoadedModel, layout: Layout) -> Callable[[Any], Encoded]:
    """Record -> the reference's example, after checking the candidate's tokenizer lays out the same tokens
    (a record where they differ is an invalid record: it stops the run, or is skipped with --skip-invalid).
    Every record is encoded as ``batch`` encodes it, whole: diff scores no windows."""
    from .data import encode_whole

    def encoder(record: Any) -> Encoded:
        ref = encode_whole(ref_lm, record, layout, "diff")
        if cand_lm.tokenizer is not ref_lm.tokenizer:
            cand = encode_whole(cand_lm, record, layout, "diff")
            check_same_tokens(ref, cand, ref_lm.tokenizer, cand_lm.tokenizer)
        return ref

    return encoder


class DiffModelDict(TypedDict):
    model: str
    device: str
    dtype: str


class WorstExampleDict(TypedDict):
    line: int
    id: str | int | None
    count: int
    kl_mean: float
    dnll_mean: float
    same_top1_pct: float


class DiffDatasetDict(TypedDict):
    schema_version: int
    kind: Literal["diff_summary"]
    reference: DiffModelDict
    candidate: DiffModelDict
    input: str
    output: str | None
    examples: int
    skipped_count: int
    skipped: list[SkippedDict]
    summary: DiffSummaryDict | None  # token-weighted over every scored token of the data set; null: none scored
    worst_by_kl: list[WorstExampleDict]
    worst_by_dnll: list[WorstExampleDict]
    batching: BatchingDict
    notes: list[str]


@dataclass(frozen=True)
class DiffDatasetSummary:
    reference: dict[str, str]
    candidate: dict[str, str]
    input: str
    output: str | None
    examples: int
    skipped: tuple[Any, ...]
    summary: DiffSummary | None  # None when no example was scored
    worst_by_kl: tuple[WorstExampleDict, ...]
    worst_by_dnll: tuple[WorstExampleDict, ...]
    batching: Any  # batch.BatchStats
    notes: tuple[str, ...] = ()

    def to_dict(self) -> DiffDatasetDict:
        return {
            "schema_version": DIFF_SCHEMA_VERSION,
            "kind": "diff_summary",
            "reference": dict(self.reference),
            "candidate": dict(self.candidate),
            "input": self.input,
            "output": self.output,
            "examples": self.examples,
            "skipped_count": len(self.skipped),
            "skipped": [s.to_dict() for s in self.skipped],
            "summary": self.summary.to_dict() if self.summary is not None else None,
            "worst_by_kl": list(self.worst_by_kl),
            "worst_by_dnll": list(self.worst_by_dnll),
            "batching": self.batching.to_dict(),
            "notes": list(self.notes),
        }


class DiffReport:
    """``run_scan``'s report for ``diff``: each example's diff document as its line, then the data-set
    summary (token-weighted statistics over every scored token, and the worst examples by KL and ΔNLL)."""

    def __init__(
        self, ref_lm: LoadedModel, cand_lm: LoadedModel, scan: Any, worst: int, options: ScoreOptions | None = None
    ) -> None:
        from .batch import check_resume_settings

        self.written = diff_line_settings(ref_lm, cand_lm, scan.layout, options or ScoreOptions(), scan.fields)
        if scan.resume is not None:  # before any line is written: a changed model or option changes nothing
            check_resume_settings(scan.resume, self.written)
        self.ref = {"model": ref_lm.name, "device": ref_lm.device, "dtype": ref_lm.dtype}
        self.cand = {"model": cand_lm.name, "device": cand_lm.device, "dtype": cand_lm.dtype}
        self.scan, self.worst = scan, worst
        self.tokens: list[TokenFigures] = []
        self.examples: list[WorstExampleDict] = []
        self.skipped: list[Any] = []
        self.notes: dict[str, None] = {}
        self.shared_vocab = 0

    def line(self, entry: Any, result: DiffResult) -> DiffLineDict:
        d: dict[str, Any] = dict(result.to_dict())
        line = {"schema_version": d.pop("schema_version"), "id": entry.id, "line": entry.line, **d}
        return {**line, "settings": self.written}  # type: ignore[typeddict-item]

    def add(self, entry: Any, result: DiffResult) -> None:
        s = result.summary
        example = _worst_entry(entry.line, entry.id, s.count, s.kl_mean, s.dnll_mean, s.same_top1_pct)
        self._add(ResumedDiff([t.figures() for t in result.tokens], example, s.shared_vocab, result.notes))

    def resumed(self, entry: Any) -> None:
        self._add(entry.done.payload)  # read back from the line by ``diff_line_stats``

    def _add(self, figures: ResumedDiff) -> None:
        self.tokens.extend(figures.tokens)
        self.shared_vocab = figures.shared_vocab
        self.notes.update((n, None) for n in figures.notes if "vocabularies differ" in n)
        self.examples.append(figures.example)

    def skip(self, skipped: Any) -> None:
        self.skipped.append(skipped)

    def finish(self, *, output: str | None, batching: Any) -> DiffDatasetSummary:
        def worst(key: str) -> tuple[WorstExampleDict, ...]:
            return tuple(sorted(self.examples, key=lambda e: (-e[key], e["line"]))[: self.worst])  # type: ignore[literal-required]

        return DiffDatasetSummary(
            reference=self.ref,
            candidate=self.cand,
            input=self.scan.name,
            output=output,
            examples=len(self.examples),
            skipped=tuple(self.skipped),
            summary=DiffSummary.of(self.tokens, self.shared_vocab) if self.tokens else None,
            worst_by_kl=worst("kl_mean"),
            worst_by_dnll=worst("dnll_mean"),
            batching=batching,
            notes=tuple(self.notes),
        )


def _worst_entry(
    line: int, rid: str | int | None, count: int, kl_mean: float, dnll_mean: float, same_top1_pct: float
) -> WorstExampleDict:
    return {
        "line": line,
        "id": rid,
        "count": count,
        "kl_mean": kl_mean,
        "dnll_mean": dnll_mean,
        "same_top1_pct": same_top1_pct,
    }


# --- resume: a diff line read back into what the data-set summary needs -----------------------------------


@dataclass(frozen=True)
class ResumedDiff:
    """What ``DiffReport`` sums of one example: every token's figures (the data-set statistics are
    token-weighted, quantiles included), its worst-example entry, the shared vocabulary and the notes."""

    tokens: Sequence[TokenFigures]
    example: WorstExampleDict
    shared_vocab: int
    notes: Sequence[str]


def diff_line_settings(
    ref_lm: LoadedModel, cand_lm: LoadedModel, layout: Layout, options: ScoreOptions, fields: Any = None
) -> dict[str, Any]:
    """``batch.line_settings`` of the reference (model, fingerprint, dtype, every layout and scoring option,
    the record fields) plus the candidate's model, fingerprint and dtype as ``model_b``, ... ."""
    from .batch import line_settings

    settings = line_settings(ref_lm, layout, options, fields)
    cand = line_settings(cand_lm, layout, options, fields)
    return {
        **settings,
        "model_b": cand["model"],
        "model_b_fingerprint": cand["model_fingerprint"],
        "dtype_b": cand["dtype"],
    }


def diff_line_stats(obj: Any, worst: int) -> tuple[Any, list[Any]]:
    """``batch.read_resume``'s parser for ``diff --input`` lines: the line, checked key for key against
    ``DiffLineDict``, as the scan's ``ExampleStats`` (the reference's figures, the scored targets'
    fingerprint) carrying a ``ResumedDiff``. ``worst`` is unused: diff's summary keeps no worst tokens."""
    from .batch import ExampleStats, fingerprint_targets
    from .result import conform

    if not isinstance(obj, dict) or obj.get("schema_version") != DIFF_SCHEMA_VERSION or obj.get("kind") != "diff":
        raise ValueError(f"not a schema_version {DIFF_SCHEMA_VERSION} diff document")
    conform(DiffLineDict, obj)
    tokens, summary = obj["tokens"], obj["summary"]
    if obj["line"] < 1 or not tokens:
        raise ValueError("no input line number or no scored tokens")
    if summary["count"] != len(tokens):
        raise ValueError(f"summary counts {summary['count']} tokens but {len(tokens)} are listed")
    figures = [
        TokenFigures(
            t["kl"],
            t["kl_reverse"],
            t["dnll"],
            t["dp"],
            t["same_top1"],
            t["ref"]["loss"],
            t["cand"]["loss"],
            -t["ref"]["logprob"],
            -t["cand"]["logprob"],
        )
        for t in tokens
    ]
    line, rid = obj["line"], obj["id"]
    example = _worst_entry(
        line, rid, summary["count"], summary["kl_mean"], summary["dnll_mean"], summary["same_top1_pct"]
    )
    ref = obj["reference"]["summary"]
    stats = ExampleStats(
        line=line,
        id=rid,
        count=len(tokens),
        loss_sum=math.fsum(f.ref_loss for f in figures),
        mean=ref["mean"],
        nll_sum=math.fsum(f.ref_nll for f in figures),
        greedy_hits=ref["greedy_hits"],
        sequence_tokens=obj["layout"]["sequence_tokens"],
        fingerprint=fingerprint_targets([(t["index"], t["token_id"]) for t in tokens]),
        payload=ResumedDiff(figures, example, summary["shared_vocab"], obj["notes"]),
    )
    return stats, []
