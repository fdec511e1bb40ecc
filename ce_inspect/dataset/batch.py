"""A JSONL data set through the model: records -> length-sorted padded batches -> results in input order.

The flow is ``read_records -> scan_dataset -> run_scan``:

- ``read_records`` parses the file line by line; a line that cannot become an example carries the reason
  instead of raising, so the caller decides whether to stop or skip.
- ``scan_dataset`` encodes every record once, before any forward pass: a bad line stops the run before
  compute is spent, the lengths drive the progress bar, and ``--resume`` is checked against the input.
  Only lengths are kept; the second pass re-encodes, so memory does not grow with the data set.
- ``run_scan`` reads the records again in windows of ``sort_window`` examples, sorts each window by
  length (longest first, so an out-of-memory batch shows up at once), packs it into batches with
  ``plan_batches`` and scores every batch with ``scoring.score_batch``, the same code path as one example
  alone. Results are emitted in input order as soon as everything before them is done; a window bounds
  both the results held in memory and the work an interrupted run loses.

The data-set figures are what training reports over the flattened data set: the token-weighted mean is
``sum(loss) / scored tokens``, i.e. ``CrossEntropyLoss(reduction="mean")`` over every example's shifted
logits and labels concatenated; the example-weighted mean averages the per-example means instead.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ce_inspect.contract import (
    SCHEMA_VERSION,
    BatchingDict,
    BatchLineDict,
    BatchSummaryDict,
    ScoreResult,
    SkippedDict,
    WorstExampleDict,
    WorstTokenDict,
    as_read_back,
    batch_line_from_dict,
    dumps,
    perplexity,
)
from ce_inspect.data import DataInfo, Fields, Record, encode_record, open_data, read_records
from ce_inspect.display import histogram
from ce_inspect.errors import InputError, InvalidRecordError, NonFiniteError, ResumeError
from ce_inspect.model import check_model_unchanged
from ce_inspect.scoring import ScoreOptions, score_examples
from ce_inspect.text import Encoded, Layout, check_stride

if TYPE_CHECKING:
    from ce_inspect.files import OutputTarget
    from ce_inspect.model import LoadedModel

#: Per forward pass, when not given: at most this many padded positions (rows x longest example) and
#: this many rows, by device kind. On CPU a forward pass is compute-bound and a matmul of a few hundred
#: rows already runs at full speed, so the budget only has to gather short examples into such passes
#: while a long one goes alone (bench/batch_budget.py measures 512 to 8,192 on 2 cores); on an
#: accelerator a larger pass keeps the device busy, and 16,384 positions of a ~1B-parameter model's
#: activations still fit in a few GiB (chosen from that estimate, not yet measured on a GPU).
DEFAULT_MAX_TOKENS = {"cpu": 2048, "accelerator": 16384}
DEFAULT_MAX_ROWS = {"cpu": 64, "accelerator": 256}
#: A batch takes no example that would make more than this fraction of its positions padding: padding
#: is computed and thrown away, while one more forward pass costs little next to it.
DEFAULT_MAX_PADDING = 0.1
#: Examples sorted by length together. Their results wait in memory until everything before them in the
#: input is written, so the window bounds memory; 512 records of a long-tailed set sort well enough.
DEFAULT_SORT_WINDOW = 512
DEFAULT_WORST = 10
PADDING_SIDES = ("right", "left")


# --- per-example figures and the data-set summary -------------------------------------------------------


@dataclass(frozen=True)
class WorstToken:
    """One scored token, located in the data set, for the list of highest losses."""

    line: int
    id: str | int | None
    index: int
    token: str
    token_id: int
    segment: str
    loss: float
    prob: float
    rank: int

    def to_dict(self) -> WorstTokenDict:
        return {
            "line": self.line,
            "id": self.id,
            "index": self.index,
            "token": self.token,
            "token_id": self.token_id,
            "segment": self.segment,
            "loss": self.loss,
            "prob": self.prob,
            "rank": self.rank,
        }


def fingerprint_targets(targets: Sequence[tuple[int, int]]) -> str:
    """A digest of the (position, token id) of every scored target: what resume compares with the input.
    Stable across processes and versions of Python, so an output line can carry it (``audit``'s do)."""
    import hashlib

    return hashlib.blake2b(json.dumps([list(t) for t in targets]).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class ExampleStats:
    """What the data-set summary needs of one scored example (also rebuilt from an output line)."""

    line: int
    id: str | int | None
    count: int
    loss_sum: float
    mean: float
    nll_sum: float
    greedy_hits: int
    sequence_tokens: int
    fingerprint: str  # fingerprint_targets of its scored targets
    #: What another command's report needs to rebuild its summary from the line (``diff``: every token's
    #: figures); None for ``batch``, whose summary needs only the fields above.
    payload: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_result(cls, line: int, rid: str | int | None, result: ScoreResult) -> ExampleStats:
        s = result.summary
        return cls(
            line=line,
            id=rid,
            count=s.count,
            loss_sum=s.sum,
            mean=s.mean,
            nll_sum=-math.fsum(t.logprob for t in result.tokens),
            greedy_hits=s.greedy_hits,
            sequence_tokens=len(result.sequence),
            fingerprint=fingerprint_targets([(t.index, t.token_id) for t in result.tokens]),
        )

    def to_dict(self) -> WorstExampleDict:
        return {"line": self.line, "id": self.id, "mean": self.mean, "sum": self.loss_sum, "count": self.count}


def worst_tokens_of(line: int, rid: str | int | None, result: ScoreResult, n: int) -> list[WorstToken]:
    top = heapq.nlargest(n, result.tokens, key=lambda t: t.loss)
    return [WorstToken(line, rid, t.index, t.token, t.token_id, t.segment, t.loss, t.prob, t.rank) for t in top]


@dataclass(frozen=True)
class Skipped:
    line: int
    id: str | int | None
    reason: str

    def to_dict(self) -> SkippedDict:
        return {"line": self.line, "id": self.id, "reason": self.reason}


@dataclass
class BatchStats:
    """How this run batched its work (resumed examples excluded)."""

    batch_size: int | None
    max_tokens: int | None
    padding_side: str
    batches: int = 0
    examples: int = 0
    sequence_tokens: int = 0  # real tokens run through the model
    padded_positions: int = 0  # rows x width summed over batches: what the forward passes computed
    seconds: float = 0.0

    @property
    def padding_fraction(self) -> float | None:
        if not self.padded_positions:
            return None
        return 1.0 - self.sequence_tokens / self.padded_positions

    @property
    def tokens_per_second(self) -> float | None:
        return self.sequence_tokens / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> BatchingDict:
        return {
            "batch_size": self.batch_size,
            "max_tokens": self.max_tokens,
            "padding_side": self.padding_side,
            "batches": self.batches,
            "examples": self.examples,
            "sequence_tokens": self.sequence_tokens,
            "padded_positions": self.padded_positions,
            "padding_fraction": self.padding_fraction,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass(frozen=True)
class DatasetSummary:
    """The data-set figures. ``token_weighted_mean_loss`` is what a training step over the whole set reports."""

    model: str
    device: str
    dtype: str
    input: str
    output: str | None
    examples: int  # scored examples, resumed ones included
    resumed: int  # of which were read back from the output file (--resume)
    scored_tokens: int
    loss_sum: float
    nll_sum: float
    example_weighted_mean_loss: float | None
    greedy_hits: int
    label_smoothing: float
    ignore_index: int
    worst_examples: tuple[ExampleStats, ...]
    worst_tokens: tuple[WorstToken, ...]
    skipped: tuple[Skipped, ...]
    batching: BatchStats
    data: DataInfo | None = None  # the file kind and record format read
    #: Per-example mean losses counted in round bins (``display.histogram``): the shape of the data set.
    example_loss_histogram: dict[str, list[Any]] = field(default_factory=lambda: histogram([]))

    @property
    def token_weighted_mean_loss(self) -> float | None:
        """sum(loss) / scored tokens: CrossEntropyLoss(reduction='mean') over the flattened data set."""
        return self.loss_sum / self.scored_tokens if self.scored_tokens else None

    @property
    def mean_nll(self) -> float | None:
        """Token-weighted mean of -log p(target); equals the mean loss unless label smoothing is on."""
        return self.nll_sum / self.scored_tokens if self.scored_tokens else None

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.mean_nll) if self.mean_nll is not None else None

    def to_dict(self) -> BatchSummaryDict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "batch_summary",
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "input": self.input,
            "output": self.output,
            "examples": self.examples,
            "resumed": self.resumed,
            "skipped_count": len(self.skipped),
            "scored_tokens": self.scored_tokens,
            "token_weighted_mean_loss": self.token_weighted_mean_loss,
            "example_weighted_mean_loss": self.example_weighted_mean_loss,
            "loss_sum": self.loss_sum,
            "mean_nll": self.mean_nll,
            "perplexity": self.perplexity,
            "greedy_hits": self.greedy_hits,
            "label_smoothing": self.label_smoothing,
            "ignore_index": self.ignore_index,
            "worst_examples": [e.to_dict() for e in self.worst_examples],
            "worst_tokens": [t.to_dict() for t in self.worst_tokens],
            "skipped": [s.to_dict() for s in self.skipped],
            "batching": self.batching.to_dict(),
            "example_loss_histogram": {
                "edges": list(self.example_loss_histogram["edges"]),
                "counts": list(self.example_loss_histogram["counts"]),
            },
            **({"data": self.data.to_dict()} if self.data is not None else {}),
        }


class SummaryBuilder:
    """Accumulates examples in input order; keeps only the ``worst`` highest examples and tokens."""

    def __init__(self, worst: int = DEFAULT_WORST) -> None:
        self.worst = worst
        self.examples = 0
        self.resumed = 0
        self.tokens = 0
        self.greedy_hits = 0
        self._loss_sums: list[float] = []
        self._nll_sums: list[float] = []
        self._means: list[float] = []
        self._worst_examples: list[tuple[float, int, ExampleStats]] = []  # min-heap of (mean, -line, stats)
        self._worst_tokens: list[tuple[float, int, int, WorstToken]] = []  # min-heap of (loss, -line, -index, tok)
        self.skipped: list[Skipped] = []

    def add(self, stats: ExampleStats, *, resumed: bool = False) -> None:
        self.examples += 1
        self.resumed += resumed
        self.tokens += stats.count
        self.greedy_hits += stats.greedy_hits
        self._loss_sums.append(stats.loss_sum)
        self._nll_sums.append(stats.nll_sum)
        self._means.append(stats.mean)
        if self.worst:
            _push(self._worst_examples, (stats.mean, -stats.line, stats), self.worst)

    def add_tokens(self, tokens: Sequence[WorstToken]) -> None:
        if self.worst:
            for t in tokens:
                _push(self._worst_tokens, (t.loss, -t.line, -t.index, t), self.worst)

    def skip(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)

    def finish(
        self,
        lm: LoadedModel,
        *,
        input: str,
        output: str | None,
        label_smoothing: float,
        ignore_index: int,
        batching: BatchStats,
        data: DataInfo | None = None,
    ) -> DatasetSummary:
        return DatasetSummary(
            model=lm.name,
            device=lm.device,
            dtype=lm.dtype,
            input=input,
            output=output,
            examples=self.examples,
            resumed=self.resumed,
            scored_tokens=self.tokens,
            loss_sum=math.fsum(self._loss_sums),
            nll_sum=math.fsum(self._nll_sums),
            example_weighted_mean_loss=math.fsum(self._means) / len(self._means) if self._means else None,
            greedy_hits=self.greedy_hits,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            worst_examples=tuple(item[-1] for item in sorted(self._worst_examples, reverse=True)),
            worst_tokens=tuple(item[-1] for item in sorted(self._worst_tokens, key=lambda x: x[:3], reverse=True)),
            skipped=tuple(self.skipped),
            batching=batching,
            data=data,
            example_loss_histogram=histogram(self._means),
        )


def _push(heap: list[Any], item: tuple[Any, ...], n: int) -> None:
    # Keys are unique (line, and index within a line), so tuples never compare their last element.
    if len(heap) < n:
        heapq.heappush(heap, item)
    elif item[:-1] > heap[0][:-1]:
        heapq.heapreplace(heap, item)


# --- resume: what an existing output file already holds -------------------------------------------------


@dataclass(frozen=True)
class ResumeState:
    """The complete lines of an output file; ``size`` bytes of it are kept, any torn tail is cut off."""

    path: Path
    size: int
    torn_bytes: int
    examples: dict[int, ExampleStats]  # by input line
    worst_tokens: tuple[WorstToken, ...]
    settings: dict[str, Any]  # what every line was written with (``line_settings``); {} for an empty file
    # distributed: False for the union of torchrun part files, whose lines are not a prefix of the input
    ordered: bool = True
    #: Input lines whose output line records no scored example (``audit``'s records the model could not
    #: score: the line holds their findings); the scan leaves them invalid and the runner does not rewrite them.
    others: frozenset[int] = frozenset()

    @property
    def last_line(self) -> int:
        return max(max(self.examples, default=0), max(self.others, default=0))


#: How every output line starts (``output_line`` puts ``schema_version`` first). A torn last line is
#: dropped on resume only if it starts like this (or is a shorter piece of it): bytes that do not are
#: not ours, and ce-inspect never deletes what it did not write.
LINE_PREFIX = b'{"schema_version": '


def _is_our_torn_line(raw: bytes) -> bool:
    return raw.startswith(LINE_PREFIX) or LINE_PREFIX.startswith(raw)


#: One parsed output line (and ``worst``) -> what resume keeps of it; ``ValueError``/``KeyError``/``TypeError``
#: when the line is not one the command writes. Stats that count no scored token mark a line of ours that
#: records no score (``ResumeState.others``).
LineParser = Callable[[Any, int], "tuple[ExampleStats, list[WorstToken]]"]


def read_resume(
    path: str | os.PathLike[str],
    worst: int = DEFAULT_WORST,
    *,
    parse: LineParser | None = None,
    command: str = "batch",
) -> ResumeState:
    """Read back an output file of ``command`` (``batch``'s lines, or those ``parse`` reads: ``diff``'s):
    every complete line must be a result written with the same settings; a torn last line (no newline: a
    ``kill -9`` mid-write) is dropped only if it is recognisably the start of one of our lines. Anything else
    means the file is not ours: refuse it, change nothing.
    """
    path = Path(path)
    parse = parse or _stats_from_line
    examples: dict[int, ExampleStats] = {}
    others: set[int] = set()
    last = 0
    tokens: list[tuple[float, int, int, WorstToken]] = []
    settings: dict[str, Any] | None = None
    size = 0
    try:
        with open(path, "rb") as fh:
            for k, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    if not _is_our_torn_line(raw):
                        raise ResumeError(
                            f"`resume`: {path} ends with {len(raw)} bytes that ce-inspect did not write (its lines "
                            f'start with {{"schema_version": ...); give a file written by `ce-inspect {command}`, or '
                            "start over with `force`"
                        )
                    break  # torn: the writer never finished this line
                obj, stats, example_tokens = _read_line(path, k, raw, worst, parse, command)
                if stats.line <= last:
                    raise ResumeError(
                        f"`resume`: line {k} of {path} repeats or goes back to input line {stats.line}; the file "
                        "was edited or written by two runs at once; start over with `force`"
                    )
                line_settings_ = obj.get("settings")
                if settings is None:
                    settings = _first_settings(path, line_settings_)
                elif line_settings_ != settings:
                    raise ResumeError(
                        f"`resume`: line {k} of {path} was written with other settings than line 1; the file "
                        "mixes two runs, start over with `force`"
                    )
                last = stats.line
                if not stats.count:
                    others.add(stats.line)
                    size += len(raw)
                    continue
                examples[stats.line] = stats
                if worst:
                    for t in example_tokens:
                        _push(tokens, (t.loss, -t.line, -t.index, t), worst)
                size += len(raw)
        total = path.stat().st_size
    except OSError as exc:
        raise ResumeError(f"`resume`: cannot read {path} ({exc.strerror})") from None
    return ResumeState(
        path=path,
        size=size,
        torn_bytes=total - size,
        examples=examples,
        worst_tokens=tuple(item[-1] for item in tokens),
        settings=settings or {},
        others=frozenset(others),
    )


def _read_line(
    path: Path, k: int, raw: bytes, worst: int, parse: LineParser, command: str
) -> tuple[dict[str, Any], ExampleStats, list[WorstToken]]:
    try:
        obj = json.loads(raw.decode("utf-8"))
        stats, example_tokens = parse(obj, worst)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ResumeError(
            f"`resume`: line {k} of {path} is not a complete ce-inspect {command} result ({_why(exc)}); "
            f"give a file written by `ce-inspect {command}`, or start over with `force`"
        ) from None
    return obj, stats, example_tokens


def _first_settings(path: Path, settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ResumeError(
            f"`resume`: {path} does not record the settings it was written with (an older ce-inspect wrote it); "
            "start over with `force`"
        )
    return settings


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON: {exc.msg}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _stats_from_line(obj: Any, worst: int) -> tuple[ExampleStats, list[WorstToken]]:
    # The line is parsed by the contract itself: exactly the keys and types of result.BatchLineDict.
    line, rid, result = batch_line_from_dict(obj)
    if line < 1 or not result.tokens:
        raise ValueError("no input line number or no scored tokens")
    if result.summary.count != len(result.tokens):
        raise ValueError(f"summary counts {result.summary.count} tokens but {len(result.tokens)} are listed")
    # Lines written with --no-sequence have no sequence view; the layout always counts its tokens.
    stats = replace(ExampleStats.from_result(line, rid, result), sequence_tokens=result.layout["sequence_tokens"])
    return stats, worst_tokens_of(line, rid, result, worst) if worst else []


def line_settings(
    lm: LoadedModel,
    layout: Layout,
    options: ScoreOptions,
    fields: Fields | None = None,
    *,
    sequence: bool | None = None,
) -> dict[str, Any]:
    """Everything besides its record that an output line's content depends on; each line carries it.

    The model (its name and, when known, the fingerprint of its config, tokenizer and weights), the dtype,
    every layout and scoring option and the record fields. Left out: the device, batch size, padding side
    and head chunk size, which change figures only within float tolerance. ``sequence=None`` leaves that
    key out (the scan does not know it; ``run_scan`` compares it).
    """
    from dataclasses import asdict

    scoring = {k: v for k, v in asdict(options).items() if k not in ("chunk_tokens", "chunk_bytes")}
    settings: dict[str, Any] = {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "dtype": lm.dtype,
        **asdict(layout),
        **scoring,
        "fields": asdict(fields or Fields()),
    }
    if sequence is not None:
        settings["sequence"] = sequence
    return as_read_back(settings)


def check_resume_settings(state: ResumeState, current: dict[str, Any]) -> None:
    """Refuse to continue a file written with another model or any option that changes a line."""
    if not state.examples and not state.others:
        return
    for key, value in current.items():
        old = state.settings.get(key)
        if key.endswith("_fingerprint"):  # model_fingerprint, and diff's model_b_fingerprint
            if old is not None and value is not None and old != value:
                raise ResumeError(
                    f"`resume`: {state.path} was written by a model whose config, tokenizer or weights differ "
                    f"from this one's (fingerprint {str(old)[:12]} vs {str(value)[:12]}); start over with `force`"
                )
            continue
        if old != value:
            raise ResumeError(
                f"`resume`: {state.path} was written with {_setting(key, old)}, this run has {_setting(key, value)}; "
                "resume with the same options, or start over with `force`"
            )


def _setting(key: str, value: Any) -> str:
    """One setting as a resume error shows it. A switch is shown as the lines' ``settings`` hold it: its option
    may be the negation (``sequence`` is --no-sequence), so "--no-sequence True" would say the opposite."""
    if isinstance(value, bool):
        return f'"{key}": {json.dumps(value)}'
    if value is None:
        return f"no `{key}`"
    return f"`{key}` {value!r}"


# --- the scan: every record encoded once, before any forward pass ---------------------------------------


@dataclass(frozen=True)
class Entry:
    """One input record as the scan found it: to score, already done (resume), or invalid."""

    line: int
    id: str | int | None
    length: int = 0  # sequence tokens of the encoded example
    scored: int = 0  # scored targets
    error: str | None = None
    done: ExampleStats | None = None
    #: An invalid entry whose output line the resumed file already holds (``ResumeState.others``).
    kept: bool = False

    @property
    def pending(self) -> bool:
        return self.error is None and self.done is None


@dataclass(frozen=True)
class Scan:
    path: Path
    fields: Fields
    layout: Layout
    entries: tuple[Entry, ...]
    resume: ResumeState | None = None
    info: DataInfo | None = None  # what was read: file kind, format (forced or detected), split
    label: str | None = None  # how messages and the summary name the input (e.g. "<stdin>" for stdin)
    #: record -> example; None: ``encode_record`` with the scanning model (``diff`` checks both tokenizers).
    encoder: Callable[[Record], Encoded] | None = None
    # distributed: the entries are one rank's share; the records between them are other ranks'
    subset: bool = False

    @property
    def name(self) -> str:
        return self.label if self.label is not None else str(self.path)

    def records(self) -> Iterator[Record]:
        fmt = self.info.format if self.info is not None and self.info.forced else None
        split = self.info.split if self.info is not None else None
        return read_records(self.path, self.fields, format=fmt, split=split)

    @property
    def pending(self) -> list[Entry]:
        return [e for e in self.entries if e.pending]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.error is not None]


def scan_dataset(
    lm: LoadedModel,
    path: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    fields: Fields | None = None,
    skip_invalid: bool = False,
    resume: ResumeState | None = None,
    format: str | None = None,
    split: str | None = None,
    info: DataInfo | None = None,
    label: str | None = None,
    encoder: Callable[[Record], Encoded] | None = None,
) -> Scan:
    """Encode every record; stop at the first bad one unless ``skip_invalid``; match ``resume`` to the input.

    ``format`` forces the record format (else detected per record), ``split`` picks a dataset's split;
    ``info``, from ``data.open_data``, saves opening the data a second time to describe it. ``label``
    names the input in messages and the summary when ``path`` is a stand-in (stdin's spool).
    ``encoder`` replaces ``encode_record(lm, record, layout)`` (its InputError marks the record invalid).
    """
    path, layout, fields = Path(path), layout or Layout(), fields or Fields()
    name = label if label is not None else str(path)
    check_stride(layout.stride, lm.context_length)  # once, not as an error of every long record
    if info is None:
        info = open_data(path, fields, format=format, split=split)
    if label is not None:
        info = replace(info, path=label)  # error messages name what the user gave
    if resume is not None:
        check_resume_settings(resume, line_settings(lm, layout, options or ScoreOptions(), fields))
    scan = Scan(path=path, fields=fields, layout=layout, entries=(), resume=resume, info=info)
    entries = [
        _scan_entry(lm, record, layout, info, skip_invalid=skip_invalid, resume=resume, encoder=encoder)
        for record in scan.records()
    ]
    if not entries:
        raise InputError(f"{name} holds no records")
    if resume is not None:
        _check_resume_covered(resume, entries, name)
    return Scan(
        path=path,
        fields=fields,
        layout=layout,
        entries=tuple(entries),
        resume=resume,
        info=info,
        label=label,
        encoder=encoder,
    )


def _encode_for_scan(
    lm: LoadedModel, record: Record, layout: Layout, encoder: Callable[[Record], Encoded] | None
) -> tuple[Encoded | None, str | None]:
    """The record's example, or why it has none: its read error, the encoder's InputError, or no scored token."""
    reason = record.error
    encoded: Encoded | None = None
    if reason is None:
        try:
            encoded = encoder(record) if encoder else encode_record(lm, record, layout)
        except InputError as exc:
            reason = str(exc)
        if encoded is not None and not encoded.scored_positions:
            reason, encoded = "no token of it is scored (every label is ignored)", None
    return encoded, reason


def _scan_entry(
    lm: LoadedModel,
    record: Record,
    layout: Layout,
    info: DataInfo,
    *,
    skip_invalid: bool,
    resume: ResumeState | None,
    encoder: Callable[[Record], Encoded] | None,
) -> Entry:
    """One record's entry: read back from ``resume``, invalid (only with ``skip_invalid``), or to score.

    Raises where the record and the resumed file disagree, so a resume never mixes two inputs' results.
    """
    encoded, reason = _encode_for_scan(lm, record, layout, encoder)
    done = resume.examples.get(record.line) if resume is not None else None
    kept = resume is not None and record.line in resume.others
    if kept and reason is None:
        raise ResumeError(
            f"`resume`: input line {record.line}{_id_note(record.id)} can be scored now but {resume.path} "  # type: ignore[union-attr]
            "holds no score for it; the input or the options changed since, start over with `force`"
        )
    if done is not None:
        _check_done(resume, record, encoded, done, reason)  # type: ignore[arg-type]
        return Entry(record.line, record.id, done.sequence_tokens, done.count, done=done)
    if reason is not None:
        if not skip_invalid:
            raise InvalidRecordError(f"{info.where(record)}: {reason} (fix the {info.unit}, or pass --skip-invalid)")
        return Entry(record.line, record.id, error=reason, kept=kept)
    assert encoded is not None
    if resume is not None and resume.ordered and record.line < resume.last_line:
        raise ResumeError(
            f"`resume`: {resume.path} has results up to input line {resume.last_line} but none for line "
            f"{record.line}, which is valid now; the input changed since, start over with `force`"
        )
    return Entry(record.line, record.id, len(encoded), len(encoded.scored_positions))


def _check_resume_covered(resume: ResumeState, entries: list[Entry], name: str) -> None:
    """Refuse a resumed file that holds a result for an input line the input does not have."""
    missing = sorted((set(resume.examples) | resume.others) - {e.line for e in entries})
    if missing:
        raise ResumeError(
            f"`resume`: {resume.path} has a result for input line {missing[0]}, which {name} does not have; "
            "it was written for another input, start over with `force`"
        )


def _id_note(rid: str | int | None) -> str:
    return "" if rid is None else f" (id {rid!r})"


def _check_done(state: ResumeState, record: Record, encoded: Encoded | None, done: ExampleStats, reason: str | None):
    where = f"`resume`: input line {record.line}{_id_note(record.id)}"
    if done.id != record.id:
        raise ResumeError(
            f"{where} has id {record.id!r} but {state.path} holds id {done.id!r} for it; "
            "the output belongs to another input, start over with `force`"
        )
    if encoded is None:
        raise ResumeError(f"{where} cannot be scored now ({reason}) but {state.path} holds a result for it")
    targets = [(p, encoded.input_ids[p]) for p in encoded.scored_positions]
    if fingerprint_targets(targets) != done.fingerprint or len(encoded) != done.sequence_tokens:
        raise ResumeError(
            f"{where} does not encode to the tokens {state.path} holds for it; the input or the layout "
            "options changed since, resume with the same ones or start over with `force`"
        )


# --- batching -------------------------------------------------------------------------------------------


def device_kind(device: str) -> str:
    """``cpu`` or ``accelerator``: which batching defaults suit ``device`` (``cuda:0``, ``mps``, ...)."""
    return "cpu" if device.split(":")[0] == "cpu" else "accelerator"


@dataclass(frozen=True)
class BatchSettings:
    """How ``run_scan`` groups examples: at most ``batch_size`` rows and ``max_tokens`` padded positions per
    forward pass; ``None`` takes the device's default (``resolved``)."""

    batch_size: int | None = None
    max_tokens: int | None = None
    padding_side: str = "right"
    max_padding: float | None = DEFAULT_MAX_PADDING
    sort_window: int = DEFAULT_SORT_WINDOW
    worst: int = DEFAULT_WORST
    sequence: bool = True  # keep each result's whole-sequence view in the output lines

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError(f"`max_tokens` must be at least 1, got {self.max_tokens}")
        if self.padding_side not in PADDING_SIDES:
            raise InputError(f"`padding_side` must be left or right, got {self.padding_side!r}")
        if self.max_padding is not None and not 0.0 <= self.max_padding < 1.0:
            raise InputError(f"`max_padding` must be a fraction in [0, 1), got {self.max_padding}")
        if self.sort_window < 1:
            raise InputError(f"`sort_window` must be at least 1 example, got {self.sort_window}")
        if self.worst < 0:
            raise InputError(f"`worst` must be 0 or more, got {self.worst}")

    def resolved(self, device: str) -> BatchSettings:
        """These settings with each unset limit taken from ``device``'s defaults."""
        kind = device_kind(device)
        return replace(
            self,
            batch_size=self.batch_size if self.batch_size is not None else DEFAULT_MAX_ROWS[kind],
            max_tokens=self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS[kind],
        )


def plan_batches(
    lengths: Sequence[int],
    batch_size: int | None,
    max_tokens: int | None = None,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Indices into ``lengths``, longest first, packed into batches.

    A batch holds at most ``batch_size`` examples, at most ``max_tokens`` padded positions (rows x its
    longest example) and at most a ``max_padding`` fraction of padding; an example longer than
    ``max_tokens`` on its own still gets a batch of one. As lengths only fall, the padding bound cuts
    the sorted list into bands of similar length, whose number grows with the log of the length range.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0  # real tokens in current
    for i in order:
        if current:
            rows, width = len(current) + 1, lengths[current[0]]  # the longest: the list is sorted
            full = batch_size is not None and rows > batch_size
            over = max_tokens is not None and rows * width > max_tokens
            padded = max_padding is not None and rows * width - tokens - lengths[i] > max_padding * rows * width
            if full or over or padded:
                batches.append(current)
                current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches


def output_line(
    entry: Entry, result: ScoreResult, *, sequence: bool = True, settings: dict[str, Any] | None = None
) -> BatchLineDict:
    """One output line: ``run --json``'s document plus the record's ``id`` (null if none) and ``line``,
    and the ``settings`` it was written with (``line_settings``), which ``--resume`` compares."""
    d: dict[str, Any] = dict(result.to_dict())
    out = {"schema_version": d.pop("schema_version"), "id": entry.id, "line": entry.line, **d}
    if not sequence:
        del out["sequence"]
    if settings is not None:
        out["settings"] = settings
    return out  # type: ignore[return-value]


ProgressCallback = Callable[[int, int], None]  # (examples, sequence tokens) just scored
ScoreFunction = Callable[[list[Encoded]], list[Any]]  # one batch of examples -> one result each, in order


def _score_in_order(
    lm: LoadedModel,
    scan: Scan,
    options: ScoreOptions,
    settings: BatchSettings,
    stats: BatchStats,
    on_batch: ProgressCallback | None,
    score: ScoreFunction,
) -> Iterator[tuple[Entry, Any]]:
    records = scan.records()
    where = f"{scan.name} {scan.info.unit if scan.info is not None else 'line'}"  # + " N": names an input record
    window: list[tuple[Entry, Encoded | None]] = []
    pending = 0
    for entry in scan.entries:
        record = next(records, None)
        while scan.subset and record is not None and record.line < entry.line:  # distributed: not ours
            record = next(records, None)
        if record is None or record.line != entry.line:
            raise InputError(f"{scan.name} changed while it was being scored; run again")
        encoder = scan.encoder or (lambda r: encode_record(lm, r, scan.layout))
        # A resumed example is encoded and counts towards its window as in the run that wrote it, so a run
        # resumed inside a window forms that run's windows and batches (and gives its figures).
        encoded = encoder(record) if entry.error is None else None
        window.append((entry, encoded))
        pending += encoded is not None
        if pending >= settings.sort_window:
            yield from _score_window(where, window, settings, stats, on_batch, score)
            window, pending = [], 0
    yield from _score_window(where, window, settings, stats, on_batch, score)


def _score_window(
    where: str,
    window: list[tuple[Entry, Encoded | None]],
    settings: BatchSettings,
    stats: BatchStats,
    on_batch: ProgressCallback | None,
    score: ScoreFunction,
) -> Iterator[tuple[Entry, Any]]:
    todo = [i for i, (_, encoded) in enumerate(window) if encoded is not None]
    lengths = [len(window[i][1]) for i in todo]  # type: ignore[arg-type]
    results: dict[int, Any] = {}
    emitted = 0
    for planned in plan_batches(lengths, settings.batch_size, settings.max_tokens, settings.max_padding):
        # Resumed examples were planned with the rest, so the batches are those of an uninterrupted run: a
        # batch of resumed examples only is skipped, one that mixes them with others is scored whole (the
        # resumed rows' results are dropped), so the others sum exactly as they would have.
        batch = [j for j in planned if window[todo[j]][0].pending]
        if not batch:
            continue
        rows = [todo[j] for j in batch]
        examples = [window[todo[j]][1] for j in planned]
        try:
            scored = score(examples)  # type: ignore[arg-type]
        except NonFiniteError as exc:
            at = next((todo[j] for j in planned if window[todo[j]][1] is exc.example), None)
            if at is None:
                raise
            entry = window[at][0]
            raise NonFiniteError(
                f"{where} {entry.line}{_id_note(entry.id)}: {exc}",
                example=exc.example,
                scored=exc.scored,
                why=exc.why,
                target=exc.target,
            ) from None
        results.update((todo[j], result) for j, result in zip(planned, scored) if window[todo[j]][0].pending)
        tokens = sum(lengths[j] for j in batch)
        stats.batches += 1
        stats.examples += len(rows)
        stats.sequence_tokens += tokens
        stats.padded_positions += len(rows) * max(lengths[j] for j in planned)
        if on_batch is not None:
            on_batch(len(rows), tokens)
        # Emit in input order everything that no longer waits on an unscored example before it.
        while emitted < len(window) and (not window[emitted][0].pending or emitted in results):
            yield window[emitted][0], results.pop(emitted, None)
            emitted += 1
    for entry, _ in window[emitted:]:
        yield entry, None


def run_scan(
    lm: LoadedModel,
    scan: Scan,
    sink: JsonlSink,
    *,
    options: ScoreOptions | None = None,
    settings: BatchSettings | None = None,
    on_batch: ProgressCallback | None = None,
    score: ScoreFunction | None = None,
    report: Any = None,
    emit: Callable[[Entry, ScoreResult | None], dict[str, Any] | None] | None = None,
) -> Any:
    """Score the scan's pending examples, write each output line in input order, and sum up the data set.

    ``score`` (a batch of examples -> results) and ``report`` (each result's output line and the data-set
    summary; see ``BatchReport``) default to ``batch``'s own; ``diff`` passes its two-model ones. ``emit``
    replaces the report's output line: it sees every entry not resumed, in input order (with its result,
    or None when the entry was not scored), and returns the line to write or None (``audit``). Batch
    limits left unset in ``settings`` take the device's defaults.
    """
    options, settings = options or ScoreOptions(), (settings or BatchSettings()).resolved(lm.device)
    stats = BatchStats(settings.batch_size, settings.max_tokens, settings.padding_side)
    if score is None:

        def score(examples: list[Encoded]) -> list[Any]:
            # Text longer than the context is scored in windows (`stride`); the rest in one padded pass.
            return score_examples(lm, examples, options, padding_side=settings.padding_side)

    report = report or BatchReport(lm, scan, options, settings)
    start = time.perf_counter()
    for entry, result in _score_in_order(lm, scan, options, settings, stats, on_batch, score):
        if result is not None:  # a change to the weight files during its pass: no line of it is written
            check_model_unchanged(lm)
        line = emit(entry, result) if emit is not None and entry.done is None and not entry.kept else None
        if line is not None:
            sink.write(line)
        if entry.error is not None:
            report.skip(Skipped(entry.line, entry.id, entry.error))
        elif entry.done is not None:
            report.resumed(entry)
        else:
            assert result is not None
            if emit is None:
                sink.write(report.line(entry, result))
            report.add(entry, result)
    stats.seconds = time.perf_counter() - start
    return report.finish(output=sink.name, batching=stats)


class BatchReport:
    """What ``batch`` writes and sums for each example: ``run``'s document per line (with the settings
    ``--resume`` compares), the loss summary."""

    def __init__(self, lm: LoadedModel, scan: Scan, options: ScoreOptions, settings: BatchSettings) -> None:
        self.lm, self.scan, self.options, self.settings = lm, scan, options, settings
        self.written = line_settings(lm, scan.layout, options, scan.fields, sequence=settings.sequence)
        self.builder = SummaryBuilder(settings.worst)
        if scan.resume is not None:
            check_resume_settings(scan.resume, self.written)
            self.builder.add_tokens(scan.resume.worst_tokens)

    def line(self, entry: Entry, result: ScoreResult) -> BatchLineDict:
        return output_line(entry, result, sequence=self.settings.sequence, settings=self.written)

    def add(self, entry: Entry, result: ScoreResult) -> None:
        self.builder.add(ExampleStats.from_result(entry.line, entry.id, result))
        self.builder.add_tokens(worst_tokens_of(entry.line, entry.id, result, self.settings.worst))

    def resumed(self, entry: Entry) -> None:
        self.builder.add(entry.done, resumed=True)  # type: ignore[arg-type]

    def skip(self, skipped: Skipped) -> None:
        self.builder.skip(skipped)

    def finish(self, *, output: str | None, batching: BatchStats) -> DatasetSummary:
        return self.builder.finish(
            self.lm,
            input=self.scan.name,
            output=output,
            label_smoothing=self.options.label_smoothing,
            ignore_index=self.scan.layout.ignore_index,
            batching=batching,
            data=self.scan.info,
        )


# --- output: whole lines only ---------------------------------------------------------------------------


class JsonlSink:
    """Writes one JSON document per line, each flushed as soon as it is complete.

    Only whole lines stay in a regular file: if writing a line is interrupted (Ctrl-C, an error), leaving
    the ``with`` block cuts the file back to the end of the last complete line. A ``kill -9`` can still
    tear the last line; ``read_resume`` drops such a tail. A FIFO, a device or ``/dev/stdout`` is written
    through (see ``files``); nothing there can be cut back or resumed.
    """

    def __init__(
        self,
        stream: IO[bytes] | IO[str],
        *,
        name: str | None,
        committed: int = 0,
        lines: int = 0,
        regular: bool = True,
    ) -> None:
        self._stream = stream
        self.name = name  # the file's path, or None for stdout
        self.committed = committed  # bytes of complete lines
        self.lines = lines  # complete lines in the file, resumed ones included
        self.regular = regular  # a regular file, which can be cut back to its last complete line

    @classmethod
    def to_stdout(cls, stream: IO[str]) -> JsonlSink:
        return cls(stream, name=None)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, resume: ResumeState | None = None) -> JsonlSink:
        """A fresh output (a regular file emptied in place, keeping its mode and links), or the resumed
        file cut back to its last complete line."""
        from ce_inspect.files import open_stream

        path = Path(path)
        try:
            if resume is None:
                fh, regular = open_stream(path)  # closed in __exit__
                return cls(fh, name=str(path), regular=regular)
            fh = open(path, "r+b", buffering=0)
            fh.truncate(resume.size)
            fh.seek(resume.size)
            return cls(fh, name=str(path), committed=resume.size, lines=len(resume.examples))
        except OSError as exc:
            raise InputError(f"`output` {path}: cannot write it ({exc.strerror})") from None

    def write(self, obj: Any) -> None:
        text = dumps(obj) + "\n"
        if self.name is None:
            self._stream.write(text)  # type: ignore[arg-type]
            self._stream.flush()
        else:
            data = memoryview(text.encode("utf-8"))
            try:
                while data:  # a raw file may take fewer bytes than asked
                    written = self._stream.write(data)  # type: ignore[arg-type]
                    data = data[written or 0 :]
            except OSError as exc:
                from ce_inspect.files import stream_write_error

                raise stream_write_error(self.name, exc, lines=self.lines, resumable=self.regular) from None
            self.committed += len(text.encode("utf-8"))
        self.lines += 1

    def close(self) -> None:
        if self.name is not None:
            self._stream.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.name is not None and self.regular and exc_type is not None:
            try:
                self._stream.truncate(self.committed)  # type: ignore[union-attr]
            except OSError:
                pass
        self.close()


def check_batch_output(output: Path, input: str | os.PathLike[str], *, resume: bool, force: bool) -> OutputTarget:
    """The checks of ``files.check_output`` for batch's JSON lines, plus batch's own rule: an existing
    file is continued (``resume``) or replaced (``force``), never silently either. Raises ``InputError``."""
    from ce_inspect.files import check_output

    # An existing file needs resume (and read_resume then checks every byte of it) or force (which
    # replaces whatever is there), so the first-bytes test of check_output has nothing to add.
    target = check_output(output, inputs=[("the input file", input)], label="`output`", force=True)
    if resume and target.exists and not target.regular:
        raise InputError(f"`output` {output}: `resume` continues a regular file, and this is not one")
    if target.exists and target.regular and not (resume or force):
        raise InputError(f"`output` {output} already exists; pass `resume` to continue it or `force` to replace it")
    return target


def output_conflict(output: Path, input: Path, *, resume: bool, force: bool) -> str | None:
    """Why ``output`` must not be written (the message of ``check_batch_output``), or None."""
    try:
        check_batch_output(output, input, resume=resume, force=force)
    except InputError as exc:
        return str(exc)
    return None


__all__ = [
    "BatchSettings",
    "BatchStats",
    "DatasetSummary",
    "Entry",
    "ExampleStats",
    "Fields",
    "JsonlSink",
    "LINE_PREFIX",
    "Record",
    "ResumeState",
    "Scan",
    "Skipped",
    "SummaryBuilder",
    "WorstToken",
    "check_batch_output",
    "check_resume_settings",
    "device_kind",
    "encode_record",
    "line_settings",
    "output_conflict",
    "output_line",
    "plan_batches",
    "read_records",
    "read_resume",
    "run_scan",
    "scan_dataset",
]
