"""A data set split over the ranks of a ``torchrun`` run (``distributed`` has the launch and the ranks' store):
the plan (contiguous shares of about equal tokens), what ``--resume`` continues (the output and every rank's
part file), one rank's share scored through the one runner, and rank 0's merge.

Every rank reads the same input and encodes it (the scan), so every rank computes the same plan without
asking anyone (``shard_lines``). Each rank scores its share with ``batch.run_scan`` into its part file next
to the output (``distributed.part_path``); rank 0 merges the parts in input order, atomically, and rebuilds
the summary from the merged lines the way ``--resume`` rebuilds it from a file.
"""

from __future__ import annotations

import heapq
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_inspect.dataset.batching import BatchReport, run_scan
from ce_inspect.dataset.resume import read_resume
from ce_inspect.dataset.sink import JsonlSink
from ce_inspect.dataset.summary import BatchStats
from ce_inspect.distributed import RankFailedError, Session, part_path
from ce_inspect.errors import ResumeError
from ce_inspect.files import atomic_stream, write_all

if TYPE_CHECKING:
    from ce_inspect.dataset.batching import BatchSettings
    from ce_inspect.dataset.resume import ResumeState
    from ce_inspect.dataset.scan import Entry, Scan
    from ce_inspect.dataset.summary import DatasetSummary
    from ce_inspect.model import LoadedModel
    from ce_inspect.scoring import ScoreOptions


# --- the plan: contiguous shares of about equal tokens ------------------------------------------------


def shard_lines(entries: Sequence[Entry], world: int) -> list[list[int]]:
    """The input lines each rank scores: ``entries`` (the ones still to score, in input order) cut into
    ``world`` contiguous runs of about equal tokens. An example goes to the rank whose token range holds
    its middle token, so every rank computes the same plan from the same scan."""
    total = sum(e.length for e in entries)
    shares: list[list[int]] = [[] for _ in range(world)]
    done = 0
    for e in entries:
        middle = done + e.length / 2
        shares[min(world - 1, int(middle * world / total)) if total else 0].append(e.line)
        done += e.length
    return shares


# --- resume: the output (if any) and every rank's part file ---------------------------------------------


@dataclass(frozen=True)
class ShardedResume:
    """What a sharded run continues: ``base``, the output's complete lines; ``parts``, each rank's part file.

    ``union`` is what the scan checks against the input (every line of them, with its settings).
    """

    base: ResumeState | None
    parts: dict[int, ResumeState]
    union: ResumeState | None

    @property
    def base_lines(self) -> set[int]:
        return set(self.base.examples) if self.base is not None else set()

    @property
    def base_others(self) -> frozenset[int]:
        return self.base.others if self.base is not None else frozenset()

    @property
    def resumed(self) -> int:
        return len(self.base_lines) + sum(len(p.examples) for p in self.parts.values())


def read_sharded_resume(
    output: Path, world: int, worst: int, *, resume: bool, parse: Any = None, command: str = "batch"
) -> ShardedResume:
    """Read the output (``resume`` and it exists) and this run's part files (``resume``); a part whose
    lines the output already holds is left from a merge that was not cleaned up, and is ignored.
    ``parse`` and ``command``: as for ``batch.read_resume`` (another command's lines)."""
    if not resume:
        return ShardedResume(None, {}, None)
    read = partial(read_resume, parse=parse, command=command)
    base = read(output, worst) if output.exists() else None
    parts: dict[int, ResumeState] = {}
    for rank in range(world):
        path = part_path(output, rank, world)
        if path.exists():
            state = read(path, worst)
            if base is None or not _lines(state) <= _lines(base):
                parts[rank] = state
    states = [s for s in ([base] if base else []) + list(parts.values()) if s.examples or s.others]
    if not states:
        return ShardedResume(base, parts, base)
    for s in states[1:]:
        if s.settings != states[0].settings:
            raise ResumeError(
                f"`resume`: {s.path} was written with other settings than {states[0].path}; start over with `force`"
            )
    examples: dict[int, Any] = {}
    others: set[int] = set()
    for s in states:
        for line in _lines(s):
            if line in examples or line in others:
                raise ResumeError(
                    f"`resume`: input line {line} has a result in two files ({s.path} and another); "
                    "start over with `force`"
                )
        examples.update(s.examples)
        others.update(s.others)
    union = replace(
        states[0],
        path=output,
        size=0,
        torn_bytes=0,
        examples=dict(sorted(examples.items())),
        worst_tokens=(),
        ordered=False,
        others=frozenset(others),
    )
    return ShardedResume(base, parts, union)


def _lines(state: ResumeState) -> set[int]:
    return set(state.examples) | state.others


def unscored_lines(scan: Scan, state: ShardedResume) -> set[int]:
    """The invalid entries whose output line is still to write (``audit`` writes one for a record the model
    cannot score): rank 0's, ahead of its share; ``batch`` and ``diff`` write none."""
    return {e.line for e in scan.entries if e.error is not None and e.line not in state.base_others}


def check_shares(state: ShardedResume, shares: list[list[int]]) -> None:
    """Every part file must hold lines of its own rank's share only: the plan is the one it was written for."""
    for rank, part in state.parts.items():
        foreign = sorted(set(part.examples) - set(shares[rank]) | (part.others if rank else frozenset()))
        if foreign:
            raise ResumeError(
                f"`resume`: {part.path} holds input line {foreign[0]}, which is not rank {rank}'s share now: "
                "the output or the input changed since; start over with `force`"
            )


# --- the ranks' channel: a c10d store -----------------------------------------------------------------


# --- one rank's share, and rank 0's merge -------------------------------------------------------------


def score_share(
    session: Session,
    lm: LoadedModel,
    scan: Scan,
    state: ShardedResume,
    output: Path,
    *,
    options: ScoreOptions,
    settings: BatchSettings,
    show: Callable[[int, int], None] | None = None,
    make_report: Callable[[Scan], Any] | None = None,
    **runner: Any,
) -> BatchStats:
    """Score this rank's share of ``scan`` into its part file; returns how it batched the work.

    ``runner`` goes to ``run_scan`` as it is (a command's own ``score`` function, ``emit``), and
    ``make_report(scan)`` builds the command's report for the scan it sums up (this rank's share), so every
    command on the one runner is sharded the same way."""
    # Every option an output line depends on, against everything resumed (the output and every part),
    # before any rank writes: a share's own report sees only its part, and the merge would be too late.
    make_report = make_report or (lambda whole: BatchReport(lm, whole, options, settings))
    make_report(scan)
    base = state.base_lines
    shares = shard_lines([e for e in scan.entries if e.error is None and e.line not in base], session.world)
    check_shares(state, shares)
    mine = set(shares[session.rank]) | (unscored_lines(scan, state) if session.rank == 0 else set())
    own = state.parts.get(session.rank)
    share = replace(scan, entries=tuple(e for e in scan.entries if e.line in mine), resume=own, subset=True)
    # Every rank has checked and read the part files before any rank writes to its own.
    session.barrier("parts read")
    with JsonlSink.open(part_path(output, session.rank, session.world), resume=own) as sink:
        runner["report"] = make_report(share)
        summary = run_scan(
            lm, share, sink, options=options, settings=settings, on_batch=session.on_batch(show), **runner
        )
    return summary.batching


def merge_outputs(output: Path, sources: Sequence[tuple[Path, int | None]]) -> int:
    """Write the lines of ``sources`` (each in input order; the first ``size`` bytes of each, or all of it)
    into ``output`` in input order, atomically (``files.atomic_stream``). Returns the number of lines."""
    lines = 0
    with atomic_stream(output, label="`output`") as fh:
        for _, raw in heapq.merge(*(_lines_of(p, size) for p, size in sources), key=lambda x: x[0]):
            write_all(fh, raw)
            lines += 1
    return lines


def _lines_of(path: Path, size: int | None) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        read = 0
        for raw in fh:
            if (size is not None and read + len(raw) > size) or not raw.endswith(b"\n"):
                return  # a torn tail: the resume state dropped it too
            read += len(raw)
            yield json.loads(raw)["line"], raw


def merge_and_sum_up(
    session: Session,
    lm: LoadedModel,
    scan: Scan,
    state: ShardedResume,
    output: Path,
    *,
    options: ScoreOptions,
    settings: BatchSettings,
    batching: BatchStats,
    make_report: Callable[[Scan], Any] | None = None,
    parse: Any = None,
    command: str = "batch",
    **runner: Any,
) -> DatasetSummary:
    """Rank 0, once every rank succeeded: merge the parts into ``output`` and rebuild the summary from it
    (every example read back like a resumed one, then the counts of this run put back). ``runner`` and
    ``make_report`` as for ``score_share``: the report must be able to take resumed examples; ``parse``
    and ``command`` read the merged lines back (``batch.read_resume``)."""
    parts = [part_path(output, r, session.world) for r in range(session.world)]
    sources = ([(output, state.base.size)] if state.base is not None else []) + [(p, None) for p in parts]
    merge_outputs(output, sources)
    merged = read_resume(output, settings.worst, parse=parse, command=command)
    entries = []
    for e in scan.entries:
        if e.error is None:
            done = merged.examples.get(e.line)
            if done is None:
                raise RankFailedError(f"the merged {output} has no result for input line {e.line}; a part is missing")
            e = replace(e, done=done)
        elif e.line in merged.others:
            e = replace(e, kept=True)
        entries.append(e)
    final = replace(scan, entries=tuple(entries), resume=merged)
    sink = JsonlSink(io.BytesIO(), name=str(output))  # nothing is left to write: every example is done
    if make_report is not None:
        runner["report"] = make_report(final)
    summary = run_scan(lm, final, sink, options=options, settings=settings, **runner)
    for p in parts:
        p.unlink(missing_ok=True)
    return replace(summary, batching=batching)  # the resumed count is the job's (``runner.Job.counts_resumed``)


def add_batching(stats: Sequence[BatchStats | dict[str, Any]], into: BatchStats) -> BatchStats:
    """The run's batching figures: the ranks' counts added up; the time is the slowest rank's (the wall
    time of the scoring), so tokens per second is the whole run's throughput."""
    for s in stats:
        d = s if isinstance(s, dict) else s.to_dict()
        into.batches += d["batches"]
        into.examples += d["examples"]
        into.sequence_tokens += d["sequence_tokens"]
        into.padded_positions += d["padded_positions"]
        into.seconds = max(into.seconds, d["seconds"])
    return into


__all__ = [
    "ShardedResume",
    "add_batching",
    "merge_and_sum_up",
    "merge_outputs",
    "read_sharded_resume",
    "score_share",
    "shard_lines",
]
