"""Run's document: its TypedDicts (``ResultDict`` and the objects it holds) and the typed results they are
the wire format of (``ScoreResult``, ``TokenScore``, ``Summary``, ...)."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import math
from dataclasses import dataclass, field
from typing import Any

from ce_inspect.contract.layout import LayoutDict
from ce_inspect.contract.wire import SCHEMA_VERSION, NotRequired, TypedDict, conform, dumps

# --- the wire format: run's document --------------------------------------------------------------------


class AlternativeDict(TypedDict):
    token_id: int
    token: str
    prob: float
    bytes: NotRequired[str]  # only when the token does not decode to text on its own: its bytes, hex ("F0 9F")


class TokenDict(TypedDict):
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
    bytes: NotRequired[str]  # only when the token does not decode to text on its own: its bytes, hex ("F0 9F")
    top_bytes: NotRequired[str]  # the same for the top choice
    top_k: NotRequired[list[AlternativeDict]]  # only with top_k > 0
    greedy: bool  # the target is the model's most likely next token (rank 1)
    turn: int | None  # chat: index of the message the token belongs to; null for pairs


class SummaryDict(TypedDict):
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
    model_loss: NotRequired[float]  # only with verify
    verify_abs_diff: NotRequired[float]  # only with verify
    sum_logprob: NotRequired[float]  # log-likelihood of the scored tokens (lm-evaluation-harness's loglikelihood)


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


class SequenceTokenDict(TypedDict):
    index: int
    token_id: int
    token: str
    segment: str
    scored: bool
    loss: float | None  # null where the position is not scored
    special: bool
    turn: int | None
    bytes: NotRequired[str]  # only when the token does not decode to text on its own: its bytes, hex ("F0 9F")


class DocumentDict(TypedDict):
    """The keys run's document and each batch line share."""

    schema_version: int
    model: str
    device: str
    dtype: str
    layout: LayoutDict
    tokens: list[TokenDict]
    summary: SummaryDict
    notes: list[str]
    turns: list[TurnDict]  # chat: one entry per turn with scored tokens; empty for pairs


class ResultDict(DocumentDict):
    """``run --json``: one example."""

    sequence: list[SequenceTokenDict]


# --- the objects ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    token_id: int
    token: str
    prob: float
    bytes: str | None = None  # hex bytes of a token that does not decode on its own (see ``TokenScore``)

    def to_dict(self) -> AlternativeDict:
        d: AlternativeDict = {"token_id": self.token_id, "token": self.token, "prob": self.prob}
        if self.bytes is not None:
            d["bytes"] = self.bytes
        return d

    @classmethod
    def from_dict(cls, d: AlternativeDict) -> "Alternative":
        return cls(token_id=d["token_id"], token=d["token"], prob=d["prob"], bytes=d.get("bytes"))


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
    #: Byte-level tokens that are part of a character (emoji, CJK, combining marks) all decode to "\ufffd"
    #: on their own; for those, their bytes in hex ("F0 9F"), so that different tokens look different.
    bytes: str | None = None
    top_bytes: str | None = None

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
        if self.bytes is not None:
            d["bytes"] = self.bytes
        if self.top_bytes is not None:
            d["top_bytes"] = self.top_bytes
        if self.top_k:
            d["top_k"] = [a.to_dict() for a in self.top_k]
        return d

    @classmethod
    def from_dict(cls, d: TokenDict) -> "TokenScore":
        """The token ``d`` describes (``greedy`` is derived from ``rank``, so it is not read)."""
        fields = {k: v for k, v in d.items() if k not in ("greedy", "top_k")}
        return cls(**fields, top_k=tuple(Alternative.from_dict(a) for a in d.get("top_k", ())))  # type: ignore[arg-type]


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
    bytes: str | None = None  # as ``TokenScore.bytes``

    def to_dict(self) -> SequenceTokenDict:
        d: SequenceTokenDict = {
            "index": self.index,
            "token_id": self.token_id,
            "token": self.token,
            "segment": self.segment,
            "scored": self.scored,
            "loss": self.loss,
            "special": self.special,
            "turn": self.turn,
        }
        if self.bytes is not None:
            d["bytes"] = self.bytes
        return d

    @classmethod
    def from_dict(cls, d: SequenceTokenDict) -> "SequenceToken":
        return cls(**d)


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

    @classmethod
    def from_dict(cls, d: SummaryDict) -> "Summary":
        """The summary ``d`` describes; ``loss``, ``perplexity`` and ``is_greedy`` are derived, so not read."""
        loss = d["loss"]
        return cls(
            reduction=d["reduction"],
            mean=d["mean"],
            sum=d["sum"],
            count=d["count"],
            mean_nll=d["mean_nll"],
            label_smoothing=d["label_smoothing"],
            ignore_index=d["ignore_index"],
            greedy_hits=d["greedy_hits"],
            model_loss=d.get("model_loss"),
            verify_abs_diff=d.get("verify_abs_diff"),
            per_token=tuple(loss) if isinstance(loss, list) else (),
            sum_logprob=d.get("sum_logprob"),
        )


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

    @classmethod
    def from_dict(cls, d: TurnDict) -> "TurnSummary":
        return cls(**{k: v for k, v in d.items() if k not in ("perplexity", "is_greedy")})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScoreResult:
    """What one example scores to: the figures the CLI renders and ``--json`` serialises."""

    model: str
    device: str
    dtype: str
    tokens: tuple[TokenScore, ...]
    summary: Summary
    sequence: tuple[SequenceToken, ...]
    layout: dict[str, Any] = field(default_factory=dict)  # one of the LayoutDict types
    notes: tuple[str, ...] = ()
    turns: tuple[TurnSummary, ...] = ()

    def to_dict(self) -> ResultDict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "layout": dict(self.layout),  # type: ignore[typeddict-item]
            "tokens": [t.to_dict() for t in self.tokens],
            "summary": self.summary.to_dict(),
            "sequence": [s.to_dict() for s in self.sequence],
            "notes": list(self.notes),
            "turns": [t.to_dict() for t in self.turns],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "ScoreResult":
        """The result a ``run --json`` document describes: ``ScoreResult.from_dict(r.to_dict()) == r``'s figures.

        ``d`` must hold exactly the keys of ``ResultDict``, with their JSON types (``ValueError`` names the
        first one that does not); figures derived from others (``loss``, ``perplexity``, ``greedy``, ...)
        are recomputed, not read.
        """
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a schema_version {SCHEMA_VERSION} document")
        conform(ResultDict, d)
        return cls.build(d)

    @classmethod
    def build(cls, d: Any) -> "ScoreResult":
        """The result a document already checked against ``ResultDict`` (or ``BatchLineDict``) describes."""
        return cls(
            model=d["model"],
            device=d["device"],
            dtype=d["dtype"],
            tokens=tuple(TokenScore.from_dict(t) for t in d["tokens"]),
            summary=Summary.from_dict(d["summary"]),
            sequence=tuple(SequenceToken.from_dict(s) for s in d.get("sequence", ())),
            layout=dict(d["layout"]),
            notes=tuple(d["notes"]),
            turns=tuple(TurnSummary.from_dict(t) for t in d["turns"]),
        )
