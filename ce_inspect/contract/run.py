"""Run's document: its TypedDicts (``ResultDict`` and the objects it holds) and the typed results they are
the wire format of (``ScoreResult``, ``TokenScore``, ``Summary``, ...)."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ce_inspect.contract.layout import LayoutDict
from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import NOT_ON_WIRE, SCHEMA_VERSION, NotRequired, TypedDict, WireObject, conform, dumps
from ce_inspect.notebook import TokenFrame

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
    entropy: NotRequired[float]  # only with entropy: -sum p log p of the model's distribution there (nats)


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
    # The scored text: the UTF-8 bytes of the scored target tokens, joined (``text.token_bytes``).
    scored_bytes: NotRequired[int]  # its length in bytes
    scored_words: NotRequired[int]  # its words as lm-eval counts them (``text.count_words``)
    bits_per_byte: NotRequired[float]  # sum NLL / ln 2 / scored_bytes
    byte_perplexity: NotRequired[float]  # exp(sum NLL / scored_bytes); left out when it overflows
    word_perplexity: NotRequired[float]  # exp(sum NLL / scored_words); left out when it overflows
    mean_entropy: NotRequired[float]  # only with entropy: the mean over the scored tokens (nats)


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
    versions: VersionsDict  # what produced the figures (docs/json.md)
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
class Alternative(WireObject[AlternativeDict]):
    token_id: int
    token: str
    prob: float
    bytes: str | None = None  # hex bytes of a token that does not decode on its own (see ``TokenScore``)


@dataclass(frozen=True)
class TokenScore(WireObject[TokenDict]):
    """One scored target: the token at ``index``, predicted from the logits at ``index - 1``."""

    wire_names: ClassVar[Mapping[str, str]] = {"greedy": "is_greedy"}  # derived from ``rank``, so not read

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
    entropy: float | None = None  # of the model's whole distribution at this position (nats); with ``entropy``

    @property
    def is_greedy(self) -> bool:
        return self.rank == 1


@dataclass(frozen=True)
class SequenceToken(WireObject[SequenceTokenDict]):
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


def perplexity(mean_nll: float) -> float | None:
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return None


def bits_per_byte(nll_sum: float, n_bytes: int | None) -> float | None:
    """``sum NLL / ln 2 / bytes`` (lm-evaluation-harness's ``bits_per_byte``); None without bytes."""
    return nll_sum / math.log(2) / n_bytes if n_bytes else None


def per_unit_perplexity(nll_sum: float, units: int | None) -> float | None:
    """``exp(sum NLL / units)``: lm-eval's ``byte_perplexity`` (bytes) and ``word_perplexity`` (words)."""
    return perplexity(nll_sum / units) if units else None


class PerByteFigures:
    """Bits per byte, byte and word perplexity of a span's summed NLL over its scored text (the example's
    summary and the data set's): computed here only."""

    scored_bytes: int | None
    scored_words: int | None

    @property
    def nll_total(self) -> float:
        raise NotImplementedError

    @property
    def bits_per_byte(self) -> float | None:
        return bits_per_byte(self.nll_total, self.scored_bytes)

    @property
    def byte_perplexity(self) -> float | None:
        return per_unit_perplexity(self.nll_total, self.scored_bytes)

    @property
    def word_perplexity(self) -> float | None:
        return per_unit_perplexity(self.nll_total, self.scored_words)


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
class Summary(_DerivedFigures, PerByteFigures, WireObject[SummaryDict]):
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
    per_token: tuple[float, ...] = field(default=(), metadata=NOT_ON_WIRE)  # on the wire as ``loss``
    sum_logprob: float | None = None
    scored_bytes: int | None = None  # UTF-8 bytes of the scored target tokens (``text.token_bytes``)
    scored_words: int | None = None  # words of that text decoded, as lm-eval counts them (``text.count_words``)
    mean_entropy: float | None = None  # with ``entropy``: the scored tokens' mean entropy (nats)

    @property
    def nll_total(self) -> float:
        """The scored tokens' summed NLL, ``-sum_logprob``."""
        return -self.sum_logprob if self.sum_logprob is not None else self.mean_nll * self.count

    @property
    def loss(self) -> float | list[float]:
        """What ``CrossEntropyLoss(reduction=self.reduction)`` returns for these scored tokens."""
        if self.reduction == "sum":
            return self.sum
        if self.reduction == "none":
            return list(self.per_token)
        return self.mean

    @classmethod
    def from_dict(cls, d: SummaryDict) -> "Summary":  # type: ignore[override]
        """The summary ``d`` describes; ``loss``, ``perplexity`` and ``is_greedy`` are derived, so not read."""
        loss = d["loss"]
        return cls(**cls.fields_from_dict(d), per_token=tuple(loss) if isinstance(loss, list) else ())


@dataclass(frozen=True)
class TurnSummary(_DerivedFigures, WireObject[TurnDict]):
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


@dataclass(frozen=True)
class ScoreResult(WireObject[ResultDict], TokenFrame):
    """What one example scores to: the figures the CLI renders and ``--json`` serialises; in a notebook, the
    report's strip and summary (``_repr_html_``) and a row per scored token (``to_pandas()``)."""

    schema_version: ClassVar[int] = SCHEMA_VERSION
    view: ClassVar[str] = "run"

    model: str
    device: str
    dtype: str
    versions: VersionsDict  # ce-inspect, torch, transformers, Python and the device's name (``contract.versions``)
    tokens: tuple[TokenScore, ...]
    summary: Summary
    sequence: tuple[SequenceToken, ...]
    layout: dict[str, Any] = field(default_factory=dict)  # one of the LayoutDict types
    notes: tuple[str, ...] = ()
    turns: tuple[TurnSummary, ...] = ()

    def to_dict(self) -> ResultDict:
        d = super().to_dict()
        # The one key order that is not the TypedDict's: run's document has always held ``sequence`` right
        # after ``summary``, where ResultDict declares it after the keys a batch line shares (and the schema
        # files list it there), so ``notes`` and ``turns`` move behind it.
        d["notes"] = d.pop("notes")
        d["turns"] = d.pop("turns")
        return d

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
        fields = cls.fields_from_dict(d)
        fields.setdefault("sequence", ())  # a batch line written with --no-sequence
        return cls(**fields)
