"""``-o scores.parquet``: the output lines as one Parquet table, for pipelines that read Parquet.

The run writes its JSON lines as always, into a temporary JSONL file beside the output (the same sink, the
same lines); when it ends without an error they become the table, written atomically (``files.atomic_stream``),
and the temporary file goes. An interrupted run leaves no table, so there is nothing to ``resume``: a
Parquet output is refused with ``resume`` (write JSONL to resume, or rerun).

One row per line. Columns (``flat_row``): the line's scalars (``schema_version``, ``line``; ``id`` as text,
since a data set's ids may mix numbers and strings); the scalar figures of its ``summary`` under their own
names (``mean``, ``sum``, ``count``, ``bits_per_byte``, ...); each per-token field as a list column
``tokens.<field>`` (``tokens.loss``, ``tokens.token_id``, ...; ``tokens.top_k`` a list of lists); and every
other nested object (``layout``, ``settings``, ``sequence``, ``turns``, ``notes``) as its JSON text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ce_inspect.contract import dumps
from ce_inspect.errors import InputError, UsageError
from ce_inspect.files import atomic_stream

PARQUET_SUFFIX = ".parquet"
#: Rows per row group of the table.
ROW_GROUP = 1024


def is_parquet(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and Path(path).suffix.lower() == PARQUET_SUFFIX


def check_parquet_output(output: str | os.PathLike[str], *, resume: bool, torchrun: bool) -> None:
    """Before anything loads: pyarrow is there, and the run is one that writes the table whole."""
    if resume:
        raise UsageError(
            f"`output` {output}: a Parquet output is written whole when the run ends, so there is nothing to "
            "`resume`; write JSONL (-o scores.jsonl) to resume a run, or rerun without `resume`"
        )
    if torchrun:
        raise UsageError(f"`output` {output}: under torchrun the ranks merge JSON lines; give a .jsonl `output`")
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError(
            f"`output` {output}: writing Parquet needs pyarrow: pip install 'ce-inspect[datasets]'"
        ) from None


def staging_path(output: str | os.PathLike[str]) -> Path:
    """The temporary JSONL file beside ``output`` that the run's lines go to."""
    output = Path(output)
    return output.with_name(f".{output.name}.{os.getpid()}.jsonl")


@contextmanager
def parquet_output(output: str | os.PathLike[str]) -> Iterator[Path]:
    """The JSONL path to write the lines to; when the block ends without an error, ``output`` becomes their
    table. The temporary file is removed either way."""
    staged = staging_path(output)
    try:
        yield staged
        write_parquet(staged, output)
    finally:
        staged.unlink(missing_ok=True)


def flat_row(line: dict[str, Any]) -> dict[str, Any]:
    """One output line as one row of the table (see the module's documentation)."""
    row: dict[str, Any] = {}
    for key, value in line.items():
        if key == "summary":
            row.update({k: v for k, v in value.items() if not isinstance(v, dict)})
        elif key == "tokens":
            for field in dict.fromkeys(k for token in value for k in token):
                row[f"tokens.{field}"] = [token.get(field) for token in value]
        elif key == "id":
            row[key] = None if value is None else str(value)
        elif isinstance(value, (dict, list)):
            row[key] = dumps(value)
        else:
            row[key] = value
    return row


def _rows(jsonl: Path) -> Iterator[dict[str, Any]]:
    with open(jsonl, encoding="utf-8") as fh:
        for raw in fh:
            yield flat_row(json.loads(raw))


def table_schema(jsonl: Path) -> Any:
    """Every column of the rows, in the order they first appear, typed by its first value (a number column
    that holds both integers and floats is a float column)."""
    import pyarrow as pa

    types: dict[str, Any] = {}
    floats: set[str] = set()
    for row in _rows(jsonl):
        for key, value in row.items():
            if isinstance(value, float) and not isinstance(value, bool):
                floats.add(key)
            if value is not None and (key not in types or has_null(types[key])):
                types[key] = pa.array([value]).type
            types.setdefault(key, pa.null())
    return pa.schema([(k, pa.float64() if k in floats and pa.types.is_integer(t) else t) for k, t in types.items()])


def has_null(t: Any) -> bool:
    """Whether an inferred Arrow type holds the null type anywhere (a list of None only): a later value types it."""
    import pyarrow as pa

    if pa.types.is_null(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return has_null(t.value_type)
    if pa.types.is_struct(t):
        return any(has_null(t.field(i).type) for i in range(t.num_fields))
    return False


def write_parquet(jsonl: Path, output: str | os.PathLike[str]) -> None:
    """The lines of ``jsonl`` as a Parquet table at ``output``, written atomically, a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = table_schema(jsonl)
    with atomic_stream(output, label="`output`") as fh, pq.ParquetWriter(fh, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for row in _rows(jsonl):
            chunk.append(row)
            if len(chunk) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


__all__ = [
    "PARQUET_SUFFIX",
    "check_parquet_output",
    "flat_row",
    "has_null",
    "is_parquet",
    "parquet_output",
    "staging_path",
    "table_schema",
    "write_parquet",
]
