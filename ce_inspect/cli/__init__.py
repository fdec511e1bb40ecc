"""The `ce-inspect` command line: a thin Typer layer over the library."""

from __future__ import annotations

import sys

from .app import app


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: every known error is one line on stderr and a non-zero exit."""
    from ..errors import CeInspectError

    try:
        result = app(args=argv, prog_name="ce-inspect", standalone_mode=False)
    except CeInspectError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors from Typer's (vendored) click: print them on one line instead of a usage box.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"Error: {exc.format_message()} (see `ce-inspect --help`)", file=sys.stderr)
            return int(exc.exit_code)
        raise
    return result if isinstance(result, int) else 0
