"""Progress and warnings on stderr, for every command."""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one at setup (test captures replace it between runs)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Quiet:
    """`--quiet`: this command prints no progress and no notes on stderr (warnings and errors still)."""

    on = False


def set_quiet(on: bool) -> None:
    """Set by every command from its `--quiet` flag, before the command runs."""
    _Quiet.on = on


def is_quiet() -> bool:
    return _Quiet.on


def setup_logging(quiet: bool) -> None:
    """Progress and warnings go to stderr; --json (and --quiet) keep only warnings."""
    quiet = quiet or _Quiet.on
    logger = logging.getLogger("ce_inspect")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
