"""Score-based filters (``batch --keep-below/--keep-above``): each scored record's input line copied, byte for
byte, into the ``kept`` or the ``dropped`` file by one figure of its output line.

``KeepFilter`` is the rule (the figure, the thresholds, the two files); ``FilterReport`` wraps a command's
report, so the lines and the summary are the run's own and each record is routed as its result (or its
resumed line) goes by in input order; ``FilterCounts`` is what the summary says of it. Both files are
written whole at the end of the run (``files.atomic_stream``): an interrupted run leaves neither, and its
``--resume`` routes the resumed records from their lines, so it writes the files an uninterrupted run writes.
A record that cannot be scored (``skip_invalid``) goes to neither file: the summary lists it as skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ce_inspect.contract import FilterDict, WireObject
from ce_inspect.data import jsonl_lines
from ce_inspect.errors import InputError, UsageError
from ce_inspect.files import check_output, write_all

if TYPE_CHECKING:
    from ce_inspect.dataset.summary import Skipped

#: The figures a record can be kept by (``keep_by``): its line's summary ``mean``, ``sum``, ``bits_per_byte``,
#: or the largest per-token loss (``max``).
KEEP_BY = ("mean", "sum", "max", "bits_per_byte")


def _threshold(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"`{name}` must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"`{name}` must be a finite number, got {value}")
    return float(value)


@dataclass(frozen=True)
class KeepFilter:
    """Keep a record when its ``by`` figure is below ``below`` and above ``above`` (strictly; with both, the
    records in between); its input line goes to ``kept``, or else to ``dropped`` (either may be None)."""

    below: float | None = None
    above: float | None = None
    by: str = "mean"
    kept: Path | None = None
    dropped: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "below", _threshold("keep_below", self.below))
        object.__setattr__(self, "above", _threshold("keep_above", self.above))
        if self.by not in KEEP_BY:
            raise UsageError(f"`keep_by` must be one of {', '.join(KEEP_BY)}, got {self.by!r}")
        if self.below is None and self.above is None:
            raise UsageError("`kept` and `dropped` are written by a threshold; give `keep_below` or `keep_above`")
        if self.below is not None and self.above is not None and self.above >= self.below:
            raise UsageError(
                f"`keep_above` {self.above:g} and `keep_below` {self.below:g} keep nothing: together they keep the "
                "records in between, so `keep_above` must be the smaller"
            )
        if self.kept is not None and self.dropped is not None and Path(self.kept) == Path(self.dropped):
            raise UsageError(f"`kept` and `dropped` are both {self.kept}; give two files")

    @classmethod
    def from_options(
        cls,
        below: float | None,
        above: float | None,
        by: str | None,
        kept: Path | None,
        dropped: Path | None,
    ) -> KeepFilter | None:
        """The filter the command line's options ask for, or None when they ask for none."""
        if below is None and above is None and by is None and kept is None and dropped is None:
            return None
        return cls(below, above, by or "mean", kept, dropped)

    def keeps(self, figure: float) -> bool:
        return (self.below is None or figure < self.below) and (self.above is None or figure > self.above)

    def files(self) -> list[tuple[str, Path]]:
        return [(label, Path(p)) for label, p in (("`kept`", self.kept), ("`dropped`", self.dropped)) if p]


@dataclass(frozen=True)
class FilterCounts(WireObject[FilterDict]):
    """The summary's ``filter``: the rule, how many records each file received and where they are."""

    by: str
    below: float | None
    above: float | None
    kept: int = 0
    dropped: int = 0
    kept_file: str | None = None
    dropped_file: str | None = None


def figure_of_line(line: Mapping[str, Any], by: str) -> float | None:
    """The ``by`` figure of one output line (``batch``'s): None when the line has none (bits per byte of a
    scored text of no bytes)."""
    if by == "max":
        return max(t["loss"] for t in line["tokens"])
    return line["summary"].get(by)


def check_filter_files(keep: KeepFilter) -> None:
    """A filter of a data-set run writes its records somewhere: ``kept``, ``dropped`` or both."""
    if not keep.files():
        raise UsageError("`keep_below` and `keep_above` route the records to files; give `kept` or `dropped`")


def check_filter_outputs(
    keep: KeepFilter, data: str | Path, output: str | Path | None, *, kind: str, resume: bool, force: bool
) -> None:
    """Before the model loads: the input is JSONL (its lines are what the files copy), and each file can be
    written, is none of the inputs, and replaces an existing file only with ``resume`` or ``force``."""
    check_filter_files(keep)
    if kind != "jsonl":
        raise UsageError(
            f"`kept` and `dropped` copy the input's lines verbatim, so they need a JSONL input; {data} is {kind}"
        )
    for label, path in keep.files():
        inputs: list[tuple[str, Any]] = [("the input file", data), ("`output`", output)]
        if output is not None and Path(output) == path:
            raise InputError(f"{label} {path}: is the same file as `output`; write it elsewhere")
        target = check_output(path, inputs=inputs, label=label, force=True)
        if target.exists and target.regular and not (resume or force):
            raise InputError(f"{label} {path} already exists; pass `resume` to rebuild it or `force` to replace it")


@dataclass
class FilterReport:
    """A command's report (``batch.BatchReport``) that also routes each record's input line: scored and
    resumed records by their figure, into ``kept`` or ``dropped``; skipped ones into neither."""

    report: Any
    keep: KeepFilter
    source: Path  # the JSONL file the scan reads (stdin's copy for '-')
    name: str  # how messages name the input
    kept: IO[bytes] | None
    dropped: IO[bytes] | None
    counts: FilterCounts = field(init=False)
    _lines: Iterator[tuple[int, bytes]] = field(init=False)
    _figures: dict[int, float | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        keep = self.keep
        self.counts = FilterCounts(
            keep.by,
            keep.below,
            keep.above,
            kept_file=str(keep.kept) if keep.kept else None,
            dropped_file=str(keep.dropped) if keep.dropped else None,
        )
        self._lines = jsonl_lines(self.source)

    def line(self, entry: Any, result: Any) -> Any:
        d = self.report.line(entry, result)
        self._figures[entry.line] = figure_of_line(d, self.keep.by)
        return d

    def add(self, entry: Any, result: Any) -> None:
        self.report.add(entry, result)
        figure = self._figures.pop(entry.line) if entry.line in self._figures else None
        if figure is None:
            figure = figure_of_line(self.report.line(entry, result), self.keep.by)
        self._route(entry.line, figure)

    def resumed(self, entry: Any) -> None:
        self.report.resumed(entry)
        self._route(entry.line, entry.done.payload)  # the figure ``filter_parse`` read from its line

    def skip(self, skipped: Skipped) -> None:
        self.report.skip(skipped)

    def finish(self, **kwargs: Any) -> Any:
        return replace(self.report.finish(**kwargs), filter=self.counts)

    def _route(self, number: int, figure: float | None) -> None:
        where = f"{self.name} line {number}"
        if figure is None:
            raise InputError(
                f"{where}: has no {self.keep.by} to filter by (its scored text has no bytes); "
                "use `keep_by` mean, sum or max"
            )
        raw = self._line(number, where)
        keep = self.keep.keeps(figure)
        fh = self.kept if keep else self.dropped
        if fh is not None:
            write_all(fh, raw if raw.endswith(b"\n") else raw + b"\n")
        self.counts = replace(self.counts, kept=self.counts.kept + keep, dropped=self.counts.dropped + (not keep))

    def _line(self, number: int, where: str) -> bytes:
        for n, raw in self._lines:
            if n == number:
                return raw
            if n > number:
                break
        raise InputError(f"{where}: {self.name} changed while it was being scored; run again")


__all__ = [
    "KEEP_BY",
    "FilterCounts",
    "FilterReport",
    "KeepFilter",
    "check_filter_files",
    "check_filter_outputs",
    "figure_of_line",
]
