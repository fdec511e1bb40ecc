"""``python -m ce_inspect`` runs the command line."""

from .cli import entry

entry()
