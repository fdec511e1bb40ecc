"""``ScoreBatch`` and ``DiffBatch``: ``ce-inspect batch`` and ``ce-inspect diff DATA`` as callable classes for
``ray.data.Dataset.map_batches``.

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

``DiffBatch(model_a=..., model_b=...)`` holds two models per actor, both loaded once in ``__init__``, and puts each
call's records through ``diff DATA``'s job on the same runner (``diff.diff_job``: the one scorer, both models on the
same tokens): the columns are each model's ``mean`` and ``sum`` (``mean_a``, ``sum_a``, ``mean_b``, ``sum_b``),
``count``, ``dnll_mean``, ``kl_mean``, ``kl_max``, ``same_top1_pct`` (the line's ``summary``), ``ce_error`` and
``ce_inspect``, the record's whole ``diff`` line.

Records are read as ``batch`` reads a JSONL line, with one difference: a column whose value is null (or a
pandas NaN) counts as absent, since Arrow fills the columns a record lacks with nulls. ``line`` in each
line is the record's 1-based position in its Ray batch, or the value of ``line_column`` when given.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ce_inspect.contract import dumps
from ce_inspect.data import Fields
from ce_inspect.dataset import BatchSettings, DatasetRun, Job, KeepFilter, figure_of_line, id_note
from ce_inspect.diff import diff_job, record_encoder
from ce_inspect.errors import InputError, UsageError
from ce_inspect.model import LoadedModel, load
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Encoded, Layout

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

#: The columns ``DiffBatch`` adds, with their Arrow types; ``DIFF_FIGURES`` says where each figure is in a diff line.
DIFF_COLUMNS = {
    "mean_a": "float64",
    "sum_a": "float64",
    "mean_b": "float64",
    "sum_b": "float64",
    "count": "int64",
    "dnll_mean": "float64",
    "kl_mean": "float64",
    "kl_max": "float64",
    "same_top1_pct": "float64",
    "ce_error": "string",
    "ce_inspect": "string",
}
DIFF_FIGURES = {
    "mean_a": ("reference", "summary", "mean"),
    "sum_a": ("reference", "summary", "sum"),
    "mean_b": ("candidate", "summary", "mean"),
    "sum_b": ("candidate", "summary", "sum"),
    "count": ("summary", "count"),
    "dnll_mean": ("summary", "dnll_mean"),
    "kl_mean": ("summary", "kl_mean"),
    "kl_max": ("summary", "kl_max"),
    "same_top1_pct": ("summary", "same_top1_pct"),
}

Scored = list[tuple[dict[str, Any] | None, str | None]]


class RayBatches:
    """What ``ScoreBatch`` and ``DiffBatch`` share: a Ray batch's rows written as a JSONL data set of their own,
    through ``DatasetRun`` (the record reader, the scan, token-budget batches, the command's job and lines),
    each row's line and its reason for having none made columns. A subclass sets ``lm`` (the model the scan
    encodes with) and, where they are not ``batch``'s, ``command``, ``encoder``, ``job`` and ``settings``, and
    says its ``figures``; ``types``: its columns (the figures, ``ce_error``, ``ce_inspect``), their Arrow types.
    The keywords here (how records are read and laid out, ``skip_invalid``, ``line_column``) are both classes'."""

    #: How messages name the class.
    label: ClassVar[str] = "RayBatches"
    lm: LoadedModel

    def __init__(
        self,
        types: Mapping[str, str],
        *,
        layout: Layout | None = None,
        options: ScoreOptions | None = None,
        fields: Fields | None = None,
        format: str | None = None,
        skip_invalid: bool = False,
        line_column: str | None = None,
        **layout_options: Any,
    ) -> None:
        if layout is not None and layout_options:
            raise UsageError(f"give `layout` or its options ({', '.join(sorted(layout_options))}), not both")
        self.layout = layout or Layout(**layout_options)
        self.options = options or ScoreOptions()
        self.fields, self.format, self.skip_invalid, self.line_column = (
            fields or Fields(),
            format,
            skip_invalid,
            line_column,
        )
        self.command: str = "batch"
        self.encoder: Callable[[Any], Encoded] | None = None
        self.job: Job | None = None
        self.settings = BatchSettings()
        self.types = types
        self._folder = tempfile.TemporaryDirectory(prefix="ce-inspect-ray-")

    def __call__(self, batch: Any) -> Any:
        kind = batch_kind(batch, self.label)
        rows = batch_rows(batch, kind, self.label)
        scored = self.score_rows(rows)
        return with_columns(batch, kind, self.columns(scored), self.types)

    def score_rows(self, rows: list[dict[str, Any]]) -> Scored:
        """Each row's line (None when it could not be scored) and the reason it could not (None)."""
        if not rows:
            return []
        path = Path(self._folder.name) / "batch.jsonl"
        path.write_text("".join(_json_line(row) for row in rows), encoding="utf-8")
        lines: dict[int, dict[str, Any]] = {}
        run_args = {"fields": self.fields, "format": self.format, "command": self.command, "describe": False}
        with DatasetRun(path, None, **run_args) as run:
            options = self.options
            scan = run.scan(self.lm, layout=self.layout, options=options, skip_invalid=True, encoder=self.encoder)
            skipped = {entry.line: entry.error for entry in scan.skipped}
            if skipped and not self.skip_invalid:
                first = min(skipped)
                raise InputError(
                    f"{self.label}: {self._where(rows, first)}: {skipped[first]} (fix the record, or pass "
                    "skip_invalid=True to get the reason in ce_error)"
                )
            run.run(self.lm, scan, self.job, options=options, settings=self.settings, tee=_collect(lines))
        out: Scored = []
        for k, row in enumerate(rows, 1):
            line = lines.get(k)
            if line is not None and self.line_column is not None:
                line["line"] = row.get(self.line_column)
            out.append((line, skipped.get(k)))
        return out

    def figures(self, line: dict[str, Any]) -> dict[str, Any]:
        """The figure columns' values of one line."""
        raise NotImplementedError

    def columns(self, scored: Scored) -> dict[str, list[Any]]:
        """The added columns, one value per row (None where the row has no line)."""
        columns: dict[str, list[Any]] = {name: [] for name in self.types}
        for line, error in scored:
            values = {
                **(self.figures(line) if line is not None else {}),
                "ce_error": error,
                "ce_inspect": dumps(line) if line is not None else None,
            }
            for name, column in columns.items():
                column.append(values.get(name))
        return columns

    def _where(self, rows: list[dict[str, Any]], k: int) -> str:
        row = rows[k - 1]
        at = f"line {row.get(self.line_column)}" if self.line_column is not None else f"record {k} of the batch"
        return at + id_note(row.get(self.fields.id))


class ScoreBatch(RayBatches):
    """Score Ray Data batches as ``ce-inspect batch`` scores a file (see the module's documentation).

    ``model``: a folder, a Hub id, a ``.gguf`` file, None (the bundled default) or a loaded model;
    ``device``, ``dtype``, ``revision``, ``trust_remote_code``: as ``load``'s. The layout is ``layout`` or the
    keywords of ``text.Layout`` (``chat``, ``system``, ``tokenization``, ``sep``, ``add_eos``, ...);
    ``options`` a ``ScoreOptions``; ``batch_size``/``max_tokens`` bound each forward pass as ``batch``'s do
    (the token budget packs the records of one Ray batch); ``fields``/``format`` read the records as
    ``--prompt-field``/``--format``. ``skip_invalid``: a record that cannot be scored gets its reason in
    ``ce_error``; without it, the call raises an ``InputError`` naming the record.
    """

    label: ClassVar[str] = "ScoreBatch"

    def __init__(
        self,
        model: Any = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        sequence: bool = True,
        keep_below: float | None = None,
        keep_above: float | None = None,
        keep_by: str = "mean",
        **common: Any,
    ) -> None:
        thresholds = keep_below is not None or keep_above is not None
        self.keep = KeepFilter(below=keep_below, above=keep_above, by=keep_by) if thresholds else None
        super().__init__({name: t for name, t in COLUMNS.items() if name != "keep" or self.keep is not None}, **common)
        self.settings = BatchSettings(batch_size=batch_size, max_tokens=max_tokens, sequence=sequence)
        self.lm = loaded(model, device, dtype, revision, trust_remote_code)

    def figures(self, line: dict[str, Any]) -> dict[str, Any]:
        summary = line["summary"]
        values = {name: summary.get(name) for name in ("mean", "sum", "count", "bits_per_byte")}
        if self.keep is not None:
            figure = figure_of_line(line, self.keep.by)
            values["keep"] = self.keep.keeps(figure) if figure is not None else None
        return values


class DiffBatch(RayBatches):
    """Compare two models on Ray Data batches as ``ce-inspect diff DATA`` compares them on a file (see the
    module's documentation).

    ``model_a`` (the reference) and ``model_b`` (the candidate): each a folder, a Hub id, a ``.gguf`` file, None
    (the bundled default; for ``model_b``: ``model_a``'s) or a loaded model, both loaded once here; ``device``,
    ``dtype``, ``revision``, ``trust_remote_code`` are ``model_a``'s and the ``_b`` ones ``model_b``'s (default:
    ``model_a``'s, as ``--device-b``, ...). ``layout`` or its keywords, ``options``, ``batch_size``,
    ``max_tokens``, ``fields``, ``format``, ``skip_invalid`` and ``line_column``: as ``ScoreBatch``'s. A record
    whose tokens differ under the two tokenizers cannot be compared (its reason in ``ce_error``).
    """

    label: ClassVar[str] = "DiffBatch"

    def __init__(
        self,
        model_a: Any = None,
        model_b: Any = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        device_b: str | None = None,
        dtype_b: str | None = None,
        revision_b: str | None = None,
        trust_remote_code_b: bool = False,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(DIFF_COLUMNS, **common)
        if model_b is None and device_b is None and dtype_b is None and revision_b is None:
            raise UsageError(
                "DiffBatch: give the candidate model: `model_b`, or model_a at another `dtype_b`, `device_b` or "
                "`revision_b`"
            )
        if model_b is None and isinstance(model_a, LoadedModel):
            raise UsageError("DiffBatch: `model_a` is a loaded model: give `model_b` too")
        b = (device_b or device, dtype_b or dtype, revision_b or revision, trust_remote_code_b)
        self.command, self.settings = "diff", BatchSettings(batch_size=batch_size, max_tokens=max_tokens)
        self.lm = loaded(model_a, device, dtype, revision, trust_remote_code)
        self.lm_b = loaded(model_a if model_b is None else model_b, *b)
        self.encoder = record_encoder(self.lm, self.lm_b, self.layout)
        self.job = diff_job(self.lm, self.lm_b, self.options, self.settings.worst)

    def figures(self, line: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, path in DIFF_FIGURES.items():
            value: Any = line
            for key in path:
                value = value[key]
            values[name] = value
        return values


def loaded(model: Any, device: str, dtype: str, revision: str | None, trust_remote_code: bool) -> LoadedModel:
    """``model`` itself when it is a loaded model, else ``load``'s model for it."""
    if isinstance(model, LoadedModel):
        return model
    return load(model, device=device, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)


def _collect(lines: dict[int, dict[str, Any]]) -> Any:
    def add(line: dict[str, Any]) -> None:
        lines[line["line"]] = line

    return add


def _json_line(row: Mapping[str, Any]) -> str:
    """A row as the JSONL line ``batch`` would read: null (and NaN) columns left out."""
    present = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return json.dumps(present, ensure_ascii=False, default=str) + "\n"


# --- Ray's batch formats -------------------------------------------------------------------------------------


def batch_kind(batch: Any, label: str = "ScoreBatch") -> str:
    """``pandas``, ``arrow`` or ``dict``: which of Ray's batch formats ``batch`` is."""
    module = type(batch).__module__
    if module.startswith("pandas"):
        return "pandas"
    if module.startswith("pyarrow"):
        return "arrow"
    if isinstance(batch, Mapping):
        return "dict"
    raise UsageError(
        f"{label} takes a pandas DataFrame, a pyarrow Table or a dict of columns, got {type(batch).__name__}"
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


def batch_rows(batch: Any, kind: str, label: str = "ScoreBatch") -> list[dict[str, Any]]:
    """The records of one batch, in order, as plain dicts."""
    if kind == "arrow":
        return batch.to_pylist()
    if kind == "pandas":
        return [{str(k): plain(v) for k, v in row.items()} for row in batch.to_dict("records")]
    columns = {str(k): v for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    if any(len(v) != n for v in columns.values()):
        raise UsageError(f"{label}: the columns of a dict batch must all have one length")
    return [{k: plain(v[i]) for k, v in columns.items()} for i in range(n)]


def with_columns(batch: Any, kind: str, columns: dict[str, list[Any]], types: Mapping[str, str] = COLUMNS) -> Any:
    """``batch`` (of ``kind``) with ``columns`` (their Arrow types in ``types``) added, or replaced where it has
    a column of that name."""
    if kind == "arrow":
        import pyarrow as pa

        for name, values in columns.items():
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, type=pa.type_for_alias(types[name])))
        return batch
    if kind == "pandas":
        import pandas as pd

        pandas_types = {"float64": "float64", "int64": "Int64", "string": "object", "bool": "boolean"}
        out = batch.copy()
        for name, values in columns.items():
            out[name] = pd.array(values, dtype=pandas_types[types[name]])
        return out
    import numpy as np

    out = dict(batch)
    for name, values in columns.items():
        # A column with nulls stays an object array of values and None: Ray makes it an Arrow column with nulls.
        out[name] = np.array(values, dtype=object) if any(v is None for v in values) else np.array(values)
    return out


__all__ = [
    "COLUMNS",
    "DIFF_COLUMNS",
    "DIFF_FIGURES",
    "DiffBatch",
    "RayBatches",
    "ScoreBatch",
    "batch_kind",
    "batch_rows",
    "loaded",
    "plain",
    "with_columns",
]
