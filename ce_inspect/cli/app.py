"""Typer app: each command is its options, one call into the library, one call to an output helper."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ce_inspect.cli.logs import setup_logging
from ce_inspect.cli.options import (
    OUTPUT,
    AnswerFileOpt,
    AnswerOpt,
    Common,
    EntropyOpt,
    GateOpt,
    LastTurnOpt,
    MessagesOpt,
    PromptFileOpt,
    PromptOpt,
    gate,
    read_example,
    shared_options,
    write_documents,
)
from ce_inspect.cli.render import render_result
from ce_inspect.cli.reports import Reports, command_line, report_options
from ce_inspect.contract import ce_inspect_version
from ce_inspect.files import check_output
from ce_inspect.reports import run_html, run_markdown
from ce_inspect.scoring import score, score_messages

#: `-h` is `--help` on the app and, inherited through the context, on every command (as lm-eval, llm and hf take it).
CONTEXT = {"help_option_names": ["-h", "--help"]}


class _Flags:
    """Typer (0.29) shows each flag's Python type in --help (`--force  <bool>`), though a flag takes no value:
    an empty metavar on every flag, and on the help option, leaves the type column blank for them only."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            _hide_flag_type(option)
        return option

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _hide_flag_type(param)
        return params


def _hide_flag_type(param: Any) -> None:
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""


class _Group(_Flags, typer.core.TyperGroup):
    """The app's group: flags shown without a type."""


class _TyperCommand(_Flags, typer.core.TyperCommand):
    """Every command's class: flags shown without a type."""


app = typer.Typer(
    name="ce-inspect",
    help="See, token by token, the cross-entropy loss a causal LM gives an answer, exactly as training computes it.",
    cls=_Group,
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"ce-inspect {ce_inspect_version()}\n")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Per-token cross-entropy of a causal LM, as a training step computes it."""


@shared_options
@report_options
def run(
    common: Common,
    reports: Reports,
    prompt: PromptOpt = None,
    answer: AnswerOpt = None,
    prompt_file: PromptFileOpt = None,
    answer_file: AnswerFileOpt = None,
    messages: MessagesOpt = None,
    last_turn: LastTurnOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.", rich_help_panel=OUTPUT)
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the JSON document to FILE (a rerun replaces it; a file ce-inspect did not write "
            "needs --force).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Let --output replace a file ce-inspect did not write.", rich_help_panel=OUTPUT),
    ] = False,
    entropy: EntropyOpt = False,
    fail_above_loss: GateOpt = None,
) -> None:
    """Score ANSWER given PROMPT (or the assistant turns of a conversation): per-token target, probability,
    loss and rank, with mean and sum."""
    if output is not None:
        inputs = [("--prompt-file", prompt_file), ("--answer-file", answer_file), ("--messages", messages)]
        check_output(output, inputs=inputs, label="--output", force=force)
    example = read_example(common, prompt, answer, prompt_file, answer_file, messages, last_turn)
    reports.check(
        inputs=[("--prompt-file", prompt_file), ("--answer-file", answer_file), ("--messages", messages)],
        outputs=[("--output", output)],
        stdout_busy="--json" if json_out else None,
        force=force,
    )
    options = common.score_options(entropy=entropy)
    setup_logging(quiet=json_out)

    lm = common.load()
    if example.conversation is not None:
        result = score_messages(lm, example.conversation, layout=example.layout, options=options, last_turn=last_turn)
    else:
        result = score(lm, example.prompt, example.answer, layout=example.layout, options=options)
    if (json_out or reports.markdown_on_stdout()) and not common.quiet:
        for note in result.notes:  # the rendered view prints them; JSON or Markdown keeps stdout for itself
            print(f"note: {note}", file=sys.stderr)

    documents = [("--output", output, result.to_json() + "\n")] if output is not None else []

    if reports.requested():
        doc = result.to_dict()
        reports.write(
            html=lambda: run_html(doc, command_line()),
            markdown=lambda: run_markdown(doc, command_line()),
            terminal=lambda console: render_result(result, console),
            kind="run",
            also=documents,  # --output with the reports, all or nothing
        )
    else:
        write_documents(documents)
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
    elif not reports.markdown_on_stdout():
        render_result(result)
    gate("mean loss", result.summary.mean, fail_above_loss, "--fail-above-loss")


# --- the registry: every command, in the order `ce-inspect --help` lists them ------------------------------


@dataclass(frozen=True)
class Command:
    """A command: ``"module:function"`` under ``ce_inspect.cli``, and example command lines for its --help."""

    target: str
    examples: tuple[str, ...] = ()

    def load(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)

    def epilog(self) -> str | None:
        if not self.examples:
            return None
        return "Examples:\n" + "\n".join(f"  $ {line}" for line in self.examples)


# Adding a command is one entry here; its module defines the function (decorated with @shared_options
# when it loads a model) and never imports this module. tests/test_cli_app.py runs every example.
COMMANDS: tuple[Command, ...] = (
    Command(
        "app:run",
        examples=(
            'ce-inspect run -p "Where is the capital of China?" -a " The capital is Beijing."',
            "ce-inspect run --prompt-file samples/capital/prompt.txt --answer-file samples/capital/answer.txt "
            "--top-k 3 --verify",
            "ce-inspect run --messages samples/chat.json --json",
            'ce-inspect run -p "Q: 2+2=" -a " 4" --chat --system "Be brief."',
        ),
    ),
    Command(
        "batch:batch",
        examples=(
            "ce-inspect batch samples/pairs.jsonl -o scores.jsonl --summary-json summary.json",
            "ce-inspect batch samples/chat.jsonl --no-sequence --worst 5",
            "ce-inspect batch samples/broken.jsonl --skip-invalid -o scores.jsonl",
        ),
    ),
    Command(
        "diff:diff",
        examples=(
            'ce-inspect diff --dtype-b bfloat16 -p "Where is the capital of China?" -a " Beijing."',
            "ce-inspect diff samples/pairs.jsonl --model-b ./finetuned -o diff.jsonl",
            "ce-inspect diff --model-b ./finetuned --messages samples/chat.json --fail-above-kl 0.05",
        ),
    ),
    Command(
        "choices:choices",
        examples=(
            "ce-inspect choices samples/choices.jsonl -o choices.jsonl --summary-json choices-summary.json",
            "ce-inspect choices samples/choices.jsonl --tokenization separate --fail-below-acc 0.5",
            "ce-inspect choices samples/choices.jsonl --chat --show 3",
        ),
    ),
    Command(
        "audit:audit",
        examples=(
            "ce-inspect audit samples/audit/clean.jsonl --no-model",
            "ce-inspect audit samples/audit/eot-not-trained.jsonl --no-model --json",
            "ce-inspect audit samples/audit/loss-outlier.jsonl --fail-on loss-outlier",
        ),
    ),
    Command(
        "prefs:prefs",
        examples=(
            "ce-inspect prefs samples/prefs/pairs.jsonl -o prefs.jsonl --summary-json prefs-summary.json",
            "ce-inspect prefs samples/prefs/conversational.jsonl --loss-type ipo --beta 0.5 --max-length 64",
            "ce-inspect prefs samples/prefs/planted.jsonl --max-length 24 --fail-on identical,no-trained-tokens",
        ),
    ),
)

for _command in COMMANDS:
    app.command(epilog=_command.epilog(), cls=_TyperCommand)(_command.load())
