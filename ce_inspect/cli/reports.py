"""`--html`, `--svg` and `--markdown`: the report options of every command, declared once.

A command takes them with ``@report_options`` (its function then receives ``reports: Reports``), calls
``reports.check(...)`` before the model loads, and ``reports.write(...)`` with its JSON documents once it
has them. HTML and Markdown come from ``ce_inspect.reports.report`` (the JSON documents, rendered by templates);
the SVG is the command's terminal output, recorded by Rich.
"""

from __future__ import annotations

import inspect
import io
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ce_inspect.files import check_output, is_stdout, write_outputs
from ce_inspect.reports import REPORT_MARK, REPORT_MARK_TEXT

REPORTS = "Reports"
#: Width of the recorded terminal in the SVG: wide enough for a top-k table, the same on every machine.
SVG_WIDTH = 110

HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help="Also write a self-contained HTML report (no network needed) to FILE.",
        rich_help_panel=REPORTS,
    ),
]
SvgOpt = Annotated[
    Path | None,
    typer.Option(
        "--svg",
        metavar="FILE",
        help="Also write the terminal output as an SVG picture to FILE.",
        rich_help_panel=REPORTS,
    ),
]
MarkdownOpt = Annotated[
    Path | None,
    typer.Option(
        "--markdown",
        metavar="FILE",
        help="Also write a GitHub-flavoured Markdown report (tables for a pull request comment) to FILE; "
        "'-' prints it on stdout instead of the terminal output.",
        rich_help_panel=REPORTS,
    ),
]

_argv: list[str] | None = None
_FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}\s*")


def remember_argv(argv: Sequence[str]) -> None:
    """Keep the command line as given, for the reports to show (``main`` calls this)."""
    global _argv
    _argv = list(argv)


def command_line() -> str:
    """The command that is running, shell-quoted so that it can be pasted back into a shell."""
    args = _argv if _argv is not None else sys.argv[1:]
    return shlex.join(["ce-inspect", *args])


@dataclass(frozen=True)
class Reports:
    html: Path | None = None
    svg: Path | None = None
    markdown: Path | None = None

    def requested(self) -> bool:
        return any(p is not None for p in (self.html, self.svg, self.markdown))

    def markdown_on_stdout(self) -> bool:
        return self.markdown is not None and (str(self.markdown) == "-" or is_stdout(self.markdown))

    def _files(self) -> list[tuple[str, Path]]:
        named = (("--html", self.html), ("--svg", self.svg), ("--markdown", self.markdown))
        return [(label, p) for label, p in named if p is not None and str(p) != "-"]

    def check(
        self,
        *,
        inputs: Sequence[tuple[str, Any]] = (),
        outputs: Sequence[tuple[str, Path | None]] = (),
        stdout_busy: str | None = None,
        force: bool = False,
    ) -> None:
        """Refuse report paths that cannot be written, before the model loads.

        ``stdout_busy`` names what else the command prints on stdout (``--json``): Markdown cannot share it.
        ``outputs`` are the command's other files; a report may not be one of them, nor another report.
        """
        if stdout_busy is not None:
            on_stdout = [
                label
                for label, p in (("--markdown", self.markdown), ("--html", self.html), ("--svg", self.svg))
                if p is not None and (str(p) == "-" or is_stdout(p))
            ]
            if on_stdout:
                raise typer.BadParameter(
                    f"{on_stdout[0]} and {stdout_busy} both write stdout; give {on_stdout[0]} a file",
                    param_hint=on_stdout[0],
                )
        seen: dict[str, str] = {}
        for label, path in [*((label, p) for label, p in outputs if p is not None), *self._files()]:
            key = str(Path(path).resolve()) if not str(path).startswith("/dev/") else str(path)
            if key in seen and not str(path).startswith("/dev/"):
                raise typer.BadParameter(
                    f"{label} and {seen[key]} name the same file {path}; give each its own", param_hint=label
                )
            seen[key] = label
        for label, path in self._files():
            check_output(
                path, inputs=inputs, label=label, force=force, marks=(REPORT_MARK,), mark_text=REPORT_MARK_TEXT
            )

    def write(
        self,
        *,
        html: Callable[[], str],
        markdown: Callable[[], str],
        terminal: Callable[[Console], None],
        kind: str,
        also: Sequence[tuple[str, Path, str]] = (),
    ) -> None:
        """Render every requested report, then write them with ``also``, the command's other whole
        documents (``(label, path, text)``: ``--output``, ``--summary-json``), all or nothing
        (``files.write_outputs``): a failed render or write leaves every file as it was. Markdown on
        stdout (``-``) is printed once the files are written."""
        texts: list[tuple[str, Path, str]] = list(also)
        if self.html is not None:
            texts.append(("--html", self.html, html()))
        if self.svg is not None:
            texts.append(("--svg", self.svg, record_svg(terminal, kind)))
        if self.markdown is not None:
            texts.append(("--markdown", self.markdown, markdown()))
        write_outputs([(path, text, label) for label, path, text in texts if str(path) != "-"])
        for _, path, text in texts:
            if str(path) == "-":
                sys.stdout.write(text)
                sys.stdout.flush()


def record_svg(render: Callable[[Console], None], kind: str) -> str:
    """What ``render`` prints on a terminal, as an SVG picture (fonts local, so it needs no network)."""
    console = Console(
        record=True,
        file=io.StringIO(),
        width=SVG_WIDTH,
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
        highlight=False,
    )
    render(console)
    svg = console.export_svg(title=f"ce-inspect {kind}")
    # Rich links its font from a CDN; the SVG falls back to the reader's monospace font instead.
    svg = _FONT_FACE.sub("", svg).replace(
        "font-family: Fira Code, monospace", 'font-family: "Fira Code", "DejaVu Sans Mono", Menlo, monospace'
    )
    return f"<!-- ce-inspect report: {kind} -->\n{svg}"


_PARAMS = [("html", HtmlOpt), ("svg", SvgOpt), ("markdown", MarkdownOpt)]


def report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command ``--html``, ``--svg`` and ``--markdown``; it receives them as ``reports: Reports``.

    Stack it under ``@shared_options`` (``@shared_options`` then ``@report_options`` above the function).
    """
    import typing

    own = inspect.signature(func, eval_str=True)
    hints = typing.get_type_hints(func, include_extras=True)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in own.parameters.values() if p.name != "reports"
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=None) for name, a in _PARAMS
    ]

    def command(**kwargs: Any) -> Any:
        reports = Reports(**{name: kwargs.pop(name) for name, _ in _PARAMS})
        return func(reports=reports, **kwargs)

    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
