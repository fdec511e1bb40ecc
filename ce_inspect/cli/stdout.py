"""stdout as the command line writes it: every write complete, a reader that goes away a quiet exit 141."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def blocking_stdout() -> Iterator[None]:
    """stdout's descriptor in blocking mode while a command runs, as it was found afterwards.

    A reader that set its pipe non-blocking (O_NONBLOCK belongs to the open pipe, which the child shares)
    would make a write into a full pipe fail with EAGAIN: a traceback, or, unbuffered (``PYTHONUNBUFFERED``),
    a silently shortened document. In blocking mode every write waits for the reader and completes. The
    flag is restored after a last flush, so that the caller finds its pipe as it left it.
    """
    try:
        fd = sys.stdout.fileno()
        nonblocking = not os.get_blocking(fd)
    except (AttributeError, OSError, ValueError):  # no stdout, or a stand-in without a descriptor (tests)
        nonblocking = False
    if not nonblocking:
        yield
        return
    os.set_blocking(fd, True)
    try:
        yield
    finally:
        try:
            sys.stdout.flush()  # what is still buffered goes out while writes wait
        except (OSError, ValueError):
            pass  # kept in the buffer: the final flush (``entry``) fails again and sets the exit status
        try:
            os.set_blocking(fd, False)
        except OSError:
            pass


#: Exit status when stdout's reader goes away before everything was written: 128 + SIGPIPE, the shell's
#: status for a tool killed by SIGPIPE.
BROKEN_PIPE = 141


def silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's own final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def broken_pipe_raises() -> None:
    """Let a broken pipe under Rich raise BrokenPipeError like any other write, instead of Rich's own
    exit with status 1, so that every command ends with the same status (141) whatever was printing."""
    from rich.console import Console

    def raise_it(self: Console) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    Console.on_broken_pipe = raise_it  # type: ignore[method-assign]
