"""The one output helper of the data-set commands (``batch``, ``diff --input``, ``audit``): what each does around
its one library call.

Before anything loads, ``check`` refuses the files the library does not write itself (``--summary-json``, the
reports); the library's runner checks ``--output``. During the call, ``notes`` and ``progress`` are the
runner's callbacks drawn on stderr, ``tee`` keeps what the reports need of the lines, and ``interrupts``
turns the runner's ``Interrupted`` into its message and exit 130. After it, ``write`` writes
``--summary-json`` and the reports all or nothing, then the JSON document (``--json``) or the human summary,
on stdout unless stdout carries the lines or the Markdown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from ce_inspect.cli.errors import cli_message
from ce_inspect.cli.logs import is_quiet
from ce_inspect.cli.render_batch import batch_progress
from ce_inspect.cli.reports import Reports, command_line
from ce_inspect.contract import dumps
from ce_inspect.dataset import Interrupted
from ce_inspect.errors import InputError
from ce_inspect.files import check_output, is_stdout, write_outputs, writes_through
from ce_inspect.reports import BatchLines

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ce_inspect.dataset import Scan

#: The library's name of the summary file, in the messages of the checks and writes (shown as --summary-json).
SUMMARY_JSON = "`summary_json`"


@dataclass
class DatasetOutputs:
    """A data-set command's outputs: ``data`` as the user named it (``data_label`` in messages), the
    runner's ``output`` (None: the lines go to stdout when ``streams`` says the command prints them, else
    nowhere), ``summary_json`` and the ``reports``. ``worst`` is how many examples the reports list when
    they show the lines (``lines=True``: batch's, diff --input's and prefs's reports)."""

    data: Path
    output: Path | None
    reports: Reports
    summary_json: Path | None = None
    force: bool = False
    data_label: str = "the input"
    streams: bool | None = None  # None: the lines go to stdout unless it is a terminal
    lines: bool = False
    worst: int = 0
    err: Console = field(default_factory=lambda: Console(stderr=True))
    stdout: Any = field(default_factory=lambda: sys.stdout)  # taken now: it may carry only the JSON lines
    kept: Any = None  # what the reports keep of the lines: a BatchLines, or what ``keep`` makes
    held_back: bool = False  # the lines are not printed: stdout is a terminal and no --output was given
    #: What the reports keep of the lines (``add``, ``add_file``) when not batch's ``BatchLines(worst)``.
    keep: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if self.streams is None:
            # On a terminal the lines would scroll the summary away: it gets the summary alone (say so).
            self.streams = not _is_terminal(self.stdout)
            self.held_back = not self.streams and self.output is None
        if self.lines and (self.reports.html is not None or self.reports.markdown is not None):
            self.kept = self.keep() if self.keep is not None else BatchLines(self.worst)

    # --- before anything loads ---------------------------------------------------------------------------

    def check(self, *, json_out: bool = False) -> None:
        """``--summary-json`` and the reports: writable, not an input, not ``--output``, not each other."""
        output, summary_json = self.output, self.summary_json
        if summary_json is not None:
            if output is not None and os.path.realpath(summary_json) == os.path.realpath(output):
                raise InputError(f"{SUMMARY_JSON} {summary_json}: is --output too; give the summary its own file")
            inputs = [("the input file", self.data), ("`output`", output)]
            check_output(summary_json, inputs=inputs, label=SUMMARY_JSON, force=self.force)
        busy = "--json" if json_out else ("the JSON lines (no --output)" if self.lines_on_stdout() else None)
        self.reports.check(
            inputs=[(self.data_label, self.data)],
            outputs=[("--output", output), ("--summary-json", summary_json)],
            stdout_busy=busy,
            force=self.force,
        )
        if self.held_back:
            self.notes("stdout is a terminal: the JSON lines are not printed; give -o FILE, or pipe stdout")

    def lines_on_stdout(self) -> bool:
        """Whether stdout carries the output lines (no ``--output`` on a command that prints them, or
        ``-o /dev/stdout``)."""
        return (self.output is None and self.streams) or (self.output is not None and is_stdout(self.output))

    # --- the library call's callbacks --------------------------------------------------------------------

    def notes(self, message: str) -> None:
        """What the runner tells the user on the way (how the data is read, a torn line dropped), on stderr;
        with --quiet only its warnings (``warning: ...``), as the log keeps warnings."""
        if is_quiet() and not message.startswith("warning: "):
            return
        self.err.print(cli_message(message), markup=False, soft_wrap=True, highlight=False)

    def progress(self, scan: Scan) -> AbstractContextManager[Callable[[int, int], None]]:
        """The runner's progress, as a bar on stderr when it is a terminal (and no --quiet)."""
        if is_quiet():
            return nullcontext(lambda examples, tokens: None)
        return batch_progress(self.err, scan)

    @property
    def stream(self) -> Any:
        """Where the lines go without ``--output``: stdout for a command that prints them, else nowhere."""
        return self.stdout if self.streams else None

    @property
    def tee(self) -> Callable[[dict[str, Any]], None] | None:
        """What sees each line as it is written: the reports' lines, unless they are read back from the
        output file once the run is over (a regular file: it then holds the resumed lines too)."""
        if self.kept is None or self._read_back():
            return None
        return self.kept.add

    def _read_back(self) -> bool:
        return self.output is not None and not writes_through(self.output)

    @contextmanager
    def interrupts(self) -> Iterator[None]:
        """Ctrl-C or `kill` during the run: the runner's word on what the output keeps, then exit 130."""
        try:
            yield
        except Interrupted as exc:
            self.err.print(f"Interrupted: {exc.message}.", markup=False, soft_wrap=True)
            raise typer.Exit(130) from None

    # --- after the call ----------------------------------------------------------------------------------

    def write(
        self,
        document: Any,
        *,
        kind: str,
        html: Callable[[Any, BatchLines | None], str],
        markdown: Callable[[Any, BatchLines | None], str],
        terminal: Callable[[Console], None],
        json_out: bool = False,
    ) -> None:
        """``--summary-json`` and the reports, all or nothing; then ``document`` as JSON on stdout
        (``json_out``) or the human summary (``terminal``), on stderr when stdout carries the lines or Markdown."""
        doc = document.to_dict()
        texts = [(SUMMARY_JSON, self.summary_json, dumps(doc, indent=2) + "\n")] if self.summary_json else []
        lines = self._lines()
        if self.reports.requested():
            self.reports.write(
                html=lambda: html(doc, lines),
                markdown=lambda: markdown(doc, lines),
                terminal=terminal,
                kind=kind,
                also=texts,  # with the reports, all or nothing
            )
        else:
            write_outputs([(path, text, label) for label, path, text in texts])
        if json_out:
            self.stdout.write(dumps(doc, indent=2) + "\n")
            return
        busy = self.lines_on_stdout() or self.reports.markdown_on_stdout()
        terminal(self.err if busy else Console())

    def _lines(self) -> BatchLines | None:
        if self.kept is not None and self._read_back() and self.output is not None and self.output.exists():
            self.kept.add_file(self.output, self.output.stat().st_size)  # the resumed and the new lines
        return self.kept


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a stand-in without a descriptor, or a closed stream
        return False


__all__ = ["SUMMARY_JSON", "DatasetOutputs", "command_line"]
