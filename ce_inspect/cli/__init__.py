"""The `ce-inspect` command line: a thin Typer layer over the library."""

from __future__ import annotations

import os
import sys

from ce_inspect.cli.app import app
from ce_inspect.cli.errors import cli_message, debug, report
from ce_inspect.cli.ranks import main_rank
from ce_inspect.cli.reports import remember_argv
from ce_inspect.cli.stdout import BROKEN_PIPE, blocking_stdout, silence_stdout
from ce_inspect.distributed import current_session, detect_launch
from ce_inspect.errors import CeInspectError


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: every known error is one line on stderr and a non-zero exit (see cli/errors.py)."""
    remember_argv(sys.argv[1:] if argv is None else argv)
    with blocking_stdout():  # every write to stdout complete, even where the reader made the pipe non-blocking
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:  # torchrun / accelerate launch: this process is one rank of several
        launch = detect_launch()
    except CeInspectError as exc:
        print(f"Error: {cli_message(str(exc))}", file=sys.stderr)
        return 2
    if launch is not None and current_session() is None:
        return main_rank(argv, launch, main)
    try:
        result = app(args=argv, prog_name="ce-inspect", standalone_mode=False)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly with the status of a process killed by
        # SIGPIPE, as Unix tools do, whichever command it was.
        silence_stdout()
        return BROKEN_PIPE
    except (Exception, KeyboardInterrupt) as exc:
        reported = report(exc)
        if reported is None:
            raise
        if debug():
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        if reported.message:
            print(f"Error: {reported.message}", file=sys.stderr)
        return reported.exit_code
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Process entry point (the console script and ``python -m ce_inspect``): run ``main`` and exit.

    Once torch and transformers are loaded, the interpreter's teardown (module and tensor destructors,
    final garbage collections) takes 1-2 s on a 2-core machine and does nothing a finished command needs.
    Every command has written and closed its files by the time ``main`` returns, so flush the standard
    streams and leave at once. Tests and library users call ``main`` and never get here.
    """
    code = main()
    if "torch" not in sys.modules:
        sys.exit(code)
    import logging

    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the last buffered output met a reader that went away (`| head`)
        code = code or BROKEN_PIPE
    except OSError:  # stdout cannot be flushed otherwise: what a normal exit reports (status 120)
        code = code or 120
    os._exit(code)
