"""`ce-inspect batch`: a JSONL data set through the model, one JSON line per example and a data-set summary."""

from __future__ import annotations

import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ..batch import DEFAULT_BATCH_SIZE, DEFAULT_SORT_WINDOW, DEFAULT_WORST
from ..data import FORMATS
from .logs import setup_logging
from .options import OUTPUT, Common, shared_options, write_atomic

INPUT = "Input"
BATCHING = "Batching"


@shared_options
def batch(
    common: Common,
    input: Annotated[
        Path,
        typer.Argument(
            help="The data: JSONL, a JSON array, Parquet, a folder saved with datasets' save_to_disk, or a Hub "
            "dataset id from the local cache (the last three need: pip install 'ce-inspect\\[datasets]'). Records: "
            "prompt/answer, prompt/completion, messages, conversations (ShareGPT), text, or input_ids with labels.",
            show_default=False,
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help=f"Read every record as {', '.join(FORMATS)} instead of detecting each one's format from its fields.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="The split of a saved or Hub dataset (train, test, ...).", rich_help_panel=INPUT),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Score text records longer than the context in windows of the context's length starting every "
            "STRIDE tokens: every token scored once, with at least context - STRIDE tokens of left context.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Report and skip lines that cannot be scored instead of stopping at the first.",
            rich_help_panel=INPUT,
        ),
    ] = False,
    prompt_field: Annotated[str, typer.Option(help="Field holding the prompt.", rich_help_panel=INPUT)] = "prompt",
    answer_field: Annotated[str, typer.Option(help="Field holding the answer.", rich_help_panel=INPUT)] = "answer",
    messages_field: Annotated[
        str, typer.Option(help="Field holding a chat conversation.", rich_help_panel=INPUT)
    ] = "messages",
    id_field: Annotated[
        str, typer.Option(help="Field copied to each output line as its id.", rich_help_panel=INPUT)
    ] = "id",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help=f"Examples per forward pass (default {DEFAULT_BATCH_SIZE}; with --max-tokens alone, no count limit).",
            rich_help_panel=BATCHING,
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cap each batch at this many padded positions (rows x longest example) instead.",
            rich_help_panel=BATCHING,
        ),
    ] = None,
    padding_side: Annotated[
        str, typer.Option(help="Pad batches on the right or the left (same figures).", rich_help_panel=BATCHING)
    ] = "right",
    sort_window: Annotated[
        int,
        typer.Option(
            min=1,
            help="Examples sorted by length together; larger pads less, smaller holds less and loses less on a kill.",
            rich_help_panel=BATCHING,
        ),
    ] = DEFAULT_SORT_WINDOW,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the JSON lines to FILE (default: stdout).", rich_help_panel=OUTPUT),
    ] = None,
    summary_json: Annotated[
        Path | None,
        typer.Option(help="Also write the data-set summary as one JSON document to FILE.", rich_help_panel=OUTPUT),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run: keep the complete lines of --output and score the rest.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.", rich_help_panel=OUTPUT)
    ] = False,
    no_sequence: Annotated[
        bool,
        typer.Option(
            "--no-sequence",
            help="Leave the whole-sequence view out of each line (smaller files; per-token figures stay).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    worst: Annotated[
        int,
        typer.Option(
            min=0, help="How many worst examples and highest-loss tokens the summary lists.", rich_help_panel=OUTPUT
        ),
    ] = DEFAULT_WORST,
) -> None:
    """Score every record of a data set (JSONL, JSON, Parquet, datasets): one JSON line per example, in input
    order, then a summary."""
    from ..batch import BatchSettings, Fields, JsonlSink, output_conflict, read_resume, run_scan, scan_dataset
    from ..scoring import top_k_note as _top_k_note

    if padding_side not in ("right", "left"):
        raise typer.BadParameter(f"{padding_side!r}: use right or left", param_hint="--padding-side")
    if resume and output is None:
        raise typer.BadParameter("--resume continues an --output file; give --output", param_hint="--resume")
    if resume and force:
        raise typer.BadParameter("give --resume or --force, not both", param_hint="--resume")
    from ..distributed import check_parts, current_session

    session = current_session()  # torchrun: this process scores one share; see _score_sharded
    if session is not None and output is None:
        raise typer.BadParameter(
            f"the {session.world} ranks of a torchrun run cannot share stdout; give --output", param_hint="--output"
        )
    if session is not None and str(input) == "-":
        raise typer.BadParameter("under torchrun every rank reads the input itself; give a file, not stdin")
    if output is not None:
        conflict = output_conflict(output, input, resume=resume, force=force)
        if conflict:
            from ..errors import InputError

            raise InputError(conflict)
        check_parts(output, session.world if session else None, resume=resume, force=force)
    if summary_json is not None and any(
        p is not None and summary_json.resolve() == p.resolve() for p in (input, output)
    ):
        raise typer.BadParameter(
            "give the summary its own file, not the input or --output", param_hint="--summary-json"
        )
    settings = BatchSettings(
        batch_size=batch_size if batch_size is not None or max_tokens is not None else DEFAULT_BATCH_SIZE,
        max_tokens=max_tokens,
        padding_side=padding_side,
        sort_window=sort_window,
        worst=worst,
        sequence=not no_sequence,
    )
    if format is not None and format not in FORMATS:
        raise typer.BadParameter(f"{format!r}: use one of {', '.join(FORMATS)}", param_hint="--format")
    fields = Fields(prompt=prompt_field, answer=answer_field, messages=messages_field, id=id_field)
    # Bad values are usage errors, before loading.
    layout, options = replace(common.layout(), stride=stride), common.score_options()
    stdout = sys.stdout  # taken now: stdout carries only JSON lines when --output is not given
    # "Loading ..." and other progress notes only where someone watches; warnings always.
    setup_logging(quiet=not sys.stderr.isatty())

    from rich.console import Console

    err = Console(stderr=True)
    from ..data import open_data
    from .errors import cli_message

    info = open_data(input, fields, format=format, split=split)  # before the model loads: a bad input fails fast
    err.print(cli_message(info.describe()), markup=False, soft_wrap=True, highlight=False)
    lm = common.load(quiet=True)
    top_k_note = _top_k_note(lm, options)
    if top_k_note:  # every line's notes carry it too
        err.print(f"note: {top_k_note}", markup=False, soft_wrap=True)
    sharded = None
    if session is not None:  # torchrun: the output and every rank's part file
        from ..distributed import read_sharded_resume

        sharded = read_sharded_resume(output, session.world, worst, resume=resume)  # type: ignore[arg-type]
        state = sharded.union
    else:
        state = read_resume(output, worst) if resume and output is not None and output.exists() else None
    if state is not None and state.torn_bytes:
        err.print(
            f"Resuming: dropping an incomplete last line ({state.torn_bytes} bytes) of {output}.",
            markup=False,
            soft_wrap=True,
        )
    scan = scan_dataset(
        lm,
        input,
        layout=layout,
        options=options,
        fields=fields,
        skip_invalid=skip_invalid,
        resume=state,
        info=info,
    )
    from .render_batch import batch_progress

    if sharded is not None:
        summary = _score_sharded(lm, scan, sharded, output, options, settings, err)  # type: ignore[arg-type]
        if summary is None:
            return  # not rank 0: rank 0 merges and reports
        _report(summary, summary_json, output)
        return
    sink = JsonlSink.open(output, resume=state) if output is not None else JsonlSink.to_stdout(stdout)

    previous = _terminate_as_interrupt()
    try:
        with sink, batch_progress(err, scan) as advance:
            summary = run_scan(lm, scan, sink, options=options, settings=settings, on_batch=advance)
    except KeyboardInterrupt:
        where = f"{sink.lines} complete lines are in {output}" if output else f"{sink.lines} lines were written"
        hint = "; rerun the same command with --resume to continue" if output else ""
        err.print(f"Interrupted: {where}{hint}.", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(141) from None
    finally:
        signal.signal(signal.SIGTERM, previous)

    _report(summary, summary_json, output)


def _report(summary: Any, summary_json: Path | None, output: Path | None) -> None:
    from rich.console import Console

    from .render_batch import render_dataset_summary

    if summary_json is not None:
        from ..result import dumps

        write_atomic(summary_json, dumps(summary.to_dict(), indent=2) + "\n", option="--summary-json")
    # The human summary goes to stdout only when stdout does not carry the JSON lines.
    render_dataset_summary(summary, Console() if output is not None else Console(stderr=True))


def _score_sharded(lm: Any, scan: Any, sharded: Any, output: Path, options: Any, settings: Any, err: Any) -> Any:
    """torchrun: score this rank's share into its part file; rank 0 then waits for every rank, merges the
    parts into --output and returns the summary (the others return None). Ctrl-C and `kill` leave whole lines."""
    from .. import distributed as dist_run
    from ..batch import BatchStats
    from .render_batch import batch_progress

    session = dist_run.current_session()
    assert session is not None
    previous = _terminate_as_interrupt()
    try:
        with batch_progress(err, scan) as advance:
            show = advance if session.rank == 0 else None
            stats = dist_run.score_share(
                session, lm, scan, sharded, output, options=options, settings=settings, show=show
            )
            if session.rank != 0:
                session.post(0, batching=stats.to_dict())
                return None
            session.gather(show)
    except KeyboardInterrupt:
        part = dist_run.part_path(output, session.rank, session.world)
        err.print(f"Interrupted: the complete lines are kept in {part}; rerun with --resume.", markup=False)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    failure = session.failure()
    if failure is not None:
        raise failure
    total = BatchStats(settings.batch_size, settings.max_tokens, settings.padding_side)
    dist_run.add_batching([stats, *(o["batching"] for o in session.outcomes.values())], total)
    return dist_run.merge_and_sum_up(
        session, lm, scan, sharded, output, options=options, settings=settings, batching=total
    )


def _terminate_as_interrupt() -> Any:
    """Treat SIGTERM (a plain `kill`) like Ctrl-C, so the output file is left with complete lines only."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _silence_stdout() -> None:
    """After the reader of a pipe went away (`| head`), let Python exit without a second broken-pipe error."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
