"""The command line as one rank of a ``torchrun`` (or ``accelerate launch``) run.

Every rank runs the same command. Rank 0 speaks for the run: its stderr shows the run's progress and the
one error line, its stdout the summary. The other ranks stay quiet: what they would print on stderr is
kept, and their error line (or a bug's traceback) travels to rank 0 through the run's store. Rank 0
exits with the run's status (the failing rank's, if one failed), decided once every rank has reported;
the others exit 0 once rank 0 has taken over their outcome, so that torchrun names rank 0's status.
"""

from __future__ import annotations

import io
import sys
import traceback
from typing import TYPE_CHECKING

from ce_inspect.distributed import Aborted, start, stop

if TYPE_CHECKING:
    from collections.abc import Callable

    from ce_inspect.distributed import Launch

#: Commands that split their data set over the ranks (``diff`` with --input, ``audit``'s forward pass); any
#: other refuses to run under torchrun.
SHARDED_COMMANDS = ("batch", "diff", "audit", "prefs", "choices")
INTERRUPTED = 130


def main_rank(argv: list[str] | None, launch: Launch, main: Callable[[list[str]], int]) -> int:
    """Run the command line (``main``, the one of ``ce_inspect.cli``) as one rank of ``launch``."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    if command is not None and command not in SHARDED_COMMANDS:
        if launch.rank != 0:
            # Rank 0 says why and exits 2, the run's status. Were this rank to exit 2 first, torchrun would
            # stop rank 0 with SIGTERM before it had printed a word (on a loaded machine, ranks start unevenly).
            return 0
        print(
            f"Error: `ce-inspect {command}` runs in one process; under torchrun (WORLD_SIZE "
            f"{launch.world_size}) only {', '.join(SHARDED_COMMANDS[:-1])} and {SHARDED_COMMANDS[-1]} split their "
            "work over the ranks",
            file=sys.stderr,
        )
        return 2

    session = start(launch)
    quiet = launch.rank != 0
    saved, captured = sys.stderr, io.StringIO()
    if quiet:
        sys.stderr = captured
    try:
        try:
            code = main(args)
        except BaseException as exc:  # noqa: BLE001 - a bug, or a stop because another rank failed
            aborted = isinstance(exc, Aborted)
            if quiet:
                session.post(1, None if aborted else traceback.format_exc().rstrip())
            else:
                if not aborted:
                    traceback.print_exc()
                session.post(1)
            code, printed = 1, not aborted
        else:
            printed = code != 0  # main printed this rank's error line
            # A rank that succeeded posted its figures from the command (or had none to post: --help).
            session.post(code, _error_line(captured.getvalue()) if quiet and code else None)
        if code == INTERRUPTED:
            return code  # a signal (torchrun stops every rank when one dies): leave now, part files are whole
        if launch.rank == 0:
            session.gather()  # every rank is done before rank 0 says how the run ended
            failure = session.failure()
            if code != 0 and failure is not None and not printed:
                print(f"Error: {failure}", file=sys.stderr)
                code = failure.code
        return session.finish(code)
    finally:
        sys.stderr = saved
        stop()


def _error_line(stderr: str) -> str | None:
    """The ``Error: ...`` line a quiet rank printed, without its prefix; None when it printed none (it
    stopped because another rank failed)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("Error: "):
            return line[len("Error: ") :]
    return None
