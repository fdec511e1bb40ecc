"""`ce-inspect batch`: a JSONL data set through the model, one JSON line per example and a data-set summary."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    BATCHING,
    OUTPUT,
    BatchSizeOpt,
    Common,
    FormatOpt,
    GateOpt,
    MaxTokensOpt,
    SortWindowOpt,
    SplitOpt,
    gate,
    shared_options,
    write_documents,
)
from ce_inspect.cli.reports import Reports, report_options
from ce_inspect.dataset import DEFAULT_SORT_WINDOW, DEFAULT_WORST

if TYPE_CHECKING:
    from ce_inspect.data import Fields
    from ce_inspect.dataset import BatchSettings, DatasetSummary
    from ce_inspect.model import LoadedModel
    from ce_inspect.scoring import ScoreOptions
    from ce_inspect.text import Layout

INPUT = "Input"


@shared_options
@report_options
def batch(
    common: Common,
    reports: Reports,
    input: Annotated[
        Path,
        typer.Argument(
            help="The data: JSONL ('-': stdin), a JSON array, Parquet, a folder saved with datasets' save_to_disk, "
            "or a Hub dataset id from the local cache (the last three need: pip install 'ce-inspect\\[datasets]'). "
            "Records: prompt/answer, prompt/completion, messages, conversations (ShareGPT), text, or input_ids "
            "with labels.",
            show_default=False,
        ),
    ],
    format: FormatOpt = None,
    split: SplitOpt = None,
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
    batch_size: BatchSizeOpt = None,
    max_tokens: MaxTokensOpt = None,
    padding_side: Annotated[
        str, typer.Option(help="Pad batches on the right or the left (same figures).", rich_help_panel=BATCHING)
    ] = "right",
    sort_window: SortWindowOpt = DEFAULT_SORT_WINDOW,
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
        bool,
        typer.Option(
            "--force",
            help="Replace an existing --output file (and a --summary-json file ce-inspect did not write).",
            rich_help_panel=OUTPUT,
        ),
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
    fail_above_loss: GateOpt = None,
) -> None:
    """Score every record of a data set (JSONL, JSON, Parquet, datasets; '-': JSONL on stdin): one JSON line per
    example, in input order, then a summary."""
    from ce_inspect.data import Fields
    from ce_inspect.dataset import BatchSettings

    _check_usage(padding_side, resume=resume, force=force, output=output)
    from ce_inspect.distributed import current_session

    session = current_session()  # torchrun: this process scores one share (runner.DatasetRun)
    if session is not None:
        check_sharded_usage(session.world, input, output)
    settings = BatchSettings(
        batch_size=batch_size,  # None: the device's default, as for max_tokens
        max_tokens=max_tokens,
        padding_side=padding_side,
        sort_window=sort_window,
        worst=worst,
        sequence=not no_sequence,
    )
    fields = Fields(prompt=prompt_field, answer=answer_field, messages=messages_field, id=id_field)
    # Bad values are usage errors, before loading.
    layout, options = replace(common.layout(), stride=stride), common.score_options()
    stdout = sys.stdout  # taken now: stdout carries only JSON lines when --output is not given
    # "Loading ..." and other progress notes only where someone watches; warnings always.
    setup_logging(quiet=not sys.stderr.isatty())
    from rich.console import Console

    err = Console(stderr=True)
    done = _checked_and_scored(
        common,
        reports,
        session,
        input,
        output,
        summary_json,
        fields,
        layout,
        options,
        settings,
        err,
        stdout,
        resume=resume,
        force=force,
        worst=worst,
        skip_invalid=skip_invalid,
        format=format,
        split=split,
    )
    if done is None:
        return  # torchrun, not rank 0: rank 0 merges and reports
    summary, lines = done
    _write_summary(summary, lines, reports, output, summary_json, worst, err)
    gate("token-weighted mean loss", summary.token_weighted_mean_loss, fail_above_loss, "--fail-above-loss")


def _write_summary(
    summary: DatasetSummary,
    lines: Any,
    reports: Reports,
    output: Path | None,
    summary_json: Path | None,
    worst: int,
    err: Any,
) -> None:
    """--summary-json and the reports (all or nothing), then the human summary: on stdout only when stdout
    carries neither the JSON lines nor Markdown."""
    from rich.console import Console

    from ce_inspect.cli.render_batch import render_dataset_summary
    from ce_inspect.files import is_stdout

    documents = []
    if summary_json is not None:
        from ce_inspect.contract import dumps

        documents.append(("`summary_json`", summary_json, dumps(summary.to_dict(), indent=2) + "\n"))
    if lines is not None or reports.svg is not None:
        _write_reports(reports, summary, lines, worst, also=documents)  # all or nothing
    else:
        write_documents(documents)
    to_stdout = output is not None and not is_stdout(output) and not reports.markdown_on_stdout()
    render_dataset_summary(summary, Console() if to_stdout else err)


def _checked_and_scored(
    common: Common,
    reports: Reports,
    session: Any,
    input: Path,
    output: Path | None,
    summary_json: Path | None,
    fields: Fields,
    layout: Layout,
    options: ScoreOptions,
    settings: BatchSettings,
    err: Any,
    stdout: Any,
    *,
    resume: bool,
    force: bool,
    worst: int,
    skip_invalid: bool,
    format: str | None,
    split: str | None,
) -> tuple[DatasetSummary, Any] | None:
    """Check every output and lock --output, read the resume state and the input, load the model and score
    through the library's one data-set runner: the data-set summary and what the reports keep of the lines
    (None on a torchrun rank other than 0)."""
    from ce_inspect.cli.render_batch import batch_progress
    from ce_inspect.dataset import DatasetRun

    # Every output is checked, and --output locked, before the input is read or the model loads.
    check_outputs(input, output, summary_json, resume=resume, force=force)
    reports.check(
        inputs=[("the input", input)],
        outputs=[("--output", output), ("--summary-json", summary_json)],
        stdout_busy=None if output is not None else "the JSON lines (no --output)",
        force=force,
    )
    with DatasetRun(
        input, output, worst=worst, resume=resume, force=force, fields=fields, format=format, split=split,
        session=session, notes=stderr_notes(err),
    ) as run:  # fmt: skip
        lm = common.load(quiet=True)
        _check_stride(layout, lm)
        _top_k_note(err, lm, options)
        scan = run.scan(lm, layout=layout, options=options, skip_invalid=skip_invalid)
        lines = _report_lines(reports, worst, output, run.state if run.sharded is None else None)
        with interrupts(err):
            summary = run.run(
                lm,
                scan,
                options=options,
                settings=settings,
                stream=stdout,
                tee=lines.add if lines is not None else None,
                progress=lambda scan: batch_progress(err, scan),
            )
        if summary is None:
            return None  # not rank 0: rank 0 merges and reports
        if run.sharded is not None and lines is not None and output is not None:
            lines.add_file(output, output.stat().st_size)  # rank 0: the reports see the merged lines
    return summary, lines


def stderr_notes(err: Any) -> Any:
    """What the runner tells the user on the way (how the data is read, a torn line dropped), on stderr."""
    from ce_inspect.cli.errors import cli_message

    return lambda message: err.print(cli_message(message), markup=False, soft_wrap=True, highlight=False)


@contextmanager
def interrupts(err: Any) -> Iterator[None]:
    """Ctrl-C or `kill` during a run: the runner's word on what the output keeps, then exit 130."""
    from ce_inspect.dataset import Interrupted

    try:
        yield
    except Interrupted as exc:
        err.print(f"Interrupted: {exc.message}.", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _check_stride(layout: Layout, lm: LoadedModel) -> None:
    """--stride against the model's context, known once the model is loaded: a usage error, before the scan."""
    from ce_inspect.errors import InputError
    from ce_inspect.text import check_stride

    try:
        check_stride(layout.stride, lm.context_length)
    except InputError as exc:
        raise typer.BadParameter(str(exc)) from None


def _top_k_note(err: Any, lm: LoadedModel, options: ScoreOptions) -> None:
    from ce_inspect.scoring import top_k_note

    note = top_k_note(lm, options)
    if note:  # every line's notes carry it too
        err.print(f"note: {note}", markup=False, soft_wrap=True)


def _check_usage(padding_side: str, *, resume: bool, force: bool, output: Path | None) -> None:
    if padding_side not in ("right", "left"):
        raise typer.BadParameter(f"{padding_side!r}: use right or left", param_hint="--padding-side")
    if resume and output is None:
        raise typer.BadParameter("--resume continues an --output file; give --output", param_hint="--resume")
    if resume and force:
        raise typer.BadParameter("give --resume or --force, not both", param_hint="--resume")


def check_outputs(input: Path, output: Path | None, summary_json: Path | None, *, resume: bool, force: bool) -> None:
    """Every output path, checked by the core's one validator before anything is read or loaded."""
    import os

    from ce_inspect.dataset import check_batch_output
    from ce_inspect.errors import InputError
    from ce_inspect.files import check_output

    if output is not None:
        check_batch_output(output, input, resume=resume, force=force)
    if summary_json is not None:
        if output is not None and os.path.realpath(summary_json) == os.path.realpath(output):
            raise InputError(f"`summary_json` {summary_json}: is --output too; give the summary its own file")
        inputs = [("the input file", input), ("`output`", output)]
        check_output(summary_json, inputs=inputs, label="`summary_json`", force=force)


def _report_lines(reports: Reports, worst: int, output: Path | None, state: Any) -> Any:
    """What the HTML and Markdown reports keep of the output lines; a resumed run reads the kept ones back."""
    if reports.html is None and reports.markdown is None:
        return None
    from ce_inspect.reports import BatchLines

    lines = BatchLines(worst)
    if state is not None and output is not None:
        lines.add_file(output, state.size)
    return lines


def _write_reports(reports: Reports, summary: Any, lines: Any, worst: int, also: Any = ()) -> None:
    from ce_inspect.cli.render_batch import render_dataset_summary
    from ce_inspect.cli.reports import command_line
    from ce_inspect.reports import BatchLines, batch_html, batch_markdown

    doc = summary.to_dict()
    lines = lines if lines is not None else BatchLines(0)
    reports.write(
        html=lambda: batch_html(doc, lines, command_line()),
        markdown=lambda: batch_markdown(doc, lines, command_line()),
        terminal=lambda console: render_dataset_summary(summary, console),
        kind="batch",
        also=also,
    )


def check_sharded_usage(world: int, input: Path, output: Path | None) -> None:
    from ce_inspect.files import writes_through

    if output is None:
        raise typer.BadParameter(
            f"the {world} ranks of a torchrun run cannot share stdout; give --output", param_hint="--output"
        )
    from ce_inspect.files import is_stream

    if is_stream(input):
        raise typer.BadParameter(
            "under torchrun every rank reads the input itself; give a regular file, not stdin or a pipe"
        )
    if writes_through(output):
        raise typer.BadParameter(
            "under torchrun the ranks' parts are merged into a regular file; give one", param_hint="--output"
        )
