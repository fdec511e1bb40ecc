"""`ce-inspect audit`: check a training data set's tokens and labels, and (with a model) its losses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ce_inspect.audit import (
    CHECK_NAMES,
    DEFAULT_EXAMPLES,
    DEFAULT_FAIL_ON,
    audit_dataset,
    audit_without_model,
    parse_checks,
)
from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    OUTPUT,
    BatchSizeOpt,
    Common,
    FormatOpt,
    LimitOpt,
    MaxTokensOpt,
    SortWindowOpt,
    SplitOpt,
    shared_options,
)
from ce_inspect.cli.output import DatasetOutputs, command_line
from ce_inspect.cli.render_audit import render_audit
from ce_inspect.cli.reports import Reports, report_options
from ce_inspect.data import Fields
from ce_inspect.dataset import DEFAULT_SORT_WINDOW, BatchSettings, check_run_arguments
from ce_inspect.distributed import current_session
from ce_inspect.errors import InputError
from ce_inspect.files import is_stdout
from ce_inspect.model import load_tokenizer
from ce_inspect.reports import audit_html, audit_markdown

INPUT = "Input"
CHECKS = "Checks"
GATE_EXIT = 3


@shared_options
@report_options
def audit(
    common: Common,
    reports: Reports,
    data: Annotated[
        Path,
        typer.Argument(
            help="The training data, as `batch` reads it (JSONL, JSON array, Parquet, a saved or cached Hub dataset): "
            "pre-tokenized records (input_ids with labels or TRL's masks), conversations, prompt/completion, text."
        ),
    ],
    no_model: Annotated[
        bool,
        typer.Option(
            "--no-model",
            help="Run only the checks that need no forward pass (seconds; loads the tokenizer only).",
            rich_help_panel=CHECKS,
        ),
    ] = False,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="With --no-model: the tokenizer to check against (a folder, Hub id or .gguf; default: --model's).",
            rich_help_panel=CHECKS,
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Check each record as truncated to this many tokens (the trainer's max_length).",
            rich_help_panel=CHECKS,
        ),
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option(
            metavar="CHECK[,CHECK]",
            help=f"Exit with code {GATE_EXIT} (after writing all output) when one of these checks fails; "
            f"'none' never. Default: {','.join(DEFAULT_FAIL_ON)}. Checks: {', '.join(CHECK_NAMES)}.",
            rich_help_panel=CHECKS,
        ),
    ] = None,
    examples: Annotated[
        int,
        typer.Option(min=0, help="Failing records shown in full per check.", rich_help_panel=CHECKS),
    ] = DEFAULT_EXAMPLES,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Report and skip records that are not examples instead of stopping at the first.",
            rich_help_panel=INPUT,
        ),
    ] = False,
    format: FormatOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    id_field: Annotated[str, typer.Option(help="Field that names each record.", rich_help_panel=INPUT)] = "id",
    batch_size: BatchSizeOpt = None,
    max_tokens: MaxTokensOpt = None,
    sort_window: SortWindowOpt = DEFAULT_SORT_WINDOW,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the audit as one JSON document to stdout.", rich_help_panel=OUTPUT),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write one JSON line per record (its failed checks; with a model, its loss) to FILE. With a model "
            "it is written as batch writes: line by line, resumable.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="With a model: continue an interrupted run, keeping the complete lines of --output.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.", rich_help_panel=OUTPUT)
    ] = False,
) -> None:
    """Audit a training data set: labels that train nothing, an end-of-turn never trained, template or
    padding tokens trained, BOS doubled, labels shifted twice, tokenization boundaries, and (with a model)
    loss outliers. Exits 3 when a --fail-on check fails."""
    gate = _checked_gate(fail_on, no_model=no_model, tokenizer=tokenizer)
    _check_usage(data, output, no_model=no_model, resume=resume, force=force, json_out=json_out)
    out = DatasetOutputs(data, output, reports, force=force, data_label="the data", streams=False)
    out.check(json_out=json_out)
    # Validated before anything loads.
    settings = BatchSettings(batch_size=batch_size, max_tokens=max_tokens, sort_window=sort_window)
    setup_logging(quiet=json_out or not sys.stderr.isatty())
    read = {"layout": common.layout(), "fields": Fields(id=id_field), "format": format, "split": split, "limit": limit}
    checking = {"max_length": max_length, "skip_invalid": skip_invalid, "examples": examples, "fail_on": gate}
    if no_model:
        report = audit_without_model(
            lambda: load_tokenizer(
                tokenizer if tokenizer is not None else common.model,
                revision=common.revision,
                trust_remote_code=common.trust_remote_code,
            ),
            data, output, force=force, notes=out.notes, **read, **checking,
        )  # fmt: skip
    else:
        with out.interrupts():
            report = audit_dataset(
                lambda: common.load(quiet=True), data, output, options=common.score_options(), settings=settings,
                resume=resume, force=force, progress=out.progress, notes=out.notes, **read, **checking,
            )  # fmt: skip
        if report is None:
            return  # torchrun, not rank 0: rank 0 merges and reports
    out.write(
        report,
        kind="audit",
        html=lambda doc, lines: audit_html(doc, command_line()),
        markdown=lambda doc, lines: audit_markdown(doc, command_line()),
        terminal=lambda console: render_audit(report, console),
        json_out=json_out,
    )
    _apply_gate(report, out.err)


def _checked_gate(fail_on: str | None, *, no_model: bool, tokenizer: str | None) -> tuple[str, ...]:
    """The --fail-on checks, and the flags that cannot go with them, as usage errors before anything runs."""
    try:
        gate = parse_checks(fail_on if fail_on is not None else DEFAULT_FAIL_ON)
    except InputError as exc:
        raise typer.BadParameter(
            str(exc).replace("in `fail_on`", "").replace("`fail_on`", "--fail-on"), param_hint="--fail-on"
        ) from None
    if no_model and "loss-outlier" in gate:
        raise typer.BadParameter(
            "loss-outlier needs a forward pass and --no-model runs none: drop it from --fail-on or --no-model",
            param_hint="--fail-on",
        )
    if tokenizer is not None and not no_model:
        raise typer.BadParameter("--tokenizer applies with --no-model; with a model its own tokenizer is used")
    return gate


def _apply_gate(report: Any, err: Any) -> None:
    """Exit 3 when a --fail-on check failed, or when the gate checked nothing, everything written by then."""
    unchecked = _gate_over_nothing(report)
    if unchecked:
        err.print(f"Error: gate failed: {unchecked} (--fail-on); exit {GATE_EXIT}", markup=False, style="red")
        raise typer.Exit(GATE_EXIT)
    if report.gate_failed:
        err.print(
            f"audit: {', '.join(report.gate_failed)} failed (--fail-on); exit {GATE_EXIT}", markup=False, style="red"
        )
        raise typer.Exit(GATE_EXIT)


def _gate_over_nothing(report: Any) -> str | None:
    """Why the --fail-on gate checked nothing, or None: a gate over zero records fails rather than passes."""
    if not report.fail_on:
        return None
    if report.records == 0:
        return "no record was checked (every one was skipped), so the gate checked nothing"
    outliers = report.check("loss-outlier")
    if "loss-outlier" in report.fail_on and outliers.ran and outliers.checked == 0:
        return "no record was scored, so the loss-outlier gate checked nothing"
    return None


def _check_usage(data: Path, output: Path | None, *, no_model: bool, resume: bool, force: bool, json_out: bool) -> None:
    """Flags that do not go together: audit's own, then the runner's (resume, torchrun)."""
    if json_out and output is not None and is_stdout(output):
        raise typer.BadParameter("--json prints the audit to stdout, and --output writes its lines there too")
    if resume and no_model:
        raise typer.BadParameter("--resume continues a forward pass; --no-model runs none", param_hint="--resume")
    session = current_session()  # torchrun: this process scores one share of the forward pass
    if session is not None and no_model:
        raise typer.BadParameter(
            "--no-model runs no forward pass, so there is nothing to split over torchrun's ranks; run it in one process"
        )
    check_run_arguments(data, output, resume=resume, force=force, session=session)
