"""`ce-inspect diff`: two models on the same tokens, per-token KL, ΔNLL and top-1 agreement."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from ce_inspect.cli.errors import as_candidate
from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    MODEL,
    OUTPUT,
    AnswerFileOpt,
    AnswerOpt,
    BatchSizeOpt,
    BootstrapOpt,
    Common,
    DnllGateOpt,
    KlGateOpt,
    LastTurnOpt,
    LimitOpt,
    MaxTokensOpt,
    MessagesOpt,
    PromptFileOpt,
    PromptOpt,
    SeedOpt,
    SortWindowOpt,
    gate,
    read_example,
    shared_options,
    write_documents,
)
from ce_inspect.cli.output import DatasetOutputs, command_line
from ce_inspect.cli.render_diff import render_diff, render_diff_dataset
from ce_inspect.cli.reports import Reports, report_options
from ce_inspect.dataset import DEFAULT_SORT_WINDOW, BatchSettings, check_run_arguments
from ce_inspect.diff import COLOR_BY, diff_dataset, diff_messages
from ce_inspect.diff import diff as diff_pair
from ce_inspect.distributed import current_session
from ce_inspect.errors import CeInspectError, DeviceError
from ce_inspect.files import check_output
from ce_inspect.model import check_device, check_dtype
from ce_inspect.reports import BatchLines, diff_dataset_html, diff_dataset_markdown, diff_html, diff_markdown

CANDIDATE = "Candidate model (B)"
DATASET = "Data set (DATA or --input)"


@shared_options
@report_options
def diff(
    common: Common,
    reports: Reports,
    data: Annotated[
        Path | None,
        typer.Argument(
            metavar="DATA",
            help="Compare on every record of a data set, read as `batch` reads it (JSONL, JSON, Parquet, datasets): "
            "one JSON line per example to --output (default stdout), then a summary. Same as --input DATA.",
            show_default=False,
        ),
    ] = None,
    model_b: Annotated[
        str | None,
        typer.Option(
            "--model-b",
            help="The candidate model (folder, Hub id or .gguf), compared with --model. Default: the same model.",
            rich_help_panel=CANDIDATE,
        ),
    ] = None,
    revision_b: Annotated[
        str | None, typer.Option(help="The candidate's Hub revision (default: --revision).", rich_help_panel=CANDIDATE)
    ] = None,
    device_b: Annotated[
        str | None, typer.Option(help="The candidate's device (default: --device).", rich_help_panel=CANDIDATE)
    ] = None,
    dtype_b: Annotated[
        str | None, typer.Option(help="The candidate's dtype (default: --dtype).", rich_help_panel=CANDIDATE)
    ] = None,
    trust_remote_code_b: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code-b",
            help="Allow the candidate folder's own Python code to run.",
            rich_help_panel=CANDIDATE,
        ),
    ] = False,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential",
            help="Load one model at a time: keep only the reference's scored hidden states and head, free it, "
            "then load the candidate (same figures, for models that do not fit together).",
            rich_help_panel=MODEL,
        ),
    ] = False,
    prompt: PromptOpt = None,
    answer: AnswerOpt = None,
    prompt_file: PromptFileOpt = None,
    answer_file: AnswerFileOpt = None,
    messages: MessagesOpt = None,
    last_turn: LastTurnOpt = False,
    color_by: Annotated[
        str, typer.Option(metavar="kl|dnll", help="Colour the heat strip by KL or by ΔNLL.", rich_help_panel=OUTPUT)
    ] = "kl",
    worst: Annotated[
        int,
        typer.Option(min=0, help="Rows of the table of tokens where the models disagree most.", rich_help_panel=OUTPUT),
    ] = 10,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.", rich_help_panel=OUTPUT)
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSON document to FILE.", rich_help_panel=OUTPUT),
    ] = None,
    fail_above_kl: KlGateOpt = None,
    fail_above_dnll: DnllGateOpt = None,
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="The data set, as the DATA argument gives it (kept for scripts that name it).",
            rich_help_panel=DATASET,
        ),
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip records that cannot be compared.", rich_help_panel=DATASET)
    ] = False,
    limit: LimitOpt = None,
    batch_size: BatchSizeOpt = None,
    max_tokens: MaxTokensOpt = None,
    sort_window: SortWindowOpt = DEFAULT_SORT_WINDOW,
    bootstrap: BootstrapOpt = 0,
    seed: SeedOpt = 0,
    summary_json: Annotated[
        Path | None,
        typer.Option(help="Also write the data-set summary as one JSON document to FILE.", rich_help_panel=DATASET),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.", rich_help_panel=DATASET)
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run: keep the --output file's complete lines, compare the rest "
            "(refused if a model or an option changed).",
            rich_help_panel=DATASET,
        ),
    ] = False,
) -> None:
    """Compare a candidate model (--model-b, --dtype-b, ...) with the reference (--model) on the same scored
    tokens: per-token KL(ref‖cand), ΔNLL and top-1 agreement, with llama.cpp's KL statistics."""
    if color_by not in COLOR_BY:
        raise typer.BadParameter(f"{color_by!r}: use kl or dnll", param_hint="--color-by")
    candidate = candidate_options(common, model_b, revision_b, device_b, dtype_b, trust_remote_code_b)
    gates = (fail_above_kl, fail_above_dnll)
    input, flag = data_set(data, input)
    label = "--input" if flag == "--input" else "the data"  # how messages name it
    if input is not None:
        refuse_with_input(
            flag,
            {
                "--prompt": prompt,
                "--answer": answer,
                "--prompt-file": prompt_file,
                "--answer-file": answer_file,
                "--messages": messages,
                "--last-turn": last_turn or None,
                "--json": json_out or None,
                "--sequential": sequential or None,
            },
        )
        settings = BatchSettings(
            batch_size=batch_size,  # None: the device's default, as for max_tokens
            max_tokens=max_tokens,
            sort_window=sort_window,
            worst=worst,
            bootstrap=bootstrap,
            seed=seed,
        )
        run = {"skip_invalid": skip_invalid, "force": force, "resume": resume, "limit": limit, "label": label}
        _diff_input(common, candidate, reports, input, output, summary_json, settings, gates, **run)
        return
    for flag, value in (
        ("--summary-json", summary_json),
        ("--batch-size", batch_size),
        ("--max-tokens", max_tokens),
        ("--resume", resume or None),
        ("--limit", limit),
        ("--bootstrap", bootstrap or None),
    ):
        if value is not None:
            raise typer.BadParameter(f"{flag} goes with a data set (DATA or --input)", param_hint=flag)
    if current_session() is not None:
        raise typer.BadParameter("under torchrun diff splits a data set over the ranks; give DATA (or --input)")
    example = read_example(common, prompt, answer, prompt_file, answer_file, messages, last_turn)
    if output is not None:
        inputs = [("an input file", p) for p in (prompt_file, answer_file, messages)]
        check_output(output, inputs=inputs, label="--output", force=force)  # the core's one output validator
    reports.check(
        inputs=[("--prompt-file", prompt_file), ("--answer-file", answer_file), ("--messages", messages)],
        outputs=[("--output", output)],
        stdout_busy="--json" if json_out else None,
        force=force,
    )
    setup_logging(quiet=json_out)
    result = _diff_example(common, candidate, example, last_turn=last_turn, sequential=sequential)
    _write_example_outputs(result, reports, output, json_out=json_out, color_by=color_by, worst=worst)
    gate("mean KL(ref‖cand)", result.summary.kl_mean, fail_above_kl, "--fail-above-kl", verb="compared")
    gate("mean ΔNLL", result.summary.dnll_mean, fail_above_dnll, "--fail-above-dnll", verb="compared")


def _diff_input(
    common: Common,
    candidate: Common,
    reports: Reports,
    input: Path,
    output: Path | None,
    summary_json: Path | None,
    settings: BatchSettings,
    gates: tuple[float | None, float | None],
    *,
    skip_invalid: bool,
    force: bool,
    resume: bool,
    limit: int | None,
    label: str,
) -> None:
    """diff --input: the data set through both models with the library's ``diff_dataset``, its outputs, then the
    gates (on rank 0 under torchrun)."""
    out = DatasetOutputs(
        input, output, reports, summary_json, force=force, data_label=label, lines=True,
        keep=lambda: BatchLines(settings.worst, rank="kl_mean"),
    )  # fmt: skip
    check_run_arguments(input, output, resume=resume, force=force, session=current_session())
    out.check()
    setup_logging(quiet=not sys.stderr.isatty())
    with out.interrupts():
        summary = diff_dataset(
            common.load, lambda: load_candidate(candidate), input, output, layout=common.layout(),
            options=common.score_options(), settings=settings, skip_invalid=skip_invalid, resume=resume,
            force=force, limit=limit, stream=out.stream, progress=out.progress, notes=out.notes, data_label=label,
            describe=False,
        )  # fmt: skip
    if summary is None:
        return  # torchrun, not rank 0: rank 0 reports the run and applies the gates
    out.write(
        summary,
        kind="diff_summary",
        html=lambda doc, lines: diff_dataset_html(doc, command_line(), lines),
        markdown=lambda doc, lines: diff_dataset_markdown(doc, command_line(), lines),
        terminal=lambda console: render_diff_dataset(summary, console),
    )
    compared = summary.summary
    gate("mean KL(ref‖cand)", compared and compared.kl_mean, gates[0], "--fail-above-kl", verb="compared")
    gate("mean ΔNLL", compared and compared.dnll_mean, gates[1], "--fail-above-dnll", verb="compared")


def _diff_example(common: Common, candidate: Common, example, *, last_turn: bool, sequential: bool):
    """One example (a pair or a conversation) through both models; ``sequential``: one model in memory at a time."""
    options = common.score_options()
    if sequential:
        ref, cand = (lambda: common.load()), (lambda: load_candidate(candidate))
    else:
        ref, cand = common.load(), load_candidate(candidate)
    if example.conversation is not None:
        return diff_messages(
            ref, cand, example.conversation, layout=example.layout, options=options, last_turn=last_turn
        )
    return diff_pair(ref, cand, example.prompt, example.answer, layout=example.layout, options=options)


def _write_example_outputs(result, reports: Reports, output: Path | None, *, json_out: bool, color_by: str, worst: int):
    """--output and the reports (all or nothing), then the JSON document or the human view."""
    documents = [("--output", output, result.to_json() + "\n")] if output is not None else []
    if reports.requested():
        doc = result.to_dict()
        reports.write(
            html=lambda: diff_html(doc, command_line(), worst),
            markdown=lambda: diff_markdown(doc, command_line(), worst),
            terminal=lambda console: render_diff(result, color_by=color_by, worst=worst, console=console),
            kind="diff",
            also=documents,  # --output with the reports, all or nothing
        )
    else:
        write_documents(documents)
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    elif not reports.markdown_on_stdout():
        render_diff(result, color_by=color_by, worst=worst)


def data_set(data: Path | None, input: Path | None) -> tuple[Path | None, str]:
    """The data set, from the DATA argument or its alias --input (not both), and how messages name it."""
    if data is not None and input is not None:
        raise typer.BadParameter(
            f"give the data set once: DATA ({data}) or --input ({input}), not both", param_hint="--input"
        )
    return (data, "DATA") if data is not None else (input, "--input")


def refuse_with_input(given_as: str, flags: dict[str, object]) -> None:
    """With a data set every example comes from it: the single-example options are usage errors."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise typer.BadParameter(f"{given_as} reads every example from the data set; drop {', '.join(given)}")


def candidate_options(
    common: Common,
    model_b: str | None,
    revision_b: str | None,
    device_b: str | None,
    dtype_b: str | None,
    trust_remote_code_b: bool,
) -> Common:
    """The candidate's model options: each --X-b, else the reference's --X. The same model at the same
    settings compares nothing: that is a usage error."""
    if all(v is None for v in (model_b, revision_b, device_b, dtype_b)):
        raise typer.BadParameter(
            "give the candidate model: --model-b, or the same model at another --dtype-b, --device-b or --revision-b",
            param_hint="--model-b",
        )

    for value, check, name in ((device_b, check_device, "device"), (dtype_b, check_dtype, "dtype")):
        if value is not None:
            try:
                check(value)
            except DeviceError as exc:  # the core's one validator; its message names the parameter
                raise typer.BadParameter(str(exc).replace(f"`{name}`", f"--{name}-b")) from None
    candidate = dataclasses.replace(
        common,
        model=model_b if model_b is not None else common.model,
        revision=revision_b if revision_b is not None else common.revision,
        device=device_b if device_b is not None else common.device,
        dtype=dtype_b if dtype_b is not None else common.dtype,
        trust_remote_code=trust_remote_code_b,
    )
    try:
        candidate.check()
    except typer.BadParameter as exc:
        hint = exc.param_hint if isinstance(exc.param_hint, str) else None
        raise typer.BadParameter(exc.message, param_hint=f"{hint}-b" if hint else None) from None
    return candidate


def load_candidate(candidate: Common):
    """The candidate model, loaded; an error loading it names the candidate's flags (--trust-remote-code-b,
    --dtype-b, ...), not the reference's, which ``load``'s own parameter names would become."""
    try:
        return candidate.load()
    except CeInspectError as exc:
        exc.args = (as_candidate(str(exc)),)  # the same error, its message in the candidate's words
        raise
