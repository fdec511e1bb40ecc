"""Errors meant for users: each message names the input at fault and, where there is one, the fix.

The command line prints ``Error: <message>`` on one line and exits 1 for any of these; any other
exception is a bug and keeps its traceback.

Messages speak of the library's parameters, written in backquotes (`` `system` needs `chat` ``); the
command line shows the same message with each known parameter replaced by its flag (``--system needs
--chat``), through one table in ``cli/errors.py``. One message, two audiences, no flag names in the core.
"""

from __future__ import annotations


class CeInspectError(Exception):
    """Base class of every error whose message is written for the user."""


class ModelNotFoundError(CeInspectError):
    """The model path does not exist, or the Hub id is neither cached nor reachable."""


class ModelLoadError(CeInspectError):
    """The model exists but could not be loaded (not a causal LM, unreadable, corrupt, ...)."""


class ModelChangedError(CeInspectError):
    """A file the loaded model reads its weights from changed (rewritten, replaced or removed) while it ran."""


class DefaultModelMissingError(CeInspectError):
    """No --model was given and the bundled default model package is not installed."""


class DeviceError(CeInspectError):
    """The requested device or dtype is not available here."""


class InputError(CeInspectError):
    """The prompt, answer or options cannot form a valid training example."""


class UsageError(InputError):
    """Parameters that do not go together or a value an option cannot take (``resume`` without ``output``, a
    ``stride`` as long as the context): the caller's mistake, not the data's. The command line reports it as
    a usage error (exit 2); a library caller catching ``InputError`` catches it too."""


#: The advice a text longer than the context gets where windows can score it (`batch`).
WINDOWS_REMEDY = "score it in windows with `stride`"


class SequenceTooLongError(InputError):
    """The example is longer than the model's context window.

    ``remedy``, the advice the message ends with, is kept apart from ``problem``, so that a command that
    cannot follow it words its own (``data.encode_whole``: ``diff`` scores no windows, so it names no
    `stride`).
    """

    def __init__(self, problem: str, remedy: str | None = None) -> None:
        super().__init__(f"{problem}; {remedy}" if remedy else problem)
        self.problem = problem
        self.remedy = remedy


class NonFiniteError(CeInspectError):
    """A figure the model gives a scored token is not a finite number (NaN or inf logits, probability 0).

    It keeps what ``scoring.nonfinite_error`` built it from, so that a caller that scored a part of an
    example (a window) or a batch of them can say where the token is in what the user gave.
    """

    def __init__(self, message: str, *, example: object, scored: int, why: str, target: int) -> None:
        super().__init__(message)
        self.example = example  # the encoded example at fault
        self.scored = scored  # which of its scored tokens, from 0
        self.why = why
        self.target = target


class CacheError(CeInspectError):
    """The conversion cache could not be written."""


class InvalidRecordError(InputError):
    """A line of a batch input file cannot be scored (bad JSON, missing field, empty answer, too long)."""


class ResumeError(InputError):
    """``--resume`` found an output file that does not continue this input with these settings."""


def read_error(label: str, exc: OSError | UnicodeDecodeError, kind: str = "file") -> InputError:
    """The one-line error for an input that cannot be opened or read; ``label`` names it as the user gave it."""
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{label}: no such file")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{label}: is a folder, not a {kind}")
    if isinstance(exc, UnicodeDecodeError):
        return InputError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    return InputError(f"{label}: cannot read it ({exc.strerror})")
