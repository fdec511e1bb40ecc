"""``python -m ce_inspect`` runs the command line."""

from ce_inspect.cli import entry

entry()
