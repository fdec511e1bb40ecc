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
from .reports import Reports, report_options

INPUT = "Input"
BATCHING = "Batching"


@shared_options
@report_options
def batch(
    common: Common,
    reports: Reports,
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
    if output is not None:
        conflict = output_conflict(output, input, resume=resume, force=force)
        if conflict:
            from ..errors import InputError

            raise InputError(conflict)
    if summary_json is not None and any(
        p is not None and summary_json.resolve() == p.resolve() for p in (input, output)
    ):
        raise typer.BadParameter(
            "give the summary its own file, not the input or --output", param_hint="--summary-json"
        )
    reports.check(
        inputs=[("the input", input)],
        outputs=[("--output", output), ("--summary-json", summary_json)],
        stdout_busy=None if output is not None else "the JSON lines (no --output)",
        force=force,
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
    sink = JsonlSink.open(output, resume=state) if output is not None else JsonlSink.to_stdout(stdout)

    from .render_batch import batch_progress, render_dataset_summary

    lines = _report_lines(reports, worst, output, state)
    previous = _terminate_as_interrupt()
    try:
        with sink, batch_progress(err, scan) as advance:
            target = sink if lines is None else _Tee(sink, lines)
            summary = run_scan(lm, scan, target, options=options, settings=settings, on_batch=advance)  # type: ignore[arg-type]
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

    if summary_json is not None:
        from ..result import dumps

        write_atomic(summary_json, dumps(summary.to_dict(), indent=2) + "\n", option="--summary-json")
    if lines is not None or reports.svg is not None:
        _write_reports(reports, summary, lines, worst)
    # The human summary goes to stdout only when stdout carries neither the JSON lines nor Markdown.
    render_dataset_summary(summary, Console() if output is not None and not reports.markdown_on_stdout() else err)


def _report_lines(reports: Reports, worst: int, output: Path | None, state: Any) -> Any:
    """What the HTML and Markdown reports keep of the output lines; a resumed run reads the kept ones back."""
    if reports.html is None and reports.markdown is None:
        return None
    from ..report import BatchLines

    lines = BatchLines(worst)
    if state is not None and output is not None:
        lines.add_file(output, state.size)
    return lines


class _Tee:
    """The output sink, with every line it writes also handed to the reports."""

    def __init__(self, sink: Any, lines: Any) -> None:
        self._sink, self._lines = sink, lines

    @property
    def name(self) -> str | None:
        return self._sink.name

    def write(self, obj: Any) -> None:
        self._sink.write(obj)
        self._lines.add(obj)


def _write_reports(reports: Reports, summary: Any, lines: Any, worst: int) -> None:
    from ..report import BatchLines, batch_html, batch_markdown
    from .render_batch import render_dataset_summary
    from .reports import command_line

    doc = summary.to_dict()
    lines = lines if lines is not None else BatchLines(0)
    reports.write(
        html=lambda: batch_html(doc, lines, command_line()),
        markdown=lambda: batch_markdown(doc, lines, command_line()),
        terminal=lambda console: render_dataset_summary(summary, console),
        kind="batch",
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
