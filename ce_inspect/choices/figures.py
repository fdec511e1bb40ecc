"""A question's figures: each choice's log-likelihood (the per-token figures of ``run``), the predictions by
log-likelihood and by length-normalised log-likelihood, and lm-eval's ``mean_stderr`` for the accuracies.

lm-eval's multiple-choice metrics (``ConfigurableTask.process_results`` in ``lm_eval/api/task.py``):
``acc`` is 1 when ``argmax(lls)`` is the gold index, ``acc_norm`` when ``argmax(lls / len(choice))`` is,
with ``len`` the choice's length in characters; numpy's argmax takes the first of equal values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import CHOICES_SCHEMA_VERSION, ChoiceDict, ScoreResult
from ce_inspect.errors import NonFiniteError
from ce_inspect.scoring import ScoreOptions, scorer_for
from ce_inspect.stats import mean_stderr

if TYPE_CHECKING:
    from ce_inspect.choices.encoding import Question
    from ce_inspect.model import LoadedModel


def argmax(values: Sequence[float]) -> int:
    """The index of the largest value, the first of equal ones (as ``numpy.argmax``)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True)
class ChoiceScore:
    """One choice given its context: ``result`` holds ``run``'s per-token figures of its scored tokens."""

    index: int
    text: str
    result: ScoreResult
    unconditional: ScoreResult | None = None  # the choice after an empty context (``mutual_info``)

    @property
    def count(self) -> int:
        return len(self.result.tokens)

    @property
    def sum_logprob(self) -> float:
        return math.fsum(t.logprob for t in self.result.tokens)

    @property
    def norm_logprob(self) -> float:
        return self.sum_logprob / len(self.text)

    @property
    def unconditional_logprob(self) -> float | None:
        return None if self.unconditional is None else math.fsum(t.logprob for t in self.unconditional.tokens)

    @property
    def mutual_info(self) -> float | None:
        """lm-eval's ``ll_c - ll_u``: the log-likelihood given the context less that given none."""
        u = self.unconditional_logprob
        return None if u is None else self.sum_logprob - u

    @property
    def greedy_hits(self) -> int:
        return sum(t.is_greedy for t in self.result.tokens)

    def to_dict(self) -> ChoiceDict:
        total, count, hits = self.sum_logprob, self.count, self.greedy_hits
        return {
            "index": self.index,
            "text": self.text,
            "chars": len(self.text),
            "count": count,
            "sum_logprob": total,
            "mean_logprob": total / count,
            "norm_logprob": total / len(self.text),
            "greedy_hits": hits,
            "is_greedy": hits == count,
            "tokens": [t.to_dict() for t in self.result.tokens],
            "layout": self.result.layout,  # type: ignore[typeddict-item]
            "notes": list(self.result.notes),
            **({"scored_bytes": b} if (b := self.result.summary.scored_bytes) is not None else {}),
            **(
                {"unconditional_logprob": u, "mutual_info": total - u}
                if (u := self.unconditional_logprob) is not None
                else {}
            ),
        }


@dataclass(frozen=True)
class QuestionResult:
    """A question scored: every choice, the gold ``label``, the two predictions."""

    label: int
    choices: tuple[ChoiceScore, ...]

    @property
    def pred(self) -> int:
        return argmax([c.sum_logprob for c in self.choices])

    @property
    def pred_norm(self) -> int:
        return argmax([c.norm_logprob for c in self.choices])

    @property
    def pred_mutual_info(self) -> int | None:
        """argmax of ``mutual_info`` (lm-eval's acc_mutual_info); None without the unconditional scores."""
        values = [c.mutual_info for c in self.choices]
        return None if any(v is None for v in values) else argmax([v or 0.0 for v in values])

    def to_dict(self) -> dict[str, Any]:
        first = self.choices[0].result
        return {
            "schema_version": CHOICES_SCHEMA_VERSION,
            "kind": "choices",
            "model": first.model,
            "device": first.device,
            "dtype": first.dtype,
            "versions": first.versions,
            "label": self.label,
            "pred": self.pred,
            "pred_norm": self.pred_norm,
            "correct": self.pred == self.label,
            "correct_norm": self.pred_norm == self.label,
            "choices": [c.to_dict() for c in self.choices],
            **(
                {"pred_mutual_info": mi, "correct_mutual_info": mi == self.label}
                if (mi := self.pred_mutual_info) is not None
                else {}
            ),
        }


def score_questions(
    lm: LoadedModel, questions: Sequence[Question], options: ScoreOptions, *, padding_side: str = "right"
) -> list[QuestionResult]:
    """Every choice of every question through the one scorer, a question's choices as one group
    (``Scorer.score_groups``: a long shared context runs once); each choice's figures equal it scored alone."""
    groups = [q.examples for q in questions] + [q.unconditional for q in questions if q.unconditional]
    try:
        grouped = scorer_for(lm).score_groups(groups, options, padding_side=padding_side)
    except NonFiniteError as exc:  # the runner names the record: tell it which question holds the choice
        owner = next((q for q in questions if any(e is exc.example for e in q.examples)), exc.example)
        raise NonFiniteError(str(exc), example=owner, scored=exc.scored, why=exc.why, target=exc.target) from None
    unconditional = iter(grouped[len(questions) :])
    out = []
    for q, scored in zip(questions, grouped):
        bare = next(unconditional) if q.unconditional else [None] * len(scored)
        choices = (ChoiceScore(i, t, r, u) for i, (t, r, u) in enumerate(zip(q.texts, scored, bare)))
        out.append(QuestionResult(q.label, tuple(choices)))
    return out


__all__ = ["ChoiceScore", "QuestionResult", "argmax", "mean_stderr", "score_questions"]
