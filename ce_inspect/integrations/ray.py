"""``ScoreBatch``: ``ce-inspect batch`` as a callable class for ``ray.data.Dataset.map_batches``.

One model per actor, loaded once in ``__init__``; each call scores one Ray batch through the one data-set
runner (``dataset.DatasetRun``: the record reader, the scan, token-budget batches, ``batch``'s lines), so
every figure and every ``ce_inspect`` string is what ``ce-inspect batch`` writes for the same record::

    import ray
    from ce_inspect.integrations.ray import ScoreBatch

    ds = ray.data.read_json("corpus.jsonl")
    scored = ds.map_batches(
        ScoreBatch,
        fn_constructor_kwargs={"model": "HuggingFaceTB/SmolLM2-135M", "skip_invalid": True},
        batch_size=64,
        compute=ray.data.ActorPoolStrategy(size=4),  # actors; on GPUs add num_gpus=1 and device="cuda"
    )

A batch is a pandas DataFrame, a pyarrow Table or a dict of columns (numpy arrays or lists), whichever
``batch_format`` hands over; the same kind comes back, with the input columns and ``mean``, ``sum``,
``count``, ``bits_per_byte``, ``ce_error`` (why a record could not be scored, under ``skip_invalid``; else
null), ``ce_inspect`` (the record's whole ``batch`` line, as a JSON string) and, with ``keep_below`` or
``keep_above``, ``keep`` (the rule of ``batch --keep-below``: ``ds.filter(lambda r: r["keep"])``).

Records are read as ``batch`` reads a JSONL line, with one difference: a column whose value is null (or a
pandas NaN) counts as absent, since Arrow fills the columns a record lacks with nulls. ``line`` in each
line is the record's 1-based position in its Ray batch, or the value of ``line_column`` when given.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ce_inspect.contract import dumps
from ce_inspect.data import Fields
from ce_inspect.dataset import BatchSettings, DatasetRun, KeepFilter, figure_of_line, id_note
from ce_inspect.errors import InputError, UsageError
from ce_inspect.model import LoadedModel, load
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Layout

#: The columns ``ScoreBatch`` adds (``keep`` only with a threshold), with their Arrow types.
COLUMNS = {
    "mean": "float64",
    "sum": "float64",
    "count": "int64",
    "bits_per_byte": "float64",
    "ce_error": "string",
    "ce_inspect": "string",
    "keep": "bool",
}


class ScoreBatch:
    """Score Ray Data batches as ``ce-inspect batch`` scores a file (see the module's documentation).

    ``model``: a folder, a Hub id, a ``.gguf`` file, None (the bundled default) or a loaded model;
    ``device``, ``dtype``, ``revision``, ``trust_remote_code``: as ``load``'s. The layout is ``layout`` or the
    keywords of ``text.Layout`` (``chat``, ``system``, ``tokenization``, ``sep``, ``add_eos``, ...);
    ``options`` a ``ScoreOptions``; ``batch_size``/``max_tokens`` bound each forward pass as ``batch``'s do
    (the token budget packs the records of one Ray batch); ``fields``/``format`` read the records as
    ``--prompt-field``/``--format``. ``skip_invalid``: a record that cannot be scored gets its reason in
    ``ce_error``; without it, the call raises an ``InputError`` naming the record.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        layout: Layout | None = None,
        options: ScoreOptions | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        sequence: bool = True,
        fields: Fields | None = None,
        format: str | None = None,
        skip_invalid: bool = False,
        line_column: str | None = None,
        keep_below: float | None = None,
        keep_above: float | None = None,
        keep_by: str = "mean",
        **layout_options: Any,
    ) -> None:
        if layout is not None and layout_options:
            raise UsageError(f"give `layout` or its options ({', '.join(sorted(layout_options))}), not both")
        self.layout = layout or Layout(**layout_options)
        self.options = options or ScoreOptions()
        self.settings = BatchSettings(batch_size=batch_size, max_tokens=max_tokens, sequence=sequence)
        self.fields, self.format, self.skip_invalid, self.line_column = (
            fields or Fields(),
            format,
            skip_invalid,
            line_column,
        )
        thresholds = keep_below is not None or keep_above is not None
        self.keep = KeepFilter(below=keep_below, above=keep_above, by=keep_by) if thresholds else None
        self._folder = tempfile.TemporaryDirectory(prefix="ce-inspect-ray-")
        self.lm: LoadedModel = (
            model
            if isinstance(model, LoadedModel)
            else load(model, device=device, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
        )

    def __call__(self, batch: Any) -> Any:
        kind = batch_kind(batch)
        rows = batch_rows(batch, kind)
        scored = self.score_rows(rows)
        return with_columns(batch, kind, self.columns(scored))

    def score_rows(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, str | None]]:
        """Each row's ``batch`` line (None when it could not be scored) and the reason it could not (None)."""
        if not rows:
            return []
        path = Path(self._folder.name) / "batch.jsonl"
        path.write_text("".join(_json_line(row) for row in rows), encoding="utf-8")
        lines: dict[int, dict[str, Any]] = {}
        with DatasetRun(path, None, fields=self.fields, format=self.format, describe=False) as run:
            scan = run.scan(self.lm, layout=self.layout, options=self.options, skip_invalid=True)
            skipped = {entry.line: entry.error for entry in scan.skipped}
            if skipped and not self.skip_invalid:
                first = min(skipped)
                raise InputError(
                    f"ScoreBatch: {self._where(rows, first)}: {skipped[first]} (fix the record, or pass "
                    "skip_invalid=True to get the reason in ce_error)"
                )
            run.run(self.lm, scan, options=self.options, settings=self.settings, tee=_collect(lines))
        out: list[tuple[dict[str, Any] | None, str | None]] = []
        for k, row in enumerate(rows, 1):
            line = lines.get(k)
            if line is not None and self.line_column is not None:
                line["line"] = row.get(self.line_column)
            out.append((line, skipped.get(k)))
        return out

    def columns(self, scored: list[tuple[dict[str, Any] | None, str | None]]) -> dict[str, list[Any]]:
        """The added columns, one value per row (None where the row has no line)."""
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS if name != "keep" or self.keep is not None}
        for line, error in scored:
            summary = line["summary"] if line is not None else {}
            columns["mean"].append(summary.get("mean"))
            columns["sum"].append(summary.get("sum"))
            columns["count"].append(summary.get("count"))
            columns["bits_per_byte"].append(summary.get("bits_per_byte"))
            columns["ce_error"].append(error)
            columns["ce_inspect"].append(dumps(line) if line is not None else None)
            if self.keep is not None:
                figure = figure_of_line(line, self.keep.by) if line is not None else None
                columns["keep"].append(self.keep.keeps(figure) if figure is not None else None)
        return columns

    def _where(self, rows: list[dict[str, Any]], k: int) -> str:
        row = rows[k - 1]
        at = f"line {row.get(self.line_column)}" if self.line_column is not None else f"record {k} of the batch"
        return at + id_note(row.get(self.fields.id))


def _collect(lines: dict[int, dict[str, Any]]) -> Any:
    def add(line: dict[str, Any]) -> None:
        lines[line["line"]] = line

    return add


def _json_line(row: Mapping[str, Any]) -> str:
    """A row as the JSONL line ``batch`` would read: null (and NaN) columns left out."""
    present = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return json.dumps(present, ensure_ascii=False, default=str) + "\n"


# --- Ray's batch formats -------------------------------------------------------------------------------------


def batch_kind(batch: Any) -> str:
    """``pandas``, ``arrow`` or ``dict``: which of Ray's batch formats ``batch`` is."""
    module = type(batch).__module__
    if module.startswith("pandas"):
        return "pandas"
    if module.startswith("pyarrow"):
        return "arrow"
    if isinstance(batch, Mapping):
        return "dict"
    raise UsageError(
        f"ScoreBatch takes a pandas DataFrame, a pyarrow Table or a dict of columns, got {type(batch).__name__}"
    )


def plain(value: Any) -> Any:
    """A column value as plain Python (numpy scalars and arrays, nested too), as JSON would hold it."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist() if value.dtype != object else [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if type(value).__name__ == "NAType":  # pandas.NA
        return None
    return value


def batch_rows(batch: Any, kind: str) -> list[dict[str, Any]]:
    """The records of one batch, in order, as plain dicts."""
    if kind == "arrow":
        return batch.to_pylist()
    if kind == "pandas":
        return [{str(k): plain(v) for k, v in row.items()} for row in batch.to_dict("records")]
    columns = {str(k): v for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    if any(len(v) != n for v in columns.values()):
        raise UsageError("ScoreBatch: the columns of a dict batch must all have one length")
    return [{k: plain(v[i]) for k, v in columns.items()} for i in range(n)]


def with_columns(batch: Any, kind: str, columns: dict[str, list[Any]]) -> Any:
    """``batch`` (of ``kind``) with ``columns`` added, or replaced where it has a column of that name."""
    if kind == "arrow":
        import pyarrow as pa

        for name, values in columns.items():
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, type=pa.type_for_alias(COLUMNS[name])))
        return batch
    if kind == "pandas":
        import pandas as pd

        pandas_types = {"float64": "float64", "int64": "Int64", "string": "object", "bool": "boolean"}
        out = batch.copy()
        for name, values in columns.items():
            out[name] = pd.array(values, dtype=pandas_types[COLUMNS[name]])
        return out
    import numpy as np

    out = dict(batch)
    for name, values in columns.items():
        # A column with nulls stays an object array of values and None: Ray makes it an Arrow column with nulls.
        out[name] = np.array(values, dtype=object) if any(v is None for v in values) else np.array(values)
    return out


__all__ = ["COLUMNS", "ScoreBatch", "batch_kind", "batch_rows", "plain", "with_columns"]
