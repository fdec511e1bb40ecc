"""`ce-inspect prefs`: preference pairs (DPO and its kin), chosen and rejected token by token under the policy
and the reference, TRL's figures per pair, its metrics over the data set, the pair checks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ce_inspect.cli.logs import set_quiet, setup_logging
from ce_inspect.cli.options import (
    OUTPUT,
    BatchSizeOpt,
    Common,
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    QuietOpt,
    RevisionOpt,
    SortWindowOpt,
    TrustOpt,
)
from ce_inspect.cli.output import DatasetOutputs
from ce_inspect.cli.render_prefs import render_prefs_summary
from ce_inspect.cli.reports import Reports, command_line, report_options
from ce_inspect.dataset import DEFAULT_SORT_WINDOW, BatchSettings, check_run_arguments
from ce_inspect.distributed import current_session
from ce_inspect.errors import InputError
from ce_inspect.files import writes_through
from ce_inspect.prefs import (
    DEFAULT_BETA,
    DEFAULT_SIMPO_GAMMA,
    LOSS_TYPES,
    PREFS_CHECKS,
    REF_CHECK,
    REFERENCE_LOSSES,
    check_loss,
    prefs_dataset,
)
from ce_inspect.reports import MostNegative, PrefsLines, prefs_html, prefs_markdown
from ce_inspect.text import PREFERENCE_TOKENIZATIONS, TRUNCATION_MODES, check_preference_options

REFERENCE = "Reference model"
LOSS = "Loss"
PAIRS = "Tokenization"
GATE_EXIT = 3
#: How many of the most negative margins the terminal shows token by token (at most --worst).
TERMINAL_PAIRS = 5


def parse_fail_on(value: str | None) -> tuple[str, ...]:
    """--fail-on CHECK[,CHECK]: the pair checks that make the run exit 3; 'none' (the default) never."""
    if value is None or value.strip() == "none":
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in PREFS_CHECKS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown check {', '.join(map(repr, unknown)) or repr(value)}; use {', '.join(PREFS_CHECKS)} or none",
            param_hint="--fail-on",
        )
    return names


def _check_usage(loss_type: str, beta: float, gamma: float, tokenization: str, max_length, truncation_mode) -> None:
    try:
        check_loss(loss_type, beta, gamma)
        check_preference_options(tokenization, max_length, truncation_mode)
    except InputError as exc:
        raise typer.BadParameter(
            str(exc)
            .replace("`loss_type`", "--loss-type")
            .replace("`beta`", "--beta")
            .replace("`gamma`", "--simpo-gamma")
            .replace("`tokenization`", "--tokenization")
            .replace("`truncation_mode`", "--truncation-mode")
            .replace("`max_length`", "--max-length")
        ) from None


@report_options
def prefs(
    reports: Reports,
    data: Annotated[Path, typer.Argument(help="Preference data: JSONL, JSON, Parquet or a saved dataset.")],
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
    ref_model: Annotated[
        str | None,
        typer.Option(
            help="The reference model (folder, Hub id or .gguf). Default: the policy itself, as TRL's DPOTrainer "
            "copies the model it starts from (every reward and margin then 0).",
            rich_help_panel=REFERENCE,
        ),
    ] = None,
    ref_revision: Annotated[
        str | None, typer.Option(help="The reference's Hub revision (default: --revision).", rich_help_panel=REFERENCE)
    ] = None,
    ref_device: Annotated[
        str | None, typer.Option(help="The reference's device (default: --device).", rich_help_panel=REFERENCE)
    ] = None,
    ref_dtype: Annotated[
        str | None, typer.Option(help="The reference's dtype (default: --dtype).", rich_help_panel=REFERENCE)
    ] = None,
    loss_type: Annotated[
        str,
        typer.Option(
            metavar="|".join(LOSS_TYPES),
            help="sigmoid (DPO), ipo (TRL's length-normalised IPO), simpo (CPOTrainer's, no reference) or orpo "
            "(ORPOTrainer's odds-ratio term, no reference).",
            rich_help_panel=LOSS,
        ),
    ] = "sigmoid",
    beta: Annotated[
        float, typer.Option(help="β of the loss (TRL's default 0.1).", rich_help_panel=LOSS)
    ] = DEFAULT_BETA,
    simpo_gamma: Annotated[
        float, typer.Option(help="SimPO's target margin γ (TRL's default 0.5).", rich_help_panel=LOSS)
    ] = DEFAULT_SIMPO_GAMMA,
    tokenization: Annotated[
        str,
        typer.Option(
            metavar="|".join(PREFERENCE_TOKENIZATIONS),
            help="trl: as TRL's DPOTrainer prepares each pair (the default); separate or joint: each side laid out "
            "as `run` lays out a prompt/answer pair (plain pairs only).",
            rich_help_panel=PAIRS,
        ),
    ] = "trl",
    max_length: Annotated[
        int | None,
        typer.Option(
            min=1, help="Cut each prompt + side to this many tokens, as TRL's max_length does.", rich_help_panel=PAIRS
        ),
    ] = None,
    truncation_mode: Annotated[
        str,
        typer.Option(
            metavar="|".join(TRUNCATION_MODES),
            help="Which end --max-length keeps (TRL's truncation_mode).",
            rich_help_panel=PAIRS,
        ),
    ] = "keep_start",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write one JSON line per pair to FILE (default: stdout).", rich_help_panel=OUTPUT
        ),
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="Also write the summary as one JSON document to FILE.", rich_help_panel=OUTPUT)
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip records that are not valid pairs.", rich_help_panel=OUTPUT)
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue an interrupted run: keep the complete lines of --output.", rich_help_panel=OUTPUT
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.", rich_help_panel=OUTPUT)
    ] = False,
    export_ref: Annotated[
        Path | None,
        typer.Option(
            help="Also write the records with the reference's ref_chosen_logps and ref_rejected_logps added, as "
            "TRL's DPOTrainer names its precomputed reference log-probs (JSON Lines).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    worst: Annotated[
        int,
        typer.Option(
            min=0, help="How many pairs with the most negative margins the summary lists.", rich_help_panel=OUTPUT
        ),
    ] = 10,
    fail_on: Annotated[
        str | None,
        typer.Option(
            metavar="CHECK[,CHECK]",
            help=f"Exit with code {GATE_EXIT} (after writing all output) when one of these checks fires on a pair; "
            f"'none' (the default) never. Checks: {', '.join(PREFS_CHECKS)} ({REF_CHECK}: with --ref-model only).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    batch_size: BatchSizeOpt = None,
    max_tokens: MaxTokensOpt = None,
    sort_window: SortWindowOpt = DEFAULT_SORT_WINDOW,
) -> None:
    """Score preference pairs ({prompt, chosen, rejected}, plain or conversational, or chosen/rejected alone) as
    TRL's DPOTrainer does: per pair both sides token by token, TRL's chosen_logps, rejected_logps, ref_*_logps,
    rewards, margin and loss, the pair checks; then TRL's metrics over the data set."""
    set_quiet(quiet)
    gate = parse_fail_on(fail_on)
    _check_usage(loss_type, beta, simpo_gamma, tokenization, max_length, truncation_mode)
    policy = Common(model=model, revision=revision, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    policy.check()
    given_ref = any(v is not None for v in (ref_model, ref_revision, ref_device, ref_dtype))
    if given_ref and loss_type not in REFERENCE_LOSSES:
        raise typer.BadParameter(f"--loss-type {loss_type} compares with no reference; drop the --ref-* options")
    if REF_CHECK in gate and not given_ref:
        raise typer.BadParameter(
            f"{REF_CHECK} compares the sides under a reference model: give --ref-model", param_hint="--fail-on"
        )
    reference = None
    if given_ref:
        reference = Common(
            model=ref_model if ref_model is not None else model,
            revision=ref_revision if ref_revision is not None else revision,
            device=ref_device if ref_device is not None else device,
            dtype=ref_dtype if ref_dtype is not None else dtype,
            trust_remote_code=trust_remote_code,
        )
        reference.check()
    settings = BatchSettings(batch_size=batch_size, max_tokens=max_tokens, sort_window=sort_window, worst=worst)
    out = DatasetOutputs(
        data, output, reports, summary_json, force=force, data_label="the data", lines=True, keep=PrefsLines
    )
    check_run_arguments(data, output, resume=resume, force=force, session=current_session())
    out.check()
    shown = MostNegative(min(worst, TERMINAL_PAIRS))  # the pairs the terminal shows token by token
    read_back = output is not None and not writes_through(output)
    tee = out.tee if read_back else _both(out.tee, shown.add)
    setup_logging(quiet=not sys.stderr.isatty())
    with out.interrupts():
        summary = prefs_dataset(
            policy.load, data, output, ref=reference.load if reference is not None else None, loss_type=loss_type,
            beta=beta, gamma=simpo_gamma, tokenization=tokenization, max_length=max_length,
            truncation_mode=truncation_mode, settings=settings, skip_invalid=skip_invalid, resume=resume, force=force,
            stream=out.stream, tee=tee, progress=out.progress, notes=out.notes, export_ref=export_ref,
        )  # fmt: skip
    if summary is None:
        return  # torchrun, not rank 0: rank 0 reports the run and applies the gate
    if read_back and output.exists():  # the resumed, merged and new lines
        shown.add_file(output, output.stat().st_size)
    out.write(
        summary,
        kind="prefs_summary",
        html=lambda doc, lines: prefs_html(doc, lines, command_line()),
        markdown=lambda doc, lines: prefs_markdown(doc, lines, command_line()),
        terminal=lambda console: render_prefs_summary(summary, console, shown.ranked()),
    )
    _apply_gate(summary, gate, out)


def _both(first: Callable[[dict], None] | None, second: Callable[[dict], None]) -> Callable[[dict], None]:
    if first is None:
        return second

    def tee(line: dict) -> None:
        first(line)
        second(line)

    return tee


def _apply_gate(summary, gate: tuple[str, ...], out: DatasetOutputs) -> None:
    """Exit 3 when a --fail-on check fired on a pair, or when the gate checked no pair, everything written."""
    if not gate:
        return
    if not summary.pairs:
        out.err.print(
            f"Error: gate failed: no pair was checked (--fail-on); exit {GATE_EXIT}", markup=False, style="red"
        )
        raise typer.Exit(GATE_EXIT)
    fired = [f"{name} ({summary.checks[name]} pairs)" for name in gate if summary.checks.get(name)]
    if fired:
        out.err.print(f"prefs: {', '.join(fired)} failed (--fail-on); exit {GATE_EXIT}", markup=False, style="red")
        raise typer.Exit(GATE_EXIT)
