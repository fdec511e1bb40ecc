"""diff's figures and documents: per-token KL, ΔNLL and top-1 agreement, the llama.cpp statistics over them,
and the JSON wire format."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from ce_inspect.contract import (
    NOT_ON_WIRE,
    ResultDict,
    ScoreResult,
    TokenScore,
    VersionsDict,
    WireObject,
    dumps,
    joined,
)
from ce_inspect.contract.diff import DIFF_SCHEMA_VERSION, DiffDict, DiffSideDict, DiffSummaryDict, TokenDiffDict
from ce_inspect.notebook import TokenFrame

if TYPE_CHECKING:
    pass


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


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenDiff(WireObject[TokenDiffDict]):
    """One scored target under both models; ``ref`` and ``cand`` are what ``run`` reports for it."""

    index: int
    token_id: int
    token: str
    segment: str
    ref: TokenScore
    cand: TokenScore
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

    # Hand-written: 11 of its keys are entries of one field, ``kl_quantiles``; derived through properties,
    # to_dict ran 1.5-1.8x slower.
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
class DiffResult(WireObject[DiffDict], TokenFrame):
    """One example under two models: each side's ``run`` result, the per-token comparison and its summary."""

    schema_version: ClassVar[int] = DIFF_SCHEMA_VERSION
    view: ClassVar[str] = "diff"
    kind: ClassVar[str] = "diff"
    #: Each side is on the wire as its DiffSideDict (model, device, dtype, summary, turns), not as run's document.
    wire_names: ClassVar[Mapping[str, str]] = {"reference": "reference_side", "candidate": "candidate_side"}

    reference: ScoreResult = field(metadata=NOT_ON_WIRE)
    candidate: ScoreResult = field(metadata=NOT_ON_WIRE)
    tokens: tuple[TokenDiff, ...]
    summary: DiffSummary
    notes: tuple[str, ...] = field(default=())

    @property
    def reference_side(self) -> DiffSideDict:
        return _side_dict(self.reference)

    @property
    def candidate_side(self) -> DiffSideDict:
        return _side_dict(self.candidate)

    @property
    def versions(self) -> VersionsDict:
        return joined(self.reference.versions, self.candidate.versions)

    @property
    def layout(self) -> dict[str, Any]:
        """The reference's layout (both sides score the same tokens)."""
        return dict(self.reference.layout)

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)
