"""Typed results and the JSON contract.

Everything the CLI prints comes from these objects; ``to_dict()`` is the wire format, declared below
as TypedDicts. Adding keys keeps ``SCHEMA_VERSION``; renaming or removing one bumps it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypedDict

SCHEMA_VERSION = 1


class AlternativeDict(TypedDict):
    token_id: int
    token: str
    prob: float


class TokenDict(TypedDict, total=False):
    index: int  # position of the target in the input sequence; its logits come from index - 1
    token_id: int
    token: str  # the token's text as it decodes on its own
    piece: str  # the raw vocabulary entry
    segment: str
    special: bool
    prob: float
    logprob: float
    loss: float
    rank: int  # 1 = the model's top choice
    top_id: int
    top_token: str
    top_prob: float
    top_k: list[AlternativeDict]
    greedy: bool  # the target is the model's most likely next token (rank 1)
    turn: int | None  # chat: index of the message the token belongs to; null for pairs


class SummaryDict(TypedDict, total=False):
    reduction: str
    loss: float | list[float]  # the figure CrossEntropyLoss(reduction=...) returns
    mean: float
    sum: float
    count: int
    perplexity: float | None  # exp(mean NLL); null only when it overflows a float
    mean_nll: float
    label_smoothing: float
    ignore_index: int
    greedy_hits: int
    is_greedy: bool
    model_loss: float
    verify_abs_diff: float
    sum_logprob: float  # log-likelihood of the scored tokens (lm-evaluation-harness's loglikelihood)


class TurnDict(TypedDict):
    turn: int | None  # index of the message in the conversation; null: template text outside every message
    role: str
    count: int
    mean: float
    sum: float
    mean_nll: float
    perplexity: float | None
    sum_logprob: float
    greedy_hits: int
    is_greedy: bool
    first_index: int
    last_index: int


class SequenceTokenDict(TypedDict, total=False):
    index: int
    token_id: int
    token: str
    segment: str
    scored: bool
    loss: float | None
    special: bool
    turn: int | None


class ResultDict(TypedDict, total=False):
    schema_version: int
    model: str
    device: str
    dtype: str
    layout: dict[str, Any]
    tokens: list[TokenDict]
    summary: SummaryDict
    sequence: list[SequenceTokenDict]
    notes: list[str]
    turns: list[TurnDict]  # chat: one entry per turn with scored tokens; empty for pairs


@dataclass(frozen=True)
class Alternative:
    token_id: int
    token: str
    prob: float


@dataclass(frozen=True)
class TokenScore:
    """One scored target: the token at ``index``, predicted from the logits at ``index - 1``."""

    index: int
    token_id: int
    token: str
    piece: str
    segment: str
    special: bool
    prob: float
    logprob: float
    loss: float
    rank: int
    top_id: int
    top_token: str
    top_prob: float
    top_k: tuple[Alternative, ...] = ()
    turn: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.rank == 1

    def to_dict(self) -> TokenDict:
        d: TokenDict = {
            "index": self.index,
            "token_id": self.token_id,
            "token": self.token,
            "piece": self.piece,
            "segment": self.segment,
            "special": self.special,
            "prob": self.prob,
            "logprob": self.logprob,
            "loss": self.loss,
            "rank": self.rank,
            "top_id": self.top_id,
            "top_token": self.top_token,
            "top_prob": self.top_prob,
            "greedy": self.is_greedy,
            "turn": self.turn,
        }
        if self.top_k:
            d["top_k"] = [{"token_id": a.token_id, "token": a.token, "prob": a.prob} for a in self.top_k]
        return d


@dataclass(frozen=True)
class SequenceToken:
    """Every input position, scored or not, for the whole-sequence view."""

    index: int
    token_id: int
    token: str
    segment: str
    scored: bool
    loss: float | None
    special: bool = False
    turn: int | None = None

    def to_dict(self) -> SequenceTokenDict:
        return {
            "index": self.index,
            "token_id": self.token_id,
            "token": self.token,
            "segment": self.segment,
            "scored": self.scored,
            "loss": self.loss,
            "special": self.special,
            "turn": self.turn,
        }


def perplexity(mean_nll: float) -> float | None:
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return None


class _DerivedFigures:
    """Figures derived from a span's mean NLL and greedy hits (the overall summary and each turn)."""

    mean_nll: float
    greedy_hits: int
    count: int

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.mean_nll)

    @property
    def is_greedy(self) -> bool:
        """Whether greedy decoding would produce exactly the scored tokens (lm-evaluation-harness's is_greedy)."""
        return self.greedy_hits == self.count


@dataclass(frozen=True)
class Summary(_DerivedFigures):
    reduction: str
    mean: float
    sum: float
    count: int
    mean_nll: float
    label_smoothing: float
    ignore_index: int
    greedy_hits: int
    model_loss: float | None = None
    verify_abs_diff: float | None = None
    per_token: tuple[float, ...] = ()
    sum_logprob: float | None = None

    @property
    def loss(self) -> float | list[float]:
        """What ``CrossEntropyLoss(reduction=self.reduction)`` returns for these scored tokens."""
        if self.reduction == "sum":
            return self.sum
        if self.reduction == "none":
            return list(self.per_token)
        return self.mean

    def to_dict(self) -> SummaryDict:
        d: SummaryDict = {
            "reduction": self.reduction,
            "loss": self.loss,
            "mean": self.mean,
            "sum": self.sum,
            "count": self.count,
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "label_smoothing": self.label_smoothing,
            "ignore_index": self.ignore_index,
            "greedy_hits": self.greedy_hits,
            "is_greedy": self.is_greedy,
        }
        if self.model_loss is not None:
            d["model_loss"] = self.model_loss
        if self.verify_abs_diff is not None:
            d["verify_abs_diff"] = self.verify_abs_diff
        if self.sum_logprob is not None:
            d["sum_logprob"] = self.sum_logprob
        return d


@dataclass(frozen=True)
class TurnSummary(_DerivedFigures):
    """The figures of one conversation turn's scored tokens (the overall Summary stays the token-level mean)."""

    turn: int | None
    role: str
    count: int
    mean: float
    sum: float
    mean_nll: float
    sum_logprob: float
    greedy_hits: int
    first_index: int
    last_index: int

    def to_dict(self) -> TurnDict:
        return {
            "turn": self.turn,
            "role": self.role,
            "count": self.count,
            "mean": self.mean,
            "sum": self.sum,
            "mean_nll": self.mean_nll,
            "perplexity": self.perplexity,
            "sum_logprob": self.sum_logprob,
            "greedy_hits": self.greedy_hits,
            "is_greedy": self.is_greedy,
            "first_index": self.first_index,
            "last_index": self.last_index,
        }


@dataclass(frozen=True)
class ScoreResult:
    """What one example scores to: the figures the CLI renders and ``--json`` serialises."""

    model: str
    device: str
    dtype: str
    tokens: tuple[TokenScore, ...]
    summary: Summary
    sequence: tuple[SequenceToken, ...]
    layout: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    turns: tuple[TurnSummary, ...] = ()

    def to_dict(self) -> ResultDict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "layout": dict(self.layout),
            "tokens": [t.to_dict() for t in self.tokens],
            "summary": self.summary.to_dict(),
            "sequence": [s.to_dict() for s in self.sequence],
            "notes": list(self.notes),
            "turns": [t.to_dict() for t in self.turns],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)


def dumps(obj: Any, indent: int | None = None) -> str:
    """The one JSON encoder: UTF-8 text as is, and no NaN/Infinity (they are not JSON)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent)


# --- audit (ce_inspect/audit.py): the `audit --json` document and its --output lines ---------------------

# Optional keys are declared in a ``total=False`` subclass: exact under ``from __future__ import annotations``
# on every Python version (``NotRequired`` in a string annotation is not seen by typing's TypedDict).


class AuditTokenDict(TypedDict):
    index: int
    token_id: int
    token: str
    label: int  # the record's label at this position (the ignore index when not trained)
    trained: bool
    offending: bool  # one of the positions the check flags
    special: bool
    loss: float | None  # with a model, at trained positions


class AuditRecordRefDict(TypedDict):
    line: int
    id: str | int | None


class _AuditFindingDictRequired(TypedDict):
    check: str
    positions: list[int]  # the offending token positions (may be empty: no-trained-tokens)
    message: str


class AuditFindingDict(_AuditFindingDictRequired, total=False):
    detail: dict[str, Any]  # boundary: the two splits (alone, together, prompt_tokens, common_prefix)


class _AuditExampleDictRequired(TypedDict):
    line: int
    id: str | int | None
    positions: list[int]
    message: str
    tokens: list[AuditTokenDict]  # the tokens around the offending positions


class AuditExampleDict(_AuditExampleDictRequired, total=False):
    detail: dict[str, Any]
    mean_loss: float  # with a model


class _AuditCheckDictRequired(TypedDict):
    name: str
    description: str
    ran: bool  # false: loss-outlier without a model
    checked: int  # records the check could examine
    failed: int  # failing records
    records: list[AuditRecordRefDict]  # every failing record, in input order
    examples: list[AuditExampleDict]  # the first few, in full


class AuditCheckDict(_AuditCheckDictRequired, total=False):
    note: str


class _AuditLossDictRequired(TypedDict):
    examples: int  # records scored
    scored_tokens: int
    token_weighted_mean_loss: float | None
    example_weighted_mean_loss: float | None
    unscored: list[dict[str, Any]]  # {line, id, reason} of records the model could not score


class AuditLossDict(_AuditLossDictRequired, total=False):
    outlier_rule: dict[str, Any]  # {median, mad, threshold, records}


class _AuditDictRequired(TypedDict):
    schema_version: int
    kind: str  # "audit"
    input: str
    output: str | None  # the --output file of per-record lines
    model: str | None  # null with --no-model
    tokenizer: str
    records: int  # records checked (skipped ones excluded)
    max_length: int | None
    skipped: list[dict[str, Any]]  # {line, id, reason}
    checks: list[AuditCheckDict]
    failed_checks: list[str]
    fail_on: list[str]
    gate_failed: list[str]  # failed checks that are in fail_on: exit 3 when not empty


class AuditDict(_AuditDictRequired, total=False):
    loss: AuditLossDict  # with a model


class _AuditRecordLineDictRequired(TypedDict):
    schema_version: int
    kind: str  # "audit_record"
    line: int
    id: str | int | None
    failed: list[str]
    findings: list[AuditFindingDict]


class AuditRecordLineDict(_AuditRecordLineDictRequired, total=False):
    loss: dict[str, Any]  # with a model: {scored, mean, sum, count} or {scored: false, reason}
