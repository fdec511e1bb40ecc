"""`ce-inspect choices`: multiple-choice questions as lm-evaluation-harness scores them, one JSON line per
question (each choice's per-token figures) and the accuracies."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ce_inspect.choices import choices_dataset
from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    BATCHING,
    GATES,
    OUTPUT,
    BatchSizeOpt,
    Common,
    MaxTokensOpt,
    SortWindowOpt,
    shared_options,
)
from ce_inspect.cli.output import DatasetOutputs
from ce_inspect.cli.render_choices import render_choices
from ce_inspect.cli.reports import Reports, command_line, report_options
from ce_inspect.dataset import DEFAULT_SORT_WINDOW, BatchSettings, check_run_arguments
from ce_inspect.distributed import current_session
from ce_inspect.files import writes_through
from ce_inspect.reports import ChoicesLines, choices_html, choices_markdown

INPUT = "Input"


def _fraction(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value!r}: an accuracy gate is a fraction in [0, 1]")
    return value


def fail_below(value: float | None, limit: float | None) -> None:
    """The --fail-below-acc gate: exit 3 (all output written) when acc is below X, or nothing was scored."""
    if limit is None:
        return
    if value is None:
        print(
            f"Error: gate failed: no question was scored, so --fail-below-acc {limit:g} checked nothing",
            file=sys.stderr,
        )
        raise typer.Exit(3)
    if value < limit:
        print(f"Error: gate failed: acc {value:.6g} is below --fail-below-acc {limit:g}", file=sys.stderr)
        raise typer.Exit(3)


class _Kept:
    """The lines the table shows: seen as they are written, or read back from a regular --output (then the
    resumed ones too)."""

    def __init__(self, output: Path | None, show: int) -> None:
        self.output, self.show, self.lines = output, show, []  # type: ignore[var-annotated]
        self.read_back = output is not None and not writes_through(output)

    def add(self, line: dict[str, Any]) -> None:
        if len(self.lines) < self.show:
            self.lines.append(line)

    def all(self) -> list[dict[str, Any]]:
        if self.read_back and self.output is not None and self.output.exists():
            with open(self.output, encoding="utf-8") as fh:
                return [json.loads(raw) for _, raw in zip(range(self.show), fh)]
        return self.lines


def _both(*tees: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None] | None:
    """One tee that calls each given one (None: none given)."""
    given = [t for t in tees if t is not None]
    if len(given) < 2:
        return given[0] if given else None

    def tee(line: dict[str, Any]) -> None:
        for t in given:
            t(line)

    return tee


@shared_options
@report_options
def choices(
    common: Common,
    reports: Reports,
    input: Annotated[
        Path,
        typer.Argument(
            help="The questions: JSONL ('-': stdin), a JSON array, Parquet or a saved dataset; one per record, "
            '{"prompt", "choices": [...], "label": i} (or lm-eval\'s "query"/"context" and "gold"; or chat '
            '"messages" as the context).',
            show_default=False,
        ),
    ],
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Report and skip questions that cannot be scored.", rich_help_panel=INPUT),
    ] = False,
    mutual_info: Annotated[
        bool,
        typer.Option(
            "--mutual-info",
            help="Also score each choice after an empty context, for lm-eval's acc_mutual_info "
            "(log P(choice | context) - log P(choice)); about twice the work.",
            rich_help_panel=INPUT,
        ),
    ] = False,
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
        typer.Option(
            help="Also write the summary (acc, acc_norm, their standard errors) to FILE.", rich_help_panel=OUTPUT
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue an interrupted run: keep the complete lines of --output.", rich_help_panel=OUTPUT
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.", rich_help_panel=OUTPUT)
    ] = False,
    show: Annotated[int, typer.Option(min=0, help="How many questions the table shows.", rich_help_panel=OUTPUT)] = 20,
    fail_below_acc: Annotated[
        float | None,
        typer.Option(
            callback=_fraction,
            metavar="X",
            help="Exit with code 3 (after writing all output) when acc is below X.",
            rich_help_panel=GATES,
        ),
    ] = None,
) -> None:
    """Score every choice of every question given its context, as lm-evaluation-harness's loglikelihood does (by
    default its exact tokenization, no EOS): per-token figures per choice, predictions, acc and acc_norm."""
    settings = BatchSettings(
        batch_size=batch_size, max_tokens=max_tokens, padding_side=padding_side, sort_window=sort_window
    )
    layout, options = common.layout(), common.score_options()
    out = DatasetOutputs(input, output, reports, summary_json, force=force, lines=True, keep=ChoicesLines)
    check_run_arguments(input, output, resume=resume, force=force, session=current_session())
    out.check()
    setup_logging(quiet=not sys.stderr.isatty())
    kept = _Kept(output, show)
    with out.interrupts():
        summary = choices_dataset(
            lambda: common.load(quiet=True), input, output, layout=layout, tokenization=common.tokenization,
            mutual_info=mutual_info, options=options, settings=settings, skip_invalid=skip_invalid, resume=resume,
            force=force, stream=out.stream, tee=_both(out.tee, None if kept.read_back else kept.add),
            progress=out.progress, notes=out.notes,
        )  # fmt: skip
    if summary is None:
        return  # torchrun, not rank 0: rank 0 merges and reports
    out.write(
        summary,
        kind="choices",
        html=lambda doc, lines: choices_html(doc, lines, command_line()),
        markdown=lambda doc, lines: choices_markdown(doc, lines, command_line()),
        terminal=lambda console: render_choices(summary, kept.all(), console, show=show),
    )
    fail_below(summary.acc, fail_below_acc)
