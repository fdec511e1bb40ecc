"""Data-set files -> objects -> ``Record``s, streamed, whatever the file; ``open_data`` says what it found.

Files: JSONL (streamed line by line), a JSON array (streamed object by object), either one compressed
(``.gz``, ``.bz2``, and ``.zst`` with the ``zstandard`` package: by the name's last suffix), and, through the optional
``datasets`` extra, Parquet (streamed in row groups), a folder written by ``Dataset.save_to_disk`` and a Hub
data set (from the local cache, else downloaded when the Hub is reachable; both memory-mapped Arrow, read in
slices). Nothing reads a whole file at once.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from ce_inspect.contract import NOT_ON_WIRE, DataDict, WireObject
from ce_inspect.data.formats import CHOICES, FORMATS, Fields, Record, parse_record
from ce_inspect.errors import InputError, UsageError, read_error
from ce_inspect.files import COMPRESSION_SUFFIXES, is_stream
from ce_inspect.online import hub_offline, hub_reachable, hub_unavailable

#: File kinds ``open_data`` reads; the last three need the ``datasets`` extra.
FILE_KINDS = ("jsonl", "json", "parquet", "saved-dataset", "hub")
#: A JSON array's single element may not exceed this (it is held in memory while parsed).
MAX_JSON_ELEMENT_BYTES = 64 * 1024 * 1024
_INSTALL = "pip install 'ce-inspect[datasets]'"


@dataclass(frozen=True)
class DataInfo(WireObject[DataDict]):
    """What ``open_data`` found: the file kind, the format of the first record, and how records are numbered."""

    wire_names: ClassVar[Mapping[str, str]] = {"file": "kind", "format_forced": "forced"}

    path: str = field(metadata=NOT_ON_WIRE)
    kind: str  # one of FILE_KINDS
    format: str | None  # the forced format, or the first valid record's (None: no record had one)
    forced: bool  # format given by the caller, not detected
    split: str | None = None
    #: "line" for JSONL (Record.line is the file's line), else "record"
    unit: str = field(default="line", metadata=NOT_ON_WIRE)
    limit: int | None = None  # only the first `limit` records are read (``check_limit``)
    compression: str | None = None  # gzip, bzip2 or zstd: the file is decompressed as it is read
    #: the data set held `limit` records at least: the run read only those
    limited: bool = field(default=False, metadata=NOT_ON_WIRE)
    #: the scan's warning that most answers are glued to their prompts (``dataset.GluedAnswers``)
    glued_note: str | None = field(default=None, metadata=NOT_ON_WIRE)

    @property
    def limit_note(self) -> str | None:
        """What a run's notes say when ``limit`` cut the data set; None when it read every record."""
        if not self.limited:
            return None
        return f"read only the first {self.limit} records of {self.path} (limit {self.limit})"

    @property
    def notes(self) -> tuple[str, ...]:
        """What a data-set summary's ``notes`` say of the data read: ``limit_note``, ``glued_note``."""
        return tuple(n for n in (self.limit_note, self.glued_note) if n is not None)

    def describe(self) -> str:
        """The one line shown on stderr: what is read and how it was recognised."""
        kind = {"jsonl": "JSONL", "json": "a JSON array", "parquet": "Parquet", "saved-dataset": "a saved dataset"}
        what = kind.get(self.kind, "a Hub dataset") + (f", split {self.split}" if self.split else "")
        what += f", {self.compression}-compressed" if self.compression else ""
        if self.format == CHOICES:  # never detected nor chosen: the `choices` command reads nothing else
            return f"Reading {self.path} ({what}): one multiple-choice question per record."
        how = "as given (`format`)" if self.forced else "detected from the first record; `format` overrides"
        return f"Reading {self.path} ({what}): format {self.format or 'unknown'}, {how}."

    def where(self, record: Record) -> str:
        """``path line N`` or ``path record N``, and the id when there is one: what error messages name."""
        rid = "" if record.id is None else f" (id {record.id!r})"
        return f"{self.path} {self.unit} {record.line}{rid}"


def check_limit(limit: Any) -> int | None:
    """The one check of `limit` (how many records a run reads from the start of the data set): None (all of
    them) or a positive integer; anything else is a usage error."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"`limit` must be a positive number of records, not {limit!r}")
    return limit


# --- files -> objects -----------------------------------------------------------------------------------


#: Names that say JSON Lines: every line is a record, whatever its first character.
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def compression(path: str | os.PathLike[str]) -> str | None:
    """The codec a data file is compressed with, by its name's last suffix (``.gz``, ``.bz2``, ``.zst``), or None."""
    return COMPRESSION_SUFFIXES.get(Path(path).suffix.lower())


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """A data file's bytes, decompressed as they are read when its name says it is compressed (``compression``).
    ``.zst`` needs the ``zstandard`` package; without it, an InputError that names it."""
    codec = compression(path)
    if codec == "gzip":
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "bzip2":
        import bz2

        return bz2.open(path, "rb")  # type: ignore[return-value]
    if codec == "zstd":
        try:
            import zstandard  # noqa: TID253 - optional, imported only for .zst files
        except ImportError:
            raise InputError(
                f"{path}: reading a .zst file needs the zstandard package: pip install zstandard"
            ) from None
        return io.BufferedReader(zstandard.open(path, "rb"))  # type: ignore[arg-type]
    return open(path, "rb")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What a decompressor raises for data that is not its format, or is cut short (zlib's, bz2's, zstandard's)."""
    import sys
    import zlib

    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    zstandard = sys.modules.get("zstandard")
    if zstandard is not None:
        errors.append(zstandard.ZstdError)
    return tuple(errors)


def _not_decompressed(path: str | os.PathLike[str], exc: BaseException) -> InputError:
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return InputError(f"{path}: not valid {compression(path)} data ({reason})")


def _decompressed_lines(fh: IO[bytes], path: Path) -> Iterator[bytes]:
    """The lines of ``fh``; a compressed file's corrupt or truncated data is an InputError naming the file."""
    if compression(path) is None:
        yield from fh
        return
    try:
        yield from fh
    except _decompression_errors() as exc:
        raise _not_decompressed(path, exc) from None


def file_kind(path: str | os.PathLike[str]) -> str:
    """Which reader a path needs: by what it is (a folder, a Parquet file, a JSON array), else a Hub id.

    A ``.jsonl`` (or ``.ndjson``) name is JSON Lines; another file is a JSON array when its first character
    is ``[``. Only a regular file is looked into: a pipe's first bytes would be gone for its reader (such an
    input is read by name: a ``.json`` name is a JSON array, any other JSON Lines). A compressed file
    (``data.jsonl.gz``) is named by the suffix before its compression's and looked into decompressed.
    """
    p = Path(path)
    if p.is_dir():
        return "saved-dataset"
    if p.is_file() or p.suffix:
        suffix = (p.with_suffix("") if compression(p) else p).suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if suffix in JSONL_SUFFIXES:
            return "jsonl"
        if not p.is_file():
            return "json" if suffix == ".json" else "jsonl"
        return "json" if _first_char(p) == "[" else "jsonl"
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        return "hub"
    return "jsonl"  # missing: the JSONL reader names it


def _first_char(path: Path) -> str:
    try:
        with open_binary(path) as fh:
            head = fh.read(4096)
    except (InputError, *_decompression_errors()):
        return ""
    return head.decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")[:1]


def _jsonl_objects(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        fh = open_binary(path)  # closed by the with below; opened first to map errors
    except OSError as exc:
        raise read_error(str(path), exc, kind="data file") from None
    with fh:
        for number, raw in enumerate(_decompressed_lines(fh, path), 1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, separators) are not records
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                continue
            text = text.rstrip("\r\n")  # so that a JSON error's column is on this line
            if number == 1:
                text = text.removeprefix("\ufeff")
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSONL file exactly as they are (decompressed), end of line included, numbered as
    ``read_records`` numbers its records: the blank lines it skips are skipped here too. ``batch --kept``
    copies a record's line from here."""
    path = Path(path)
    try:
        fh = open_binary(path)
    except OSError as exc:
        raise read_error(str(path), exc, kind="data file") from None
    with fh:
        for number, raw in enumerate(_decompressed_lines(fh, path), 1):
            if raw.strip():
                yield number, raw


def _json_array_objects(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, Any, str | None]]:
    """The elements of a JSON array file, one at a time: only the element being parsed is in memory.

    An element larger than ``MAX_JSON_ELEMENT_BYTES`` is refused; a syntax error ends the file (a JSON array
    cannot be resynchronised after one), as an error on the element where it happened.
    """
    try:
        fh = io.TextIOWrapper(open_binary(path), encoding="utf-8")  # closed by the with below
    except OSError as exc:
        raise read_error(str(path), exc, kind="data file") from None
    with fh:
        reader = _ArrayReader(fh, str(path), chunk, compressed=compression(path) is not None)
        if reader.next_char(skip="\ufeff") != "[":
            raise InputError(f"{path}: not a JSON array")
        reader.pos += 1
        if reader.next_char() == "]":
            reader.pos += 1
            _end_of_array(reader, path, 0)
            return
        index = 0
        while True:
            index += 1
            reader.next_char()  # to the element's first character
            try:
                obj = reader.element(index)
            except json.JSONDecodeError as exc:
                yield index, None, f"not valid JSON ({exc.msg}); the rest of the array cannot be read"
                return
            yield index, obj, None
            sep = reader.next_char()
            reader.pos += 1
            if sep == "]":
                _end_of_array(reader, path, index)
                return
            if sep != ",":
                yield index + 1, None, "not valid JSON (expected ',' or ']' after the previous element)"
                return


def _end_of_array(reader: _ArrayReader, path: Path, elements: int) -> None:
    """Refuse text after the array's closing bracket: JSON Lines whose first line is an array, two arrays."""
    if reader.next_char() != "":
        raise InputError(
            f"{path}: more text after the JSON array's closing ']' (it has {elements} elements): a JSON array file "
            "holds one array. If the file is JSON Lines (one object per line), name it .jsonl"
        )


class _ArrayReader:
    """A read buffer over a text file with a cursor; consumed text is dropped as the cursor advances."""

    _WS = re.compile(r"[ \t\r\n]*")

    def __init__(self, fh: Any, label: str, chunk: int, compressed: bool = False) -> None:
        self.fh, self.label, self.chunk = fh, label, chunk
        self.errors = _decompression_errors() if compressed else ()
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def fill(self) -> bool:
        if self.pos > self.chunk:  # drop what was consumed: each character is copied O(1) times
            self.buf, self.pos = self.buf[self.pos :], 0
        try:
            more = self.fh.read(self.chunk)
        except UnicodeDecodeError as exc:
            raise read_error(self.label, exc) from None
        except self.errors as exc:
            raise _not_decompressed(self.label, exc) from None
        self.eof = not more
        self.buf += more
        return bool(more)

    def next_char(self, skip: str = "") -> str:
        """The next character that is not whitespace (nor one of ``skip``), without consuming it; "" at the end."""
        while True:
            self.pos = self._WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            while skip and self.pos < len(self.buf) and self.buf[self.pos] in skip:
                self.pos += 1
                self.pos = self._WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self.eof or not self.fill():
                return self.buf[self.pos : self.pos + 1]

    def element(self, index: int) -> Any:
        """Decode the element at the cursor, reading more until it is complete."""
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Running out of text looks like an error at the end of the buffer (or an open string).
                truncated = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 8
                if self.eof or not truncated:
                    raise
                self._grow(index)
                continue
            if end < len(self.buf) or self.eof:  # a number at the buffer's end may go on in the next chunk
                self.pos = end
                return obj
            self._grow(index)

    def _grow(self, index: int) -> None:
        if len(self.buf) - self.pos > MAX_JSON_ELEMENT_BYTES:
            raise InputError(
                f"{self.label}: element {index} of the JSON array is over {MAX_JSON_ELEMENT_BYTES >> 20} MB; "
                "convert the file to JSONL (one object per line)"
            )
        self.fill()


def _require_datasets(what: str) -> Any:
    try:
        import datasets  # noqa: TID253 - optional extra, imported only for these files
    except ImportError:
        raise InputError(f"reading {what} needs the datasets library: {_INSTALL}") from None
    return datasets


def _rows(table_batches: Iterator[Any], start: int = 1) -> Iterator[tuple[int, Any, str | None]]:
    index = start - 1
    for batch in table_batches:
        for row in batch:
            index += 1
            yield index, row, None


def _parquet_objects(path: Path, batch_rows: int = 256) -> Iterator[tuple[int, Any, str | None]]:
    _require_datasets(f"Parquet ({path})")
    import pyarrow.parquet as pq  # installed with datasets

    try:
        pf = pq.ParquetFile(path)
    except OSError as exc:
        raise (
            read_error(str(path), exc, kind="Parquet file")
            if isinstance(exc, FileNotFoundError)
            else InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})")
        ) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
    yield from _rows(b.to_pylist() for b in pf.iter_batches(batch_size=batch_rows))


def _arrow_dataset_rows(ds: Any, batch_rows: int = 256) -> Iterator[tuple[int, Any, str | None]]:
    def batches() -> Iterator[list[dict[str, Any]]]:
        for start in range(0, len(ds), batch_rows):
            columns = ds[start : start + batch_rows]
            names = list(columns)
            yield [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]

    yield from _rows(batches())


def _pick_split(ds: Any, split: str | None, label: str) -> Any:
    if hasattr(ds, "keys") and not hasattr(ds, "column_names") or isinstance(getattr(ds, "column_names", None), dict):
        names = list(ds.keys())
        if split is None:
            if len(names) == 1:
                return ds[names[0]]
            raise InputError(f"{label} has the splits {', '.join(names)}; pick one with `split`")
        if split not in names:
            raise InputError(f"{label} has no split {split!r}; it has {', '.join(names)}")
        return ds[split]
    if split is not None:
        raise InputError(f"{label} is a single dataset without splits; drop `split`")
    return ds


def _saved_dataset_objects(path: Path, split: str | None) -> Iterator[tuple[int, Any, str | None]]:
    datasets = _require_datasets(f"a saved dataset ({path})")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(
            f"{path}: a folder but not a dataset saved with `save_to_disk` ({' '.join(str(exc).split())[:160]})"
        ) from None
    yield from _arrow_dataset_rows(_pick_split(ds, split, str(path)))


def _hub_objects(name: str, split: str | None) -> Iterator[tuple[int, Any, str | None]]:
    """A Hub dataset: from the local cache, else downloaded when the Hub is reachable (one connection attempt,
    ``online.hub_reachable``, as for models); otherwise one line that says why."""
    datasets = _require_datasets(f"the Hub dataset {name}")
    try:
        ds = _load_hub_dataset(datasets, name, split, cache_only=True)
    except Exception as cached:  # noqa: BLE001 - datasets raises many types for a dataset it cannot find offline
        if hub_offline() or not hub_reachable():
            raise InputError(
                f"{name}: no such file, and not a Hub dataset in the local cache; {hub_unavailable()}, so it cannot "
                f"be downloaded: download it where the Hub is reachable, or give a local file ({_one_line(cached)})"
            ) from None
        try:
            ds = _load_hub_dataset(datasets, name, split, cache_only=False)
        except Exception as exc:  # noqa: BLE001 - as above: not found, private, gated, a network failure
            raise InputError(
                f"{name}: no such file, and not a Hub dataset in the local cache nor one the Hub gives "
                f"(no such dataset, or it is private or gated) ({_one_line(exc)})"
            ) from None
    yield from _arrow_dataset_rows(_pick_split(ds, split if not hasattr(ds, "column_names") else None, name))


def _load_hub_dataset(datasets: Any, name: str, split: str | None, *, cache_only: bool) -> Any:
    """``datasets.load_dataset`` from the local cache only, or from the Hub (``cache_only`` False)."""
    from datasets import config as ds_config

    saved = ds_config.HF_HUB_OFFLINE
    ds_config.HF_HUB_OFFLINE = cache_only
    try:
        return datasets.load_dataset(name, split=split)
    finally:
        ds_config.HF_HUB_OFFLINE = saved


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def read_objects(
    path: str | os.PathLike[str], kind: str, split: str | None, limit: int | None = None
) -> Iterator[tuple[int, Any, str | None]]:
    """The decoded objects of a data set, streamed, as ``(number, object, error)``; only the first ``limit``
    (each one a record, an unreadable one too) when it is given: nothing after them is read."""
    objects = _objects(path, kind, split)
    return objects if check_limit(limit) is None else itertools.islice(objects, limit)


def _objects(path: str | os.PathLike[str], kind: str, split: str | None) -> Iterator[tuple[int, Any, str | None]]:
    if compression(path) is not None and kind not in ("jsonl", "json"):
        raise InputError(f"{path}: only JSONL and JSON files are read compressed; decompress it first")
    if split is not None and kind in ("jsonl", "json", "parquet"):
        raise InputError(f"{path} is a single file; `split` applies to saved and Hub datasets")
    if kind == "jsonl":
        return _jsonl_objects(Path(path))
    if kind == "json":
        return _json_array_objects(Path(path))
    if kind == "parquet":
        return _parquet_objects(Path(path))
    if kind == "saved-dataset":
        return _saved_dataset_objects(Path(path), split)
    return _hub_objects(str(path), split)


# --- the public readers ---------------------------------------------------------------------------------


def read_records(
    path: str | os.PathLike[str],
    fields: Fields | None = None,
    *,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> Iterator[Record]:
    """Every record of a data set, in order, streamed; a record that is not an example carries ``error``.

    ``format`` (one of ``FORMATS``) forces how every record is read; None detects it per record.
    ``split`` picks the split of a saved or Hub dataset; ``limit``: only the first ``limit`` records.
    """
    if format is not None and format not in FORMATS and format != CHOICES:
        raise InputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    fields = fields or Fields()
    for number, obj, error in read_objects(path, file_kind(path), split, limit):
        if error is not None:
            yield Record(number, error=error)
        else:
            yield parse_record(number, obj, fields, format)


def open_data(
    path: str | os.PathLike[str],
    fields: Fields | None = None,
    *,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> DataInfo:
    """The file kind and the format of the data set (from its first valid record), for the one-line notice;
    ``limit``: the run reads only the first ``limit`` records (``DataInfo.limit``, ``check_limit``).

    Reads only until the first record that parses; raises for a file that cannot be opened at all, and for
    an input that can be read only once (stdin, a pipe, a FIFO: ``files.is_stream``), since every reader of
    a data set reads it again after this: ``files.spooled_input`` copies such an input to a file first.
    """
    if is_stream(path):
        raise InputError(
            f"{path}: can be read only once (stdin, a pipe or a FIFO), and a data set is read more than once; "
            "copy it to a file first (`files.spooled_input` does)"
        )
    check_limit(limit)
    kind = file_kind(path)
    detected = format
    if detected is None:
        for record in read_records(path, fields, split=split, limit=limit):
            if record.format is not None:
                detected = record.format
                break
    else:
        next(read_records(path, fields, format=format, split=split), None)  # opens it: errors now, not later
    return DataInfo(
        path=str(path),
        kind=kind,
        format=detected,
        forced=format is not None,
        split=split,
        unit="line" if kind == "jsonl" else "record",
        limit=limit,
        compression=compression(path) if kind in ("jsonl", "json") else None,
    )


__all__ = [
    "FILE_KINDS",
    "JSONL_SUFFIXES",
    "MAX_JSON_ELEMENT_BYTES",
    "DataInfo",
    "check_limit",
    "compression",
    "file_kind",
    "jsonl_lines",
    "open_binary",
    "open_data",
    "read_objects",
    "read_records",
]
