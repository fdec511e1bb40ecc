"""`ce-inspect batch`: a JSONL data set through the model, one JSON line per example and a data-set summary."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ce_inspect.cli.errors import cli_message
from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    BATCHING,
    OUTPUT,
    BatchSizeOpt,
    BootstrapOpt,
    Common,
    EntropyOpt,
    FormatOpt,
    GateOpt,
    LimitOpt,
    MaxTokensOpt,
    SeedOpt,
    SortWindowOpt,
    SplitOpt,
    gate,
    shared_options,
)
from ce_inspect.cli.output import DatasetOutputs, command_line
from ce_inspect.cli.render_batch import render_dataset_summary
from ce_inspect.cli.reports import Reports, report_options
from ce_inspect.data import Fields
from ce_inspect.dataset import (
    DEFAULT_SORT_WINDOW,
    DEFAULT_WORST,
    KEEP_BY,
    BatchSettings,
    KeepFilter,
    check_run_arguments,
    score_dataset,
)
from ce_inspect.distributed import current_session
from ce_inspect.errors import InputError
from ce_inspect.reports import BatchLines, batch_html, batch_markdown
from ce_inspect.text import Layout

INPUT = "Input"
FILTER = "Filter"


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
    limit: LimitOpt = None,
    stride: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Score text records longer than the context in windows of the context's length starting every "
            "STRIDE tokens: every token scored once, with at least context - STRIDE tokens of left context.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    rolling: Annotated[
        bool,
        typer.Option(
            "--rolling",
            help="Score text records as lm-eval's loglikelihood_rolling: the prefix token (BOS, else EOS), the text "
            "as lm-eval encodes it, disjoint windows of the context's length, each after one token of context; "
            "summary.sum_logprob is lm-eval's number. --stride slides instead (more context per token).",
            rich_help_panel=INPUT,
        ),
    ] = False,
    rolling_window: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The window of --rolling, lm-eval's max_length (default: the model's context).",
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
        typer.Option(
            "--output",
            "-o",
            help="Write the JSON lines to FILE (default: stdout when it is a pipe or a file; on a terminal only the "
            "summary is shown). A .parquet FILE gets them as one Parquet table, written when the run ends.",
            rich_help_panel=OUTPUT,
        ),
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
    entropy: EntropyOpt = False,
    bootstrap: BootstrapOpt = 0,
    seed: SeedOpt = 0,
    fail_above_loss: GateOpt = None,
    keep_below: Annotated[
        float | None,
        typer.Option(
            help="Keep the records whose --keep-by figure is below X (strictly): their input lines go to --kept, "
            "the others' to --dropped. With --keep-above too: the records in between.",
            metavar="X",
            rich_help_panel=FILTER,
        ),
    ] = None,
    keep_above: Annotated[
        float | None,
        typer.Option(
            help="Keep the records whose --keep-by figure is above X (strictly).", metavar="X", rich_help_panel=FILTER
        ),
    ] = None,
    keep_by: Annotated[
        str | None,
        typer.Option(
            help=f"The figure the filter compares: {', '.join(KEEP_BY)} (each line's summary; max: the largest "
            "token loss). Default: mean.",
            rich_help_panel=FILTER,
        ),
    ] = None,
    kept: Annotated[
        Path | None,
        typer.Option(help="Write the kept records' input lines, verbatim, to FILE.", rich_help_panel=FILTER),
    ] = None,
    dropped: Annotated[
        Path | None,
        typer.Option(help="Write the other scored records' input lines, verbatim, to FILE.", rich_help_panel=FILTER),
    ] = None,
) -> None:
    """Score every record of a data set (JSONL, JSON, Parquet, datasets; '-': JSONL on stdin): one JSON line per
    example, in input order, then a summary."""
    settings = BatchSettings(
        batch_size=batch_size,  # None: the device's default, as for max_tokens
        max_tokens=max_tokens,
        padding_side=padding_side,
        sort_window=sort_window,
        worst=worst,
        sequence=not no_sequence,
        bootstrap=bootstrap,
        seed=seed,
    )
    fields = Fields(prompt=prompt_field, answer=answer_field, messages=messages_field, id=id_field)
    # Bad values are usage errors, before loading.
    layout, options = _windows_layout(common, stride, rolling, rolling_window), common.score_options(entropy=entropy)
    keep = KeepFilter.from_options(keep_below, keep_above, keep_by, kept, dropped)
    out = DatasetOutputs(input, output, reports, summary_json, force=force, lines=True, worst=worst)
    check_run_arguments(input, output, resume=resume, force=force, session=current_session())
    out.check()
    # "Loading ..." and other progress notes only where someone watches; warnings always.
    setup_logging(quiet=not sys.stderr.isatty())
    with out.interrupts():
        summary = score_dataset(
            lambda: common.load(quiet=True), input, output, layout=layout, options=options, settings=settings,
            fields=fields, skip_invalid=skip_invalid, resume=resume, force=force, format=format, split=split,
            limit=limit, stream=out.stream, tee=out.tee, progress=out.progress, notes=out.notes, keep=keep,
        )  # fmt: skip
    if summary is None:
        return  # torchrun, not rank 0: rank 0 merges and reports
    out.write(
        summary,
        kind="batch",
        html=lambda doc, lines: batch_html(doc, lines or BatchLines(0), command_line()),
        markdown=lambda doc, lines: batch_markdown(doc, lines or BatchLines(0), command_line()),
        terminal=lambda console: render_dataset_summary(summary, console),
    )
    gate("token-weighted mean loss", summary.token_weighted_mean_loss, fail_above_loss, "--fail-above-loss")


def _windows_layout(common: Common, stride: int | None, rolling: bool, rolling_window: int | None) -> Layout:
    """The shared layout with the long-text options; a conflict between them is a usage error."""
    try:
        return replace(common.layout(), stride=stride, rolling=rolling, rolling_window=rolling_window)
    except InputError as exc:
        raise typer.BadParameter(cli_message(str(exc))) from None
