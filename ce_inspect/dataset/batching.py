"""Batching and the run: the batch limits (``BatchSettings`` and the device defaults), ``plan_batches``,
the output line, and ``run_scan``, which scores a scan's examples in length-sorted batches and writes the
results in input order; ``BatchReport`` is what ``batch`` writes and sums for each example.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import BatchLineDict, ScoreResult
from ce_inspect.data import encode_record
from ce_inspect.dataset.resume import check_resume_settings, line_settings
from ce_inspect.dataset.scan import Entry, Scan, id_note
from ce_inspect.dataset.summary import (
    DEFAULT_WORST,
    BatchStats,
    DatasetSummary,
    ExampleStats,
    Skipped,
    SummaryBuilder,
    worst_tokens_of,
)
from ce_inspect.errors import InputError, NonFiniteError, UsageError
from ce_inspect.model import check_model_unchanged
from ce_inspect.scoring import ScoreOptions, score_examples
from ce_inspect.text import Encoded

if TYPE_CHECKING:
    from ce_inspect.dataset.sink import JsonlSink
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
PADDING_SIDES = ("right", "left")


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
    #: Resamples of the bootstrap over examples for the token-weighted figures' standard errors (0: none), its seed.
    bootstrap: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"`max_tokens` must be at least 1, got {self.max_tokens}")
        if self.padding_side not in PADDING_SIDES:
            raise UsageError(f"`padding_side` must be left or right, got {self.padding_side!r}")
        if self.max_padding is not None and not 0.0 <= self.max_padding < 1.0:
            raise UsageError(f"`max_padding` must be a fraction in [0, 1), got {self.max_padding}")
        if self.sort_window < 1:
            raise UsageError(f"`sort_window` must be at least 1 example, got {self.sort_window}")
        if self.worst < 0:
            raise UsageError(f"`worst` must be 0 or more, got {self.worst}")
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise UsageError(f"`bootstrap` must be 0 (off) or at least 2 resamples, got {self.bootstrap}")

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
                f"{where} {entry.line}{id_note(entry.id)}: {exc}",
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
        self.builder = SummaryBuilder(settings.worst, bootstrap=settings.bootstrap, seed=settings.seed)
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


__all__ = [
    "BatchReport",
    "BatchSettings",
    "DEFAULT_MAX_PADDING",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SORT_WINDOW",
    "PADDING_SIDES",
    "ProgressCallback",
    "ScoreFunction",
    "device_kind",
    "output_line",
    "plan_batches",
    "run_scan",
]
