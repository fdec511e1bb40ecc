"""Typer app: each command is its options, one call into the library, one call to an output helper."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    OUTPUT,
    ChunkOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    IgnoreIndexOpt,
    ModelOpt,
    NoEosOpt,
    NoMaskPromptOpt,
    ReductionOpt,
    RevisionOpt,
    SepOpt,
    SmoothingOpt,
    TopKOpt,
    TruncateOpt,
    TrustOpt,
    VerifyOpt,
    check_device,
    check_reduction,
    make_layout,
    read_text,
    write_atomic,
)

app = typer.Typer(
    name="ce-inspect",
    help="See, token by token, the cross-entropy loss a causal LM assigns to an answer, exactly as training computes it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Per-token cross-entropy of a causal LM, as a training step computes it."""


def setup_logging(quiet: bool) -> None:
    """Progress and warnings go to stderr; --json keeps only warnings."""
    logger = logging.getLogger("ce_inspect")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


@app.command()
def run(
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt text (masked).")] = None,
    answer: Annotated[Optional[str], typer.Option("--answer", "-a", help="Answer text (scored).")] = None,
    prompt_file: Annotated[
        Optional[Path], typer.Option(help="Read the prompt from a file, verbatim ('-' for stdin).")
    ] = None,
    answer_file: Annotated[
        Optional[Path], typer.Option(help="Read the answer from a file, verbatim ('-' for stdin).")
    ] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    trust_remote_code: TrustOpt = False,
    sep: SepOpt = None,
    no_eos: NoEosOpt = False,
    ignore_index: IgnoreIndexOpt = -100,
    no_mask_prompt: NoMaskPromptOpt = False,
    truncate_prompt: TruncateOpt = False,
    label_smoothing: SmoothingOpt = 0.0,
    reduction: ReductionOpt = "mean",
    top_k: TopKOpt = 0,
    verify: VerifyOpt = False,
    chunk_tokens: ChunkOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.", rich_help_panel=OUTPUT)
    ] = False,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Also write the JSON document to FILE.", rich_help_panel=OUTPUT)
    ] = None,
) -> None:
    """Score ANSWER given PROMPT: per-token target, probability, loss and rank, with mean and sum."""
    check_device(device, dtype)
    check_reduction(reduction)
    if str(prompt_file) == "-" and str(answer_file) == "-":
        raise typer.BadParameter("only one of --prompt-file and --answer-file can be '-' (stdin)")
    prompt_text = read_text(prompt, prompt_file, "prompt")
    answer_text = read_text(answer, answer_file, "answer")
    layout = make_layout(sep, no_eos, ignore_index, no_mask_prompt, truncate_prompt)
    setup_logging(quiet=json_out)

    from .. import ScoreOptions, load, score

    options = ScoreOptions(
        reduction=reduction, label_smoothing=label_smoothing, top_k=top_k, verify=verify, chunk_tokens=chunk_tokens
    )
    lm = load(
        model,
        revision=revision,
        device=device,
        dtype=dtype,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        quiet=json_out,
    )
    result = score(lm, prompt_text, answer_text, layout=layout, options=options)

    if output is not None:
        write_atomic(output, result.to_json() + "\n")
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    else:
        from .render import render_result

        render_result(result)
