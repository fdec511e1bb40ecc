"""What a notebook shows of a result: ``_repr_html_`` (the HTML report's strip and summary, as a fragment that
styles only itself) and ``to_pandas()`` (a DataFrame), for every result the library returns.

Two mixins: ``TokenFrame`` for one example's result (``ScoreResult``, ``DiffResult``: a row per scored token)
and ``LineFrame`` for a data-set summary (a row per output line, read back from its ``output`` file). Both
take what they show from ``to_dict()``, so a notebook sees exactly the figures of the JSON document.

The HTML comes from the reports package, a layer above every result type: it registers one renderer per
view (``register_html``) when ``ce_inspect`` is imported; without one, the fragment is the document's
scalar figures in a table. pandas is imported only by ``to_pandas`` (it comes with the ``trl`` extra's
``datasets``; else ``pip install pandas``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ce_inspect.errors import InputError

#: view name -> renderer of the document as an HTML fragment (filled in by ``ce_inspect.reports.notebook``).
_HTML: dict[str, Callable[[dict[str, Any]], str]] = {}
#: The keys of an output line that a row of ``LineFrame.to_pandas`` leaves out: the per-token arrays and the
#: set-up (each line's ``tokens`` etc. stay in the file; ``ScoreResult.to_pandas`` gives them as rows).
_BULKY = frozenset({"tokens", "sequence", "layout", "settings", "turns", "choices", "chosen", "rejected"})


def register_html(view: str, render: Callable[[dict[str, Any]], str]) -> None:
    _HTML[view] = render


def html_fragment(view: str, doc: dict[str, Any]) -> str:
    render = _HTML.get(view)
    return render(doc) if render is not None else scalar_table(doc)


def scalar_table(doc: Mapping[str, Any]) -> str:
    """The document's top-level scalar figures (and those of its ``summary``), as a small HTML table."""
    rows = [(k, v) for k, v in flatten(doc).items() if not isinstance(v, (list, dict))]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_shown(v))}</td></tr>" for k, v in rows)
    return f'<div class="ce-nb"><table>{cells}</table></div>'


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def flatten(doc: Mapping[str, Any], prefix: str = "", skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Nested objects as one level of keys joined with ``.`` (``summary.mean``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise InputError("to_pandas() needs pandas: pip install pandas") from exc
    return pandas


def data_frame(rows: list[dict[str, Any]], columns: list[str] | None = None) -> Any:
    return _pandas().DataFrame(rows, columns=columns)


def read_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a data-set command's output file, in order (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            if raw.strip():
                try:
                    yield json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {number}: not a JSON line ({exc.msg})") from None


def lines_to_pandas(path: str | Path) -> Any:
    """A data-set command's output lines as a DataFrame: a row per line, its figures as flat columns
    (``summary.mean``, ``summary.bits_per_byte``, ...); the per-token arrays are left out. A ``.parquet``
    output (``batch -o x.parquet``) is read as the table it is."""
    if Path(path).suffix == ".parquet":
        return _pandas().read_parquet(path)
    return data_frame([flatten(line, skip=_BULKY) for line in read_lines(path)])


class TokenFrame:
    """``_repr_html_`` and ``to_pandas`` for one example's result: ``view`` names its HTML renderer."""

    view: ClassVar[str]

    def _repr_html_(self) -> str:
        return html_fragment(self.view, self.to_dict())  # type: ignore[attr-defined]

    def to_pandas(self) -> Any:
        """A row per scored token, in order: the JSON document's token figures, nested ones flattened
        (``ref.loss``, ``cand.loss`` for a diff); ``top_k`` stays a list of dicts when it was asked for."""
        return data_frame([flatten(t) for t in self.to_dict()["tokens"]])  # type: ignore[attr-defined]


class LineFrame:
    """``_repr_html_`` and ``to_pandas`` for a data-set summary (its ``output`` holds the lines)."""

    view: ClassVar[str]

    def _repr_html_(self) -> str:
        return html_fragment(self.view, self.to_dict())  # type: ignore[attr-defined]

    def to_pandas(self) -> Any:
        """A row per output line (``lines_to_pandas`` of ``output``); the lines must have gone to a file."""
        output = getattr(self, "output", None)
        if output is None or not Path(output).is_file():
            raise InputError(
                f"to_pandas(): the lines were not written to a file (output {output!r}); "
                "run with output='lines.jsonl' to read them back"
            )
        return lines_to_pandas(output)


__all__ = [
    "LineFrame",
    "TokenFrame",
    "data_frame",
    "flatten",
    "html_fragment",
    "lines_to_pandas",
    "read_lines",
    "register_html",
    "scalar_table",
]
