"""Both sides of each pair through the policy and the reference (``scoring.scorer_for(lm).score``), and
one pair's result as its output line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import PREFS_SCHEMA_VERSION, PrefsLineDict, PrefsSideDict, ScoreResult, VersionsDict
from ce_inspect.prefs.figures import DEFAULT_SIMPO_GAMMA, REFERENCE_LOSSES, PairFigures, ref_finding
from ce_inspect.scoring import ScoreOptions, scorer_for
from ce_inspect.text import SIDES, Finding, PreferenceExample

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


@dataclass(frozen=True)
class Loss:
    """The loss a run computes: its type, β and (simpo) γ."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    gamma: float = DEFAULT_SIMPO_GAMMA

    @property
    def uses_reference(self) -> bool:
        return self.loss_type in REFERENCE_LOSSES


@dataclass(frozen=True)
class PairResult:
    """A pair scored: each side's result under the policy (None: the side has no trained token) and the
    reference's log-prob of each of its tokens (None: no reference), the pair's figures, and its findings: the
    pair's own checks (``example.findings``) and, under a reference model, ref-prefers-rejected."""

    example: PreferenceExample
    policy: tuple[ScoreResult | None, ScoreResult | None]
    reference: tuple[list[float] | None, list[float] | None]
    figures: PairFigures
    findings: tuple[Finding, ...] = ()


def side_logps(result: ScoreResult | None) -> float:
    """The sum of the log-probs of a side's completion tokens, as TRL sums them (0 with no token)."""
    return math.fsum(t.logprob for t in result.tokens) if result is not None else 0.0


def score_pairs(
    policy: LoadedModel,
    reference: LoadedModel | None,
    examples: Sequence[PreferenceExample],
    loss: Loss,
    *,
    options: ScoreOptions | None = None,
    padding_side: str = "right",
) -> list[PairResult]:
    """Every side of ``examples`` with a trained token, in one padded forward pass per model. Without a
    ``reference`` a loss that needs one takes the policy itself (as TRL's DPOTrainer copies the model it
    starts from), so every reward and margin is 0."""
    options = options or ScoreOptions()
    flat = [(i, k) for i, ex in enumerate(examples) for k, name in enumerate(SIDES) if ex.side(name).scored_positions]
    encoded = [examples[i].side(SIDES[k]) for i, k in flat]
    scored = scorer_for(policy).score(encoded, options, padding_side=padding_side) if encoded else []
    ref_scored = scored
    if loss.uses_reference and reference is not None and encoded:
        ref_scored = scorer_for(reference).score(encoded, options, padding_side=padding_side)
    by_side: dict[tuple[int, int], tuple[ScoreResult, ScoreResult]] = {
        key: (a, b) for key, a, b in zip(flat, scored, ref_scored)
    }
    results = []
    for i, ex in enumerate(examples):
        pol = tuple(by_side[(i, k)][0] if (i, k) in by_side else None for k in range(2))
        ref: tuple[list[float] | None, ...] = (None, None)
        if loss.uses_reference:
            ref = tuple([t.logprob for t in by_side[(i, k)][1].tokens] if (i, k) in by_side else [] for k in range(2))
        figures = PairFigures(
            loss.loss_type,
            loss.beta,
            side_logps(pol[0]),
            side_logps(pol[1]),
            len(pol[0].tokens) if pol[0] else 0,
            len(pol[1].tokens) if pol[1] else 0,
            math.fsum(ref[0]) if ref[0] is not None else None,
            math.fsum(ref[1]) if ref[1] is not None else None,
            loss.gamma,
        )
        found = ref_finding(figures) if reference is not None else None
        findings = (*ex.findings, found) if found is not None else ex.findings
        results.append(PairResult(ex, pol, ref, figures, findings))  # type: ignore[arg-type]
    return results


def _side_dict(
    example: PreferenceExample, name: str, result: ScoreResult | None, ref: list[float] | None, reward: float | None
) -> PrefsSideDict:
    count = len(result.tokens) if result is not None else 0
    logps = side_logps(result)
    return {
        "sequence_tokens": len(example.side(name)),
        "count": count,
        "logps": logps,
        "ref_logps": math.fsum(ref) if ref is not None else None,
        "avg_logps": logps / count if count else None,
        "reward": reward,
        "tokens": [t.to_dict() for t in result.tokens] if result is not None else [],
        "ref_logprobs": list(ref) if ref is not None else None,
        "summary": result.summary.to_dict() if result is not None else None,
    }


def pair_line(entry: Any, result: PairResult, settings: dict[str, Any], versions: VersionsDict) -> PrefsLineDict:
    """A pair's output line: TRL's figures, both sides token by token, the pair's checks; ``versions``: the
    policy's and the reference's (``contract.versions``)."""
    f, ex = result.figures, result.example
    rewards = f.rewards()
    sides = [_side_dict(ex, name, result.policy[k], result.reference[k], rewards[k]) for k, name in enumerate(SIDES)]
    return {
        "schema_version": PREFS_SCHEMA_VERSION,
        "kind": "prefs",
        "id": entry.id,
        "line": entry.line,
        "loss_type": f.loss_type,
        "beta": f.beta,
        "chosen_logps": f.chosen_logps,
        "rejected_logps": f.rejected_logps,
        "ref_chosen_logps": f.ref_chosen_logps,
        "ref_rejected_logps": f.ref_rejected_logps,
        "chosen_reward": rewards[0],
        "rejected_reward": rewards[1],
        "margin": f.margin,
        "loss": f.loss,
        "log_odds": f.log_odds,
        "layout": dict(ex.pair_layout),  # type: ignore[typeddict-item]
        "chosen": sides[0],
        "rejected": sides[1],
        "findings": [finding.to_dict() for finding in result.findings],  # type: ignore[misc]
        "notes": list(ex.notes),
        "versions": versions,
        "settings": settings,
    }


__all__ = ["Loss", "PairResult", "pair_line", "score_pairs", "side_logps"]
