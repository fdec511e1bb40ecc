"""``BatchLines``: what the data-set reports (batch, diff --input) keep of the output lines, in bounded memory."""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable
from typing import Any

from ce_inspect.reports.pieces import complete_lines


class BatchLines:
    """What a batch report needs of the output lines, in bounded memory: the sum and count of the loss at
    each position among an example's scored tokens, and the ``worst`` lines (by mean loss) whole. With
    ``rank="kl_mean"`` (diff --input's lines) it keeps the worst lines by mean KL and no positions.

    The worst lines are ranked as the data-set summary ranks them (mean, then the earlier line first), so
    the report finds every example of the summary's ``worst_examples`` here.
    """

    def __init__(self, worst: int, rank: str = "mean") -> None:
        self.worst = worst
        self.rank = rank  # the key of a line's summary that ranks it: "mean" (batch), "kl_mean" (diff --input)
        self.position_sum: list[float] = []
        self.position_count: list[int] = []
        self._heap: list[tuple[float, int, int, dict[str, Any]]] = []
        self._order = 0

    def add(self, line: dict[str, Any]) -> None:
        for k, t in enumerate(line["tokens"] if self.rank == "mean" else ()):
            if k == len(self.position_sum):
                self.position_sum.append(0.0)
                self.position_count.append(0)
            self.position_sum[k] += t["loss"]
            self.position_count[k] += 1
        if self.worst:
            item = (line["summary"][self.rank], -line["line"], self._order, line)
            self._order += 1
            if len(self._heap) < self.worst:
                heapq.heappush(self._heap, item)
            elif item[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, item)

    def add_all(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.add(line)

    def add_file(self, path: str | os.PathLike[str], size: int) -> None:
        """The complete lines in the first ``size`` bytes of an output file (what ``--resume`` keeps)."""
        self.add_all(complete_lines(path, size))

    def line(self, number: int) -> dict[str, Any] | None:
        return next((item[-1] for item in self._heap if item[-1]["line"] == number), None)

    def position_means(self) -> list[float]:
        return [s / n for s, n in zip(self.position_sum, self.position_count)]
