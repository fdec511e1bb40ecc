"""`ce-inspect diff`: two models on the same tokens, per-token KL, ΔNLL and top-1 agreement."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..diff import COLOR_BY
from .app import app, read_example, setup_logging
from .options import (
    MODEL,
    OUTPUT,
    Common,
    DnllGateOpt,
    KlGateOpt,
    gate,
    shared_options,
    write_atomic,
)

CANDIDATE = "Candidate model (B)"


@app.command()
@shared_options
def diff(
    common: Common,
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
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt text (masked).")] = None,
    answer: Annotated[str | None, typer.Option("--answer", "-a", help="Answer text (scored).")] = None,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from a file, verbatim ('-' for stdin).")
    ] = None,
    answer_file: Annotated[
        Path | None, typer.Option(help="Read the answer from a file, verbatim ('-' for stdin).")
    ] = None,
    messages: Annotated[
        Path | None,
        typer.Option(help="A conversation instead of prompt/answer: a JSON list of {role, content} ('-' for stdin)."),
    ] = None,
    last_turn: Annotated[
        bool, typer.Option("--last-turn", help="With --messages: compare only the last assistant turn.")
    ] = False,
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
) -> None:
    """Compare a candidate model (--model-b, --dtype-b, ...) with the reference (--model) on the same scored
    tokens: per-token KL(ref‖cand), ΔNLL and top-1 agreement, with llama.cpp's KL statistics."""
    if color_by not in COLOR_BY:
        raise typer.BadParameter(f"{color_by!r}: use kl or dnll", param_hint="--color-by")
    candidate = candidate_options(common, model_b, revision_b, device_b, dtype_b, trust_remote_code_b)
    example = read_example(common, prompt, answer, prompt_file, answer_file, messages, last_turn)
    if output is not None:
        check_output(output, [prompt_file, answer_file, messages])
    setup_logging(quiet=json_out)

    from ..diff import diff as diff_pair
    from ..diff import diff_messages

    options = common.score_options()
    if sequential:
        ref, cand = (lambda: common.load()), (lambda: candidate.load())
    else:
        ref, cand = common.load(), candidate.load()
    if example.conversation is not None:
        result = diff_messages(
            ref, cand, example.conversation, layout=example.layout, options=options, last_turn=last_turn
        )
    else:
        result = diff_pair(ref, cand, example.prompt, example.answer, layout=example.layout, options=options)

    if output is not None:
        write_atomic(output, result.to_json() + "\n")
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    else:
        from .render_diff import render_diff

        render_diff(result, color_by=color_by, worst=worst)
    gate("mean KL(ref‖cand)", result.summary.kl_mean, fail_above_kl, "--fail-above-kl")
    gate("mean ΔNLL", result.summary.dnll_mean, fail_above_dnll, "--fail-above-dnll")


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


def check_output(output: Path, inputs: list[Path | None]) -> None:
    """Before any model loads: --output must not be one of the input files, nor a folder."""
    from ..errors import InputError

    if output.is_dir():
        raise InputError(f"--output {output}: is a folder, not a file")
    for given in inputs:
        if given is not None and str(given) != "-" and given.exists() and given.resolve() == output.resolve():
            raise InputError(f"--output {output}: is an input file; give the output its own file")
