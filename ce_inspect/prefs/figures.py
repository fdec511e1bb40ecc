"""A pair's figures as TRL computes them: the sides' log-prob sums, implicit rewards, margin and loss, and
the data-set metrics under TRL's names. Plain Python in float64 over the scorer's float32 log-probs.

The losses (per pair; TRL averages them over a batch):

- ``sigmoid`` (``DPOTrainer``, DPO): ``-log σ(β·((c − c_ref) − (r − r_ref)))``;
- ``ipo`` (``DPOTrainer``, TRL 1.x): ``((c − c_ref)/n_c − (r − r_ref)/n_r − 1/(2β))²``, each log-ratio divided
  by its side's number of completion tokens (TRL's normalisation, agreed with the IPO authors);
- ``simpo`` (``CPOTrainer`` with ``loss_type="simpo"``, ``cpo_alpha=0``): ``-log σ(β·(ĉ − r̂) − γ)`` over the
  length-normalised log-probs ``ĉ = c/n_c``; no reference;
- ``orpo`` (``ORPOTrainer``'s odds-ratio term): ``-β·log σ(log odds)``, ``log odds = (ĉ − r̂) −
  (log(1 − e^ĉ) − log(1 − e^r̂))``; no reference. TRL adds the chosen side's NLL (its SFT term), which is
  not part of this figure.

Rewards are what each trainer logs: ``β·(log π − log π_ref)`` for sigmoid and ipo, ``β·ĉ`` for simpo and orpo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ce_inspect.errors import InputError
from ce_inspect.text import LENGTH_BIAS, PAIR_CHECKS, Finding

LOSS_TYPES = ("sigmoid", "ipo", "simpo", "orpo")
#: Losses that compare with a reference model; simpo and orpo have none.
REFERENCE_LOSSES = ("sigmoid", "ipo")
DEFAULT_BETA = 0.1
#: SimPO's target reward margin, TRL's ``CPOConfig.simpo_gamma`` default.
DEFAULT_SIMPO_GAMMA = 0.5
#: TRL's metric names, in the order DPOTrainer logs them.
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
#: The check that needs the reference model: it already prefers the rejected side by a wide margin.
REF_CHECK = "ref-prefers-rejected"
#: ref-prefers-rejected fires when ``ref_rejected_logps − ref_chosen_logps`` exceeds this many nats: the
#: reference finds the rejected completion e¹⁰ ≈ 22,000 times likelier than the chosen one. The sums are the
#: figures DPO compares, so a much longer chosen side also lowers its sum: the message gives the per-token view.
REF_PREFERENCE_NATS = 10.0
#: Every check ``prefs`` runs, as ``--fail-on`` names them: the pair's own, the data set's, the reference's.
PREFS_CHECKS = (*PAIR_CHECKS, LENGTH_BIAS, REF_CHECK)


def check_loss(loss_type: str, beta: float, gamma: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise InputError(f"unknown `loss_type` {loss_type!r}; use {', '.join(LOSS_TYPES)}")
    if not math.isfinite(beta) or beta <= 0:
        raise InputError(f"`beta` must be a positive number, got {beta}")
    if not math.isfinite(gamma):
        raise InputError(f"`gamma` must be a finite number, got {gamma}")


def log_sigmoid(x: float) -> float:
    """log σ(x), stable for large |x|."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def log1mexp(x: float) -> float:
    """log(1 − eˣ) for x < 0, as TRL's ORPO computes it (branching at −ln 2)."""
    return math.log1p(-math.exp(x)) if x < -math.log(2) else math.log(-math.expm1(x))


@dataclass(frozen=True)
class PairFigures:
    """One pair's figures. ``ref_*`` None: the loss takes no reference."""

    loss_type: str
    beta: float
    chosen_logps: float
    rejected_logps: float
    chosen_count: int
    rejected_count: int
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    gamma: float = DEFAULT_SIMPO_GAMMA

    @property
    def chosen_avg(self) -> float | None:
        return self.chosen_logps / self.chosen_count if self.chosen_count else None

    @property
    def rejected_avg(self) -> float | None:
        return self.rejected_logps / self.rejected_count if self.rejected_count else None

    def rewards(self) -> tuple[float | None, float | None]:
        if self.loss_type in REFERENCE_LOSSES:
            assert self.ref_chosen_logps is not None and self.ref_rejected_logps is not None
            return (
                self.beta * (self.chosen_logps - self.ref_chosen_logps),
                self.beta * (self.rejected_logps - self.ref_rejected_logps),
            )
        c, r = self.chosen_avg, self.rejected_avg
        return (None if c is None else self.beta * c), (None if r is None else self.beta * r)

    @property
    def margin(self) -> float | None:
        c, r = self.rewards()
        return None if c is None or r is None else c - r

    @property
    def log_odds(self) -> float | None:
        """ORPO's log odds ratio of chosen over rejected; None for the other losses, or when undefined."""
        c, r = self.chosen_avg, self.rejected_avg
        if self.loss_type != "orpo" or c is None or r is None or c >= 0 or r >= 0:
            return None
        return (c - r) - (log1mexp(c) - log1mexp(r))

    @property
    def loss(self) -> float | None:
        """The pair's loss under ``loss_type``; None where it is undefined (simpo, orpo: a side with no token)."""
        beta = self.beta
        if self.loss_type == "sigmoid":
            return -log_sigmoid(self.margin)  # type: ignore[arg-type]  # margin = β·(Δc − Δr)
        if self.loss_type == "ipo":
            assert self.ref_chosen_logps is not None and self.ref_rejected_logps is not None
            chosen = (self.chosen_logps - self.ref_chosen_logps) / max(self.chosen_count, 1)
            rejected = (self.rejected_logps - self.ref_rejected_logps) / max(self.rejected_count, 1)
            return (chosen - rejected - 1 / (2 * beta)) ** 2
        c, r = self.chosen_avg, self.rejected_avg
        if c is None or r is None:
            return None
        if self.loss_type == "simpo":
            return -log_sigmoid(beta * ((c - r) - self.gamma / beta))
        odds = self.log_odds
        return None if odds is None else -beta * log_sigmoid(odds)

    def trl_logps(self) -> tuple[float | None, float | None]:
        """What TRL logs as ``logps/chosen`` and ``logps/rejected``: sums (DPOTrainer), length-normalised
        (CPOTrainer's simpo, ORPOTrainer)."""
        if self.loss_type in REFERENCE_LOSSES:
            return self.chosen_logps, self.rejected_logps
        return self.chosen_avg, self.rejected_avg


def ref_finding(figures: PairFigures) -> Finding | None:
    """ref-prefers-rejected on one pair scored under a reference model; None when it does not fire."""
    c, r = figures.ref_chosen_logps, figures.ref_rejected_logps
    if c is None or r is None or not r - c > REF_PREFERENCE_NATS:
        return None
    per_token = ""
    if figures.chosen_count and figures.rejected_count:
        per_token = (
            f"; per token {c / figures.chosen_count:.3f} chosen vs {r / figures.rejected_count:.3f} rejected over "
            f"{figures.chosen_count} and {figures.rejected_count} tokens"
        )
    return Finding(
        REF_CHECK,
        f"the reference already prefers the rejected side by {r - c:.2f} nats (ref_rejected_logps {r:.2f} − "
        f"ref_chosen_logps {c:.2f}, above {REF_PREFERENCE_NATS:g}){per_token}",
    )


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and its standard error: the sample standard deviation (ddof=1) over sqrt(n)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def metric(values: Sequence[float | None]) -> dict[str, float | int | None]:
    kept = [v for v in values if v is not None]
    mean, se = mean_se(kept)
    return {"mean": mean, "se": se, "count": len(kept)}


def trl_metrics(pairs: Sequence[PairFigures]) -> dict[str, dict[str, float | int | None]]:
    """TRL's logged metrics over every pair: the mean of each and its standard error."""
    rewards = [p.rewards() for p in pairs]
    logps = [p.trl_logps() for p in pairs]
    accuracies = [None if c is None or r is None else float(c > r) for c, r in rewards]
    values = {
        "rewards/chosen": [c for c, _ in rewards],
        "rewards/rejected": [r for _, r in rewards],
        "rewards/accuracies": accuracies,
        "rewards/margins": [p.margin for p in pairs],
        "logps/chosen": [c for c, _ in logps],
        "logps/rejected": [r for _, r in logps],
    }
    return {name: metric(values[name]) for name in METRICS}


__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_SIMPO_GAMMA",
    "LOSS_TYPES",
    "METRICS",
    "PREFS_CHECKS",
    "REFERENCE_LOSSES",
    "REF_CHECK",
    "REF_PREFERENCE_NATS",
    "PairFigures",
    "check_loss",
    "log1mexp",
    "log_sigmoid",
    "mean_se",
    "metric",
    "ref_finding",
    "trl_metrics",
]
