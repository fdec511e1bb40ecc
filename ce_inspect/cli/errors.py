"""How the command line reports errors: one table from exception type to a one-line message and exit code.

Known errors become ``Error: <message>`` on stderr and an exit code (1 bad input, 2 bad usage, 130
interrupted); any other exception is a bug and keeps its traceback. ``CE_INSPECT_DEBUG=1`` prints the
traceback (with its cause) of known errors too, above the one line.

Library messages speak of the library's parameters in backquotes (`` `system` needs `chat` ``); here
each known parameter becomes the flag that sets it (``--system needs --chat``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import typer

from ce_inspect.distributed import RankFailedError
from ce_inspect.errors import CeInspectError, UsageError

# Library parameter -> the flag that sets it. Only these names are replaced, so backquoted user text
# in a message stays as it is; add a parameter here when a library message names it.
FLAGS: dict[str, str] = {
    "model": "--model",
    "model_b": "--model-b",
    "dtype_b": "--dtype-b",
    "revision_b": "--revision-b",
    "device_b": "--device-b",
    "trust_remote_code_b": "--trust-remote-code-b",
    "revision": "--revision",
    "device": "--device",
    "dtype": "--dtype",
    "device_map": "--device-map",
    "trust_remote_code": "--trust-remote-code",
    "sep": "--sep",
    "add_eos": "--no-eos",
    "ignore_index": "--ignore-index",
    "mask_prompt": "--no-mask-prompt",
    "truncate_prompt": "--truncate-prompt",
    "chat": "--chat",
    "system": "--system",
    "tokenization": "--tokenization",
    "mutual_info": "--mutual-info",
    "special_tokens": "--special-tokens",
    "messages": "--messages",
    "label_smoothing": "--label-smoothing",
    "reduction": "--reduction",
    "top_k": "--top-k",
    "verify": "--verify",
    "chunk_tokens": "--chunk-tokens",
    "last_turn": "--last-turn",
    "batch_size": "--batch-size",
    "max_tokens": "--max-tokens",
    "padding_side": "--padding-side",
    "sort_window": "--sort-window",
    "worst": "--worst",
    "max_padding": "max_padding (library only)",
    "format": "--format",
    "split": "--split",
    "limit": "--limit",
    "stride": "--stride",
    "rolling": "--rolling",
    "rolling_window": "--rolling-window",
    "bootstrap": "--bootstrap",
    "output": "--output",
    "force": "--force",
    "resume": "--resume",
    "keep_below": "--keep-below",
    "keep_above": "--keep-above",
    "keep_by": "--keep-by",
    "kept": "--kept",
    "dropped": "--dropped",
    "summary_json": "--summary-json",
    "sequence": "--no-sequence",
    "max_length": "--max-length",
    "fail_on": "--fail-on",
    "ref": "--ref-model",
    "loss_type": "--loss-type",
    "beta": "--beta",
    "gamma": "--simpo-gamma",
    "truncation_mode": "--truncation-mode",
    "export_ref": "--export-ref",
}

# `load`'s parameters -> the candidate's (`diff`'s second model): what a message about loading it names.
CANDIDATE: dict[str, str] = {
    "model": "model_b",
    "revision": "revision_b",
    "device": "device_b",
    "dtype": "dtype_b",
    "trust_remote_code": "trust_remote_code_b",
}

_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")
DEBUG_ENV = "CE_INSPECT_DEBUG"


def cli_message(message: str) -> str:
    """``message`` with every backquoted library parameter shown as its command-line flag."""
    return _PARAM.sub(lambda m: FLAGS.get(m[1], m[0]), message)


def as_candidate(message: str) -> str:
    """A library message about loading the candidate model, naming the candidate's parameters (shown as
    --trust-remote-code-b, --dtype-b, ...) where ``load`` named its own (`trust_remote_code`, `dtype`, ...)."""
    return _PARAM.sub(lambda m: f"`{CANDIDATE[m[1]]}`" if m[1] in CANDIDATE else m[0], message)


@dataclass(frozen=True)
class Reported:
    """What the command line prints for an error (after ``Error: ``; nothing when empty) and the exit code."""

    message: str
    exit_code: int


def _library(exc: BaseException) -> Reported:
    return Reported(cli_message(str(exc)), 1)


# The base of Typer's usage errors (bad option values, missing arguments, conflicts raised as
# BadParameter): click's ClickException, which recent Typer versions vendor. Found through the public
# typer.BadParameter, so that neither click nor Typer's private modules are imported.
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage(exc: BaseException) -> Reported:
    message = exc.format_message()  # type: ignore[attr-defined]
    if not message.strip():  # a bare `ce-inspect`: the help is already printed, and there is nothing to add
        return Reported("", int(exc.exit_code))  # type: ignore[attr-defined]
    return Reported(f"{cli_message(message)} (see `ce-inspect --help`)", int(exc.exit_code))  # type: ignore[attr-defined]


def _library_usage(exc: BaseException) -> Reported:
    # The library's usage errors read as Typer's: "Invalid value: ..." and a pointer to --help, exit 2.
    return Reported(f"Invalid value: {cli_message(str(exc))} (see `ce-inspect --help`)", 2)


def _other_rank(exc: BaseException) -> Reported:
    # torchrun: another rank's error line, already shown with flags, and that rank's exit code.
    return Reported(str(exc), getattr(exc, "code", 1))


def _interrupted(exc: BaseException) -> Reported:
    return Reported("interrupted", 130)


def _aborted(exc: BaseException) -> Reported:
    return Reported("aborted (end of input)", 1)


#: Exception type -> formatter; the first entry the exception is an instance of wins.
ERRORS: list[tuple[type[BaseException], Callable[[BaseException], Reported]]] = [
    (RankFailedError, _other_rank),
    (UsageError, _library_usage),
    (CeInspectError, _library),
    (ClickException, _usage),
    (typer.Abort, _aborted),
    (KeyboardInterrupt, _interrupted),
]


def report(exc: BaseException) -> Reported | None:
    """The one-line report of a known error; None for anything else (a bug: let its traceback show)."""
    for kind, formatter in ERRORS:
        if isinstance(exc, kind):
            return formatter(exc)
    return None


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
