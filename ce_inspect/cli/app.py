"""Typer app: each command is its options, one call into the library, one call to an output helper."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..encoding import Layout
from ..errors import InputError
from .options import OUTPUT, Common, GateOpt, gate, read_messages, read_text, shared_options, write_atomic

app = typer.Typer(
    name="ce-inspect",
    help="See, token by token, the cross-entropy loss a causal LM gives an answer, exactly as training computes it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Per-token cross-entropy of a causal LM, as a training step computes it."""


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one at setup (test captures replace it between runs)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(quiet: bool) -> None:
    """Progress and warnings go to stderr; --json keeps only warnings."""
    logger = logging.getLogger("ce_inspect")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


@app.command()
@shared_options
def run(
    common: Common,
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
        typer.Option(
            help="A conversation instead of prompt/answer: a JSON list of {role, content} ('-' for stdin). "
            "Every assistant turn is scored, through the chat template."
        ),
    ] = None,
    last_turn: Annotated[
        bool, typer.Option("--last-turn", help="With --messages: score only the last assistant turn.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.", rich_help_panel=OUTPUT)
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSON document to FILE.", rich_help_panel=OUTPUT),
    ] = None,
    fail_above_loss: GateOpt = None,
) -> None:
    """Score ANSWER given PROMPT (or the assistant turns of a conversation): per-token target, probability,
    loss and rank, with mean and sum."""
    example = read_example(common, prompt, answer, prompt_file, answer_file, messages, last_turn)
    setup_logging(quiet=json_out)

    from ..scoring import score, score_messages

    lm = common.load()
    if example.conversation is not None:
        result = score_messages(
            lm, example.conversation, layout=example.layout, options=common.score_options(), last_turn=last_turn
        )
    else:
        result = score(lm, example.prompt, example.answer, layout=example.layout, options=common.score_options())

    if output is not None:
        write_atomic(output, result.to_json() + "\n")
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    else:
        from .render import render_result

        render_result(result)
    gate("mean loss", result.summary.mean, fail_above_loss, "--fail-above-loss")


@dataclass(frozen=True)
class Example:
    """One example as the command line gave it: a prompt/answer pair or a conversation, and its layout."""

    layout: Layout
    prompt: str = ""
    answer: str = ""
    conversation: list[dict[str, str]] | None = None


def read_example(
    common: Common,
    prompt: str | None,
    answer: str | None,
    prompt_file: Path | None,
    answer_file: Path | None,
    messages: Path | None,
    last_turn: bool,
) -> Example:
    """The pair (--prompt/--answer or their files) or the --messages conversation, as `run` reads them."""
    if messages is not None:
        given = [
            name
            for name, value in (
                ("--prompt", prompt),
                ("--answer", answer),
                ("--prompt-file", prompt_file),
                ("--answer-file", answer_file),
            )
            if value is not None
        ]
        if given:
            raise typer.BadParameter(f"--messages holds the whole conversation; drop {', '.join(given)}")
        return Example(layout=common.layout(chat=True), conversation=read_messages(messages))
    if last_turn:
        raise typer.BadParameter("--last-turn needs --messages (a conversation with several assistant turns)")
    if str(prompt_file) == "-" and str(answer_file) == "-":
        raise typer.BadParameter("only one of --prompt-file and --answer-file can be '-' (stdin)")
    prompt_text = read_text(prompt, prompt_file, "prompt")
    answer_text = read_text(answer, answer_file, "answer")
    if not answer_text:
        raise InputError("the answer is empty: there is nothing to score")
    return Example(layout=common.layout(), prompt=prompt_text, answer=answer_text)


# Commands in their own modules register themselves on `app` when imported.
from . import batch as _batch  # noqa: E402, F401
from . import diff as _diff  # noqa: E402, F401
