"""The one data-set runner: every data-set command (``batch``, ``diff --input``, ``audit`` with a model) is a
``Job`` that ``DatasetRun`` runs.

A job says what the command makes of the data: how a batch of examples is scored (one model or two), what
an output line is, how a line is read back (``--resume``, the torchrun merge) and how the summary is built.
The run does everything else, once, for every command:

1. ``DatasetRun.__enter__`` (before any model loads): the output is checked (``batch.check_batch_output``),
   leftover torchrun part files refused (``distributed.check_parts``), the output locked (rank 0 under
   torchrun), what ``resume`` continues read back, stdin or a pipe spooled to a file (the data is read
   twice), and the data opened and described (``data.open_data``).
2. ``DatasetRun.scan``: every record encoded and matched against the resumed lines (``batch.scan_dataset``).
3. ``DatasetRun.run``: the forward passes in token-budget batches (``batch.run_scan``) into the output (or
   a stream), a progress callback per batch, SIGTERM treated like Ctrl-C so the file keeps whole lines;
   under torchrun this rank's share into its part file, and on rank 0 the merge and the summary rebuilt
   from the merged lines (``distributed``).

``score_dataset`` is the library's entry point for ``batch`` (``diff.diff_dataset`` and
``audit.audit_dataset`` are those of the other commands): a loaded model (or
two), a data path and an output path in, the lines the command line writes out, and the summary returned.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ce_inspect.data import DataInfo, Fields, Record, check_limit, open_data, read_records
from ce_inspect.dataset.batching import BatchReport, BatchSettings, run_scan
from ce_inspect.dataset.filter import (
    FilterReport,
    KeepFilter,
    check_filter_files,
    check_filter_outputs,
    figure_of_line,
)
from ce_inspect.dataset.job import Job
from ce_inspect.dataset.parquet import check_parquet_output, is_parquet, parquet_output
from ce_inspect.dataset.resume import LineParser, ResumeState, read_resume, stats_from_line
from ce_inspect.dataset.scan import Scan, scan_dataset
from ce_inspect.dataset.sharded import add_batching, merge_and_sum_up, read_sharded_resume, score_share
from ce_inspect.dataset.sink import JsonlSink, check_batch_output
from ce_inspect.dataset.summary import DEFAULT_WORST, BatchStats
from ce_inspect.distributed import check_parts, current_session, part_path
from ce_inspect.errors import InvalidRecordError, UsageError
from ce_inspect.files import atomic_stream, is_stream, output_lock, spooled_input, writes_through
from ce_inspect.model import LoadedModel
from ce_inspect.scoring import ScoreOptions, top_k_note
from ce_inspect.text import Encoded, Layout

if TYPE_CHECKING:
    from ce_inspect.dataset.sharded import ShardedResume
    from ce_inspect.dataset.summary import DatasetSummary
    from ce_inspect.distributed import Session

#: How messages and the summary name a data set read from stdin.
STDIN = "<stdin>"

#: A progress display: given the scan, a context that yields the callback told (examples, tokens) per batch.
Progress = Callable[[Scan], AbstractContextManager[Callable[[int, int], None]]]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; ``message`` says what the output keeps (the CLI prints it, exit 130)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def input_name(data: str | Path) -> str:
    """How messages and the summary name a data set: its path as given, or ``<stdin>`` for '-'."""
    return STDIN if str(data) == "-" else str(data)


def check_run_arguments(
    data: str | Path, output: str | Path | None, *, resume: bool, force: bool, session: Session | None
) -> None:
    """The one check of a data-set run's arguments, for every command, before anything is read or loaded:
    ``resume`` needs an ``output`` and excludes ``force``; under torchrun every rank reads ``data`` itself (a
    regular file, not stdin or a pipe) and rank 0 merges the parts into ``output`` (a regular file)."""
    if resume and output is None:
        raise UsageError("`resume` continues an `output` file; give `output`")
    if resume and force:
        raise UsageError("give `resume` or `force`, not both")
    if session is None:
        return
    if output is None:
        raise UsageError(f"the {session.world} ranks of a torchrun run cannot share stdout; give `output`")
    if is_stream(data):
        raise UsageError("under torchrun every rank reads the input itself; give a regular file, not stdin or a pipe")
    if writes_through(output):
        raise UsageError("under torchrun the ranks' parts are merged into a regular file; give one as `output`")


class DatasetRun:
    """One data-set run: entered before any model loads (outputs checked and locked, resume read, the data
    opened), then ``scan`` and ``run`` once the model is loaded. ``notes`` receives what the user should be
    told on the way (how the data is read, unless not ``describe``; a torn last line dropped); ``session`` is
    torchrun's (None: one process)."""

    def __init__(
        self,
        data: str | Path,
        output: str | Path | None = None,
        *,
        command: str = "batch",
        parse: Callable[[Any, int], Any] | None = None,
        worst: int = DEFAULT_WORST,
        resume: bool = False,
        force: bool = False,
        fields: Fields | None = None,
        format: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        data_label: str = "the input",
        session: Session | None = None,
        notes: Callable[[str], None] | None = None,
        describe: bool = True,
    ) -> None:
        check_run_arguments(data, output, resume=resume, force=force, session=session)
        self.limit = check_limit(limit)
        self.data, self.output = Path(data), (Path(output) if output is not None else None)
        self.command, self.parse, self.worst = command, parse, worst
        self.resume, self.force = resume, force
        self.fields, self.format, self.split, self.data_label = fields or Fields(), format, split, data_label
        self.session, self.notes, self.describe = session, notes or (lambda message: None), describe
        self._stack = ExitStack()
        self.sharded: ShardedResume | None = None
        self.state: ResumeState | None = None
        self.source: Path = self.data
        self.info: DataInfo | None = None

    @property
    def label(self) -> str | None:
        """The data's name in messages and the summary when ``source`` is a stand-in (stdin's or a pipe's copy)."""
        return None if self.source == self.data else input_name(self.data)

    def __enter__(self) -> DatasetRun:
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)  # type: ignore[arg-type]

    def _open(self) -> None:
        session, output = self.session, self.output
        if output is not None:
            if is_parquet(output):
                if self.command != "batch":
                    raise UsageError(f"`output` {output}: only `batch` writes Parquet; give a .jsonl `output`")
                check_parquet_output(output, resume=self.resume, torchrun=session is not None)
            check_batch_output(output, self.data, resume=self.resume, force=self.force)
            check_parts(output, session.world if session else None, resume=self.resume, force=self.force)
            if session is None or session.rank == 0:  # torchrun: rank 0 holds the lock for the run
                self._stack.enter_context(output_lock(output, label="`output`"))
        self._read_resume()
        # stdin, a FIFO or a pipe given as a path is read once, into a temporary file: the scan reads it twice.
        self.source = self._stack.enter_context(spooled_input(self.data, self.data_label))
        info = open_data(self.source, self.fields, format=self.format, split=self.split, limit=self.limit)
        self.info = replace(info, path=self.label) if self.label is not None else info
        if self.describe:
            self.notes(self.info.describe())  # how the data is read, before anything loads

    def refuse_unreadable_first(self, skip_invalid: bool) -> None:
        """A first record the reader cannot make a record of (not JSON, no known format, a missing field) is
        refused here, before a model loads (torch alone takes seconds to import), in the words the scan would
        use after the load. Not with ``skip_invalid``, nor on ``resume`` (the scan then checks the line
        against the output file), nor for commands whose records are not batch's (pairs, questions)."""
        if skip_invalid or self.state is not None or self.sharded is not None or self.info is None:
            return
        first = next(read_records(self.source, self.fields, format=self.format, split=self.split, limit=1), None)
        if first is not None and first.error is not None:
            info = self.info
            raise InvalidRecordError(
                f"{info.where(first)}: {first.error} (fix the {info.unit}, or pass --skip-invalid)"
            )

    def _read_resume(self) -> None:
        session, output = self.session, self.output
        if session is not None:
            self.sharded = read_sharded_resume(
                output,  # type: ignore[arg-type]
                session.world,
                self.worst,
                resume=self.resume,
                parse=self.parse,
                command=self.command,
            )
            self.state = self.sharded.union
        elif self.resume and output is not None and output.exists():
            self.state = read_resume(output, self.worst, parse=self.parse, command=self.command)
            if self.state.torn_bytes:
                self.notes(f"Resuming: dropping an incomplete last line ({self.state.torn_bytes} bytes) of {output}.")

    def scan(
        self,
        lm: LoadedModel,
        *,
        layout: Layout | None = None,
        options: ScoreOptions | None = None,
        skip_invalid: bool = False,
        encoder: Callable[[Record], Encoded] | None = None,
    ) -> Scan:
        """Every record encoded (``encoder``, default the model's own encoding) and matched to the resumed lines;
        with ``limit``, only the first ``limit`` records (and ``notes`` says so when the data set has more).
        ``notes`` also gets the warning when most answers are glued to their prompts (``GluedAnswers``)."""
        scan = scan_dataset(
            lm,
            self.source,
            layout=layout,
            options=options,
            fields=self.fields,
            skip_invalid=skip_invalid,
            resume=self.state,
            info=self.info,
            label=self.label,
            encoder=encoder,
        )
        info = scan.info
        if info is not None and info.limit_note is not None:
            self.notes(f"note: {info.limit_note}")
        if info is not None and info.glued_note is not None:
            self.notes(f"warning: {info.glued_note}")
        return scan

    def run(
        self,
        lm: LoadedModel,
        scan: Scan,
        job: Job | None = None,
        *,
        options: ScoreOptions | None = None,
        settings: BatchSettings | None = None,
        stream: IO[str] | None = None,
        tee: Callable[[dict[str, Any]], None] | None = None,
        progress: Progress | None = None,
    ) -> Any:
        """Score the scan into ``output`` (without one: each line to ``stream``, or nowhere) and return the
        summary; under torchrun, None on every rank but 0. ``tee`` also sees every line written (the reports)."""
        job = job or Job()
        options, settings = options or ScoreOptions(), settings or BatchSettings()
        progress = progress or (lambda scan: nullcontext(lambda examples, tokens: None))
        with _terminate_as_interrupt():
            if self.session is not None:
                return self._run_sharded(lm, scan, job, options, settings, progress)
            return self._run_here(lm, scan, job, options, settings, stream, tee, progress)

    def _run_here(
        self,
        lm: LoadedModel,
        scan: Scan,
        job: Job,
        options: ScoreOptions,
        settings: BatchSettings,
        stream: IO[str] | None,
        tee: Callable[[dict[str, Any]], None] | None,
        progress: Progress,
    ) -> Any:
        output = self.output
        report = job.report(lm, scan, options, settings)  # before any line is written: it refuses a changed option
        parquet = is_parquet(output)
        try:
            with parquet_output(output) if parquet else nullcontext(output) as lines_to:  # type: ignore[arg-type]
                sink = (
                    JsonlSink.open(lines_to, resume=scan.resume)
                    if lines_to is not None
                    else JsonlSink.to_stdout(stream or _Nowhere())
                )
                with sink, progress(scan) as advance:
                    target = sink if tee is None else _Tee(sink, tee)
                    summary = run_scan(
                        lm,
                        scan,
                        target,  # type: ignore[arg-type]
                        options=options,
                        settings=settings,
                        on_batch=advance,
                        score=job.score,
                        report=report,
                        emit=job.emit,
                    )
            return replace(summary, output=str(output)) if parquet else summary
        except KeyboardInterrupt:
            if parquet:
                raise Interrupted(f"a Parquet output is written when the run ends: {output} was not written") from None
            if output is None and stream is None:
                raise Interrupted("no --output was given, so nothing is kept") from None
            if output is None or not sink.regular:
                raise Interrupted(f"{sink.lines} lines were written") from None
            raise Interrupted(
                f"{sink.lines} complete lines are in {output}; rerun the same command with --resume to continue"
            ) from None

    def _run_sharded(
        self, lm: LoadedModel, scan: Scan, job: Job, options: ScoreOptions, settings: BatchSettings, progress: Progress
    ) -> Any:
        """This rank's share into its part file; rank 0 then waits for every rank, merges the parts into the
        output and returns the summary rebuilt from the merged lines (the others return None)."""
        session, output, sharded = self.session, self.output, self.sharded
        assert session is not None and output is not None and sharded is not None
        kwargs = {"score": job.score, "emit": job.emit, "make_report": lambda s: job.report(lm, s, options, settings)}
        try:
            with progress(scan) as advance:
                show = advance if session.rank == 0 else None
                stats = score_share(
                    session, lm, scan, sharded, output, options=options, settings=settings, show=show, **kwargs
                )
                if session.rank != 0:
                    session.post(0, batching=stats.to_dict())
                    return None
                session.gather(show)
        except KeyboardInterrupt:
            part = part_path(output, session.rank, session.world)
            raise Interrupted(f"the complete lines are kept in {part}; rerun with --resume") from None
        failure = session.failure()
        if failure is not None:
            raise failure
        total = BatchStats(settings.batch_size, settings.max_tokens, settings.padding_side)
        add_batching([stats, *(o["batching"] for o in session.outcomes.values())], total)
        summary = merge_and_sum_up(
            session,
            lm,
            scan,
            sharded,
            output,
            options=options,
            settings=settings,
            batching=total,
            parse=job.parse,
            command=job.command,
            **kwargs,
        )
        return replace(summary, resumed=sharded.resumed) if job.counts_resumed else summary


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a plain `kill`) like Ctrl-C, so the output file is left with complete lines only. Only
    the main thread can take a signal; elsewhere (a notebook's worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Nowhere:
    """Where the lines go when nobody asked for them (``audit`` without an output)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _Tee:
    """The output sink, with every line it writes also handed to ``also`` (the reports' ``BatchLines.add``)."""

    def __init__(self, sink: JsonlSink, also: Callable[[dict[str, Any]], None]) -> None:
        self._sink, self._also = sink, also

    @property
    def name(self) -> str | None:
        return self._sink.name

    def write(self, obj: Any) -> None:
        self._sink.write(obj)
        self._also(obj)


# --- the library's entry points -----------------------------------------------------------------------------


def as_loaded(lm: LoadedModel | Callable[[], LoadedModel]) -> LoadedModel:
    """A loaded model, or the function that loads it (called once the outputs are checked and the data opened,
    so that a bad path fails before a slow load)."""
    return lm if isinstance(lm, LoadedModel) else lm()


def score_dataset(
    lm: LoadedModel | Callable[[], LoadedModel],
    data: str | Path,
    output: str | Path | None = None,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    settings: BatchSettings | None = None,
    fields: Fields | None = None,
    skip_invalid: bool = False,
    resume: bool = False,
    force: bool = False,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    stream: IO[str] | None = None,
    tee: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    notes: Callable[[str], None] | None = None,
    keep: KeepFilter | None = None,
) -> DatasetSummary:
    """Every record of ``data`` through ``lm``, as ``ce-inspect batch`` scores it: one JSON line per example
    into ``output`` (in input order; without it, to ``stream`` or nowhere) and the data-set summary returned.
    ``resume`` continues an interrupted ``output``; ``force`` replaces an existing one. Under torchrun, each
    rank scores its share and rank 0 merges (``output`` required; the other ranks return None). ``tee`` sees
    every line written; ``progress`` and ``notes`` are as ``DatasetRun``'s; ``limit``: only the first ``limit``
    records are read (a resumed run reads the same ones). ``keep``: each scored record's input line copied into
    its ``kept`` or ``dropped`` file (``dataset.filter``), the counts in the summary's ``filter``."""
    settings, session = settings or BatchSettings(), current_session()
    if keep is not None:
        check_filter_files(keep)
        if session is not None:
            raise UsageError("`kept` and `dropped` are written by one process; run the filter without torchrun")
    with (
        DatasetRun(
            data,
            output,
            parse=filter_parse(keep.by) if keep is not None else None,
            worst=settings.worst,
            resume=resume,
            force=force,
            fields=fields,
            format=format,
            split=split,
            limit=limit,
            session=session,
            notes=notes,
        ) as run,
        ExitStack() as files,
    ):
        if keep is not None:
            check_filter_outputs(keep, data, output, kind=run.info.kind, resume=resume, force=force)  # type: ignore[union-attr]
        run.refuse_unreadable_first(skip_invalid)
        lm = as_loaded(lm)
        note = top_k_note(lm, options or ScoreOptions())
        if note and notes is not None:  # every line's notes carry it too
            notes(f"note: {note}")
        scan = run.scan(lm, layout=layout, options=options, skip_invalid=skip_invalid)
        job = None if keep is None else filter_job(lm, scan, keep, run, files, options, settings)
        return run.run(lm, scan, job, options=options, settings=settings, stream=stream, tee=tee, progress=progress)


def filter_parse(by: str) -> LineParser:
    """``batch``'s line parser that also keeps the line's ``by`` figure (``ExampleStats.payload``), so that a
    resumed record is routed as the run that scored it would have routed it."""

    def parse(obj: Any, worst: int) -> Any:
        stats, tokens = stats_from_line(obj, worst)
        return replace(stats, payload=figure_of_line(obj, by)), tokens

    return parse


def filter_job(
    lm: LoadedModel,
    scan: Scan,
    keep: KeepFilter,
    run: DatasetRun,
    files: ExitStack,
    options: ScoreOptions | None,
    settings: BatchSettings,
) -> Job:
    """``batch``'s job with its report wrapped in a ``FilterReport`` writing the ``kept`` and ``dropped`` files,
    each replaced only when the run ends without an error (``files`` closes them)."""
    kept, dropped = (
        files.enter_context(atomic_stream(path, label=label)) if path is not None else None
        for path, label in ((keep.kept, "`kept`"), (keep.dropped, "`dropped`"))
    )
    name = run.label if run.label is not None else str(run.data)

    def make_report(scan: Scan) -> FilterReport:
        report = BatchReport(lm, scan, options or ScoreOptions(), settings)
        return FilterReport(report, keep, run.source, name, kept, dropped)

    return Job(make_report=make_report, parse=filter_parse(keep.by))


__all__ = [
    "DatasetRun",
    "Interrupted",
    "Job",
    "as_loaded",
    "check_run_arguments",
    "filter_job",
    "filter_parse",
    "input_name",
    "score_dataset",
]
