"""Typed results and the JSON contract.

Everything the CLI prints comes from these objects; ``to_dict()`` is the wire format, declared below
as exact TypedDicts: a key without ``NotRequired`` is in every document, and no document holds a key
that is not declared here (tests/test_contract.py checks real outputs against both, and
``python -m ce_inspect.contract.schema`` turns these types into the JSON Schema files in ``schema/``).
Adding keys keeps ``SCHEMA_VERSION``; renaming or removing one bumps it.
"""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import json
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict, get_type_hints, is_typeddict
else:  # typing's TypedDict on 3.10 does not know NotRequired
    from typing_extensions import NotRequired, TypedDict, get_type_hints, is_typeddict

SCHEMA_VERSION = 1

Id = str | int | None  # a batch record's id field, copied as is; null when the record has none


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


class BoundaryTokenDict(TypedDict):
    token_id: int
    token: str
    part: Literal["prompt", "answer"]


class TokenCountsDict(TypedDict):
    separate: int
    joint: int


class BoundaryDict(TypedDict):
    """How separate and joint tokenization split a pair; the token windows only where they differ."""

    differs: bool
    used: Literal["separate", "joint"]
    answer_tokens: TokenCountsDict
    start: NotRequired[int]  # position of each window's first token
    separate: NotRequired[list[BoundaryTokenDict]]
    joint: NotRequired[list[BoundaryTokenDict]]


class PairLayoutDict(TypedDict):
    kind: Literal["pair"]
    bos: bool
    sep: str | None
    eos: bool
    mask_prompt: bool
    prompt_tokens: int
    answer_tokens: int
    tokenization: Literal["separate", "joint"]
    special_tokens: Literal["parse", "text"]  # special-token text in the user's text: control tokens, or plain text
    boundary: BoundaryDict
    sequence_tokens: int
    scored_tokens: int


class TemplateMaskUnusedDict(TypedDict):
    used: Literal[False]
    reason: str


class TemplateMaskDict(TypedDict):
    """The template's own ``{% generation %}`` mask, compared with the generation-prompt prefix."""

    used: Literal[True]
    agrees: bool
    only_template: list[int]  # positions only the template's mask scores
    only_prefix: list[int]  # positions only the prefix method scores


class ChatLayoutDict(TypedDict):
    kind: Literal["chat"]
    source: Literal["pair", "messages"]
    eos: bool
    mask_prompt: bool
    system: str | None
    default_system_prompt: str | None  # the system text the template injects on its own
    messages: int
    roles: list[str]
    scored_turns: list[int]
    last_turn: bool
    end_of_turn: str | None
    answer_tokens: int
    template_mask: TemplateMaskDict | TemplateMaskUnusedDict | None  # null: no {% generation %} tag
    special_tokens: Literal["parse", "text"]  # always parse: a template's rendering is tokenized as one string
    sequence_tokens: int
    scored_tokens: int


class WindowsDict(TypedDict):
    """Text longer than the context, scored in sliding windows of ``window`` tokens advancing by ``stride``."""

    window: int
    stride: int


class TrlLayoutDict(TypedDict):
    """``tokenization="trl"``: TRL's own split (prompt/completion pairs) or its language-modelling types."""

    kind: Literal["trl"]
    conversational: bool
    eos: bool
    tokenization: Literal["trl"]
    mask_prompt: NotRequired[bool]  # prompt/completion pairs only, like the three below
    prompt_tokens: NotRequired[int]  # where TRL starts the completion: the common prefix of the two tokenizations
    prompt_tokens_alone: NotRequired[int]  # the prompt tokenized on its own
    answer_tokens: NotRequired[int]
    windows: NotRequired[WindowsDict]
    window_count: NotRequired[int]
    sequence_tokens: int
    scored_tokens: int


class TextLayoutDict(TypedDict):
    """A ``text`` record (language modelling): every token after the first is scored."""

    kind: Literal["text"]
    bos: bool
    eos: bool
    text_tokens: int
    windows: NotRequired[WindowsDict]
    window_count: NotRequired[int]
    sequence_tokens: int
    scored_tokens: int


class TokenizedLayoutDict(TypedDict):
    """A pre-tokenized record, scored exactly as given."""

    kind: Literal["tokenized"]
    labels_from: str  # "labels", "completion_mask" or "assistant_masks"
    trained: int
    sequence_tokens: int
    scored_tokens: int


LayoutDict = PairLayoutDict | ChatLayoutDict | TrlLayoutDict | TextLayoutDict | TokenizedLayoutDict


class _DocumentDict(TypedDict):
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


class ResultDict(_DocumentDict):
    """``run --json``: one example."""

    sequence: list[SequenceTokenDict]


class BatchLineDict(_DocumentDict):
    """One line of ``batch``'s output: run's document plus the record's id and input line."""

    id: Id
    line: int  # 1-based line of the input file
    sequence: NotRequired[list[SequenceTokenDict]]  # left out with --no-sequence
    # ``batch.line_settings``: the model, its fingerprint and every option the line depends on;
    # ``--resume`` refuses to mix lines whose settings differ.
    settings: dict[str, Any]


# --- the wire format: batch's data-set summary ----------------------------------------------------------


class WorstExampleDict(TypedDict):
    line: int
    id: Id
    mean: float
    sum: float
    count: int


class WorstTokenDict(TypedDict):
    line: int
    id: Id
    index: int
    token: str
    token_id: int
    segment: str
    loss: float
    prob: float
    rank: int


class SkippedDict(TypedDict):
    line: int
    id: Id
    reason: str


class BatchingDict(TypedDict):
    batch_size: int | None
    max_tokens: int | None
    padding_side: Literal["right", "left"]
    batches: int
    examples: int
    sequence_tokens: int
    padded_positions: int
    padding_fraction: float | None
    seconds: float
    tokens_per_second: float | None


class DataDict(TypedDict):
    file: str  # jsonl, json, parquet, saved-dataset or hub
    format: str | None
    format_forced: bool
    split: str | None


class HistogramDict(TypedDict):
    """Counts of values in equal bins: bin k holds edges[k] <= v < edges[k+1] (the last bin is closed)."""

    edges: list[float]  # one more than counts; empty when nothing was counted
    counts: list[int]


class BatchSummaryDict(TypedDict):
    schema_version: int
    kind: Literal["batch_summary"]
    model: str
    device: str
    dtype: str
    input: str
    output: str | None
    examples: int
    resumed: int
    skipped_count: int
    scored_tokens: int
    token_weighted_mean_loss: float | None
    example_weighted_mean_loss: float | None
    loss_sum: float
    mean_nll: float | None
    perplexity: float | None
    greedy_hits: int
    label_smoothing: float
    ignore_index: int
    worst_examples: list[WorstExampleDict]
    worst_tokens: list[WorstTokenDict]
    skipped: list[SkippedDict]
    batching: BatchingDict
    data: NotRequired[DataDict]  # what was read: the file kind and the records' format
    example_loss_histogram: HistogramDict  # the per-example mean losses (what the reports draw)


# --- reading documents back -----------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def conform(tp: Any, value: Any, where: str = "document") -> None:
    """Raise ``ValueError`` unless ``value`` (parsed JSON) is of type ``tp``, objects holding exactly their keys."""
    origin = get_origin(tp)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, not {_json_type(value)}")
        hints = get_type_hints(tp)
        missing = sorted(tp.__required_keys__ - value.keys())
        if missing:
            raise ValueError(f"{where}: missing {missing[0]!r}")
        extra = sorted(value.keys() - hints.keys())
        if extra:
            raise ValueError(f"{where}: unexpected key {extra[0]!r}")
        for key, item in value.items():
            conform(hints[key], item, f"{where}.{key}")
    elif origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected an array, not {_json_type(value)}")
        for k, item in enumerate(value):
            conform(get_args(tp)[0], item, f"{where}[{k}]")
    elif origin is dict:  # an open object (``dict[str, Any]``): its keys are not part of the contract
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, not {_json_type(value)}")
    elif origin is Union or origin is types.UnionType:
        errors = []
        for option in get_args(tp):
            try:
                return conform(option, value, where)
            except ValueError as exc:
                if option is not type(None):
                    errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: none of its forms fits ({'; '.join(errors)})")
    elif origin is Literal:
        if not any(value == v and type(value) is type(v) for v in get_args(tp)):
            raise ValueError(f"{where}: expected one of {list(get_args(tp))}, not {value!r}")
    elif tp is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, not {_json_type(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, not {_json_type(value)}")
    elif tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {_json_type(tp())}, not {_json_type(value)}")
    else:  # pragma: no cover - a type the wire format does not use
        raise TypeError(f"{where}: cannot check values of type {tp!r}")


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
        return cls._build(d)

    @classmethod
    def _build(cls, d: Any) -> "ScoreResult":
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


def batch_line_from_dict(d: Any) -> tuple[int, Id, ScoreResult]:
    """A line of ``batch``'s output as (input line, record id, result); the result has no ``sequence``
    when the line was written with ``--no-sequence``. ``ValueError`` when ``d`` is not such a line."""
    if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a schema_version {SCHEMA_VERSION} document")
    conform(BatchLineDict, d)
    return d["line"], d["id"], ScoreResult._build(d)


def dumps(obj: Any, indent: int | None = None) -> str:
    """The one JSON encoder: UTF-8 text as is, and no NaN/Infinity (they are not JSON)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent)


def as_read_back(obj: Any) -> Any:
    """``obj`` as it reads back from an output line (tuples become lists), to compare with what a line holds."""
    return json.loads(dumps(obj))


# --- audit (ce_inspect/audit/): the `audit --json` document and its --output lines ---------------------

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
    detail: dict[
        str, Any
    ]  # boundary: the two splits (alone, together, prompt_tokens, common_prefix); loss-outlier: mean, threshold


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
    resumed: int  # records whose loss was read back from the output (--resume), not scored by this run


class AuditLossDict(_AuditLossDictRequired, total=False):
    # {median, mad, threshold, records, basis}: the statistics' records, basis "passing" (those that pass every
    # other check) or "all" (fewer than 5 pass)
    outlier_rule: dict[str, Any]


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


class _AuditRecordLossDictRequired(TypedDict):
    scored: bool  # false: the model could not score the record (``reason``)


class AuditRecordLossDict(_AuditRecordLossDictRequired, total=False):
    mean: float  # scored: the record's mean loss over its trained tokens
    sum: float
    count: int  # trained tokens scored
    sequence_tokens: int  # tokens of the record's sequence (``--resume`` compares it with the input)
    targets: str  # a digest of the scored (position, token id) pairs (``--resume`` compares it with the input)
    reason: str  # not scored: why


class AuditRecordLineDict(_AuditRecordLineDictRequired, total=False):
    loss: AuditRecordLossDict  # with a model
    settings: dict[str, Any]  # with a model: what the line was written with (``--resume`` compares them)
