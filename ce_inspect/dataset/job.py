"""A data-set command's part of a run (``runner.DatasetRun`` does the rest): how examples are scored, what an
output line is, how it is read back and how the summary is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ce_inspect.dataset.batching import BatchReport, BatchSettings
from ce_inspect.dataset.scan import Scan

if TYPE_CHECKING:
    from ce_inspect.dataset.scan import Entry
    from ce_inspect.model import LoadedModel
    from ce_inspect.scoring import ScoreOptions
    from ce_inspect.text import Encoded


@dataclass(frozen=True)
class Job:
    """What one command makes of a data set; ``DatasetRun`` does the rest.

    ``make_report(scan)``: the command's report (each result's output line and the summary; default
    ``batch.BatchReport``); it is built before any line is written, and refuses a changed model or option
    of a resumed output. ``score``: a batch of examples -> results (default: one forward pass of the model).
    ``emit``: replaces the report's output line (``audit``). ``parse``: reads a line back (``--resume``, the
    torchrun merge; default: batch's). ``counts_resumed``: the summary counts the examples read back from an
    earlier run's files (``batch``'s does, ``diff``'s has no such count).
    """

    command: str = "batch"
    make_report: Callable[[Scan], Any] | None = None
    score: Callable[[list[Encoded]], list[Any]] | None = None
    emit: Callable[[Entry, Any], dict[str, Any] | None] | None = None
    parse: Callable[[Any, int], Any] | None = None
    counts_resumed: bool = True

    def report(self, lm: LoadedModel, scan: Scan, options: ScoreOptions, settings: BatchSettings) -> Any:
        if self.make_report is not None:
            return self.make_report(scan)
        return BatchReport(lm, scan, options, settings)


__all__ = ["Job"]
