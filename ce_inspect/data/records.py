"""The data people train on -> ``Record``s, one per example, whatever the file and the format.

Files: JSONL (streamed line by line), a JSON array (streamed object by object), and, through the optional
``datasets`` extra, Parquet (streamed in row groups), a folder written by ``Dataset.save_to_disk`` and a Hub
data set in the local cache (both memory-mapped Arrow, read in slices). Nothing reads a whole file at once.

Formats (detected per record from its fields, or forced with ``format``):

- ``prompt-answer``: ce-inspect's own ``{"prompt", "answer"}`` (field names set by ``Fields``);
- ``prompt-completion``: TRL's prompt-completion type, plain (two strings) or conversational (two message
  lists);
- ``messages``: a chat conversation (TRL's conversational language-modelling type);
- ``conversations``: ShareGPT, messages with ``from``/``value`` (human, gpt, system mapped to user,
  assistant, system);
- ``text``: TRL's language-modelling type, every token scored;
- ``tokenized``: ``input_ids`` with ``labels``, or with TRL's ``completion_mask`` and/or ``assistant_masks``
  (or neither: every token trained, as TRL does), scored exactly as given.

A record that cannot become an example carries ``error`` instead of raising, so that the caller decides
whether to stop or skip. Messages of every format are validated by ``encoding.parse_messages``, the same
function ``run --messages`` uses, so both accept exactly the same conversations.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import InputError, read_error
from ce_inspect.text import IGNORE_INDEX, Encoded, Layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ce_inspect.model import LoadedModel

#: Record formats, in the order detection tries them.
FORMATS = ("tokenized", "conversations", "messages", "prompt-completion", "prompt-answer", "text")
#: File kinds ``open_data`` reads; the last three need the ``datasets`` extra.
FILE_KINDS = ("jsonl", "json", "parquet", "saved-dataset", "hub")
#: ShareGPT speakers -> chat roles. Other speakers (tool, function_call, ...) keep their name as the role.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
#: TRL's mask columns: 1 marks a trained token; TRL trains a token only where every mask present says 1.
MASK_FIELDS = ("completion_mask", "assistant_masks")
#: A JSON array's single element may not exceed this (it is held in memory while parsed).
MAX_JSON_ELEMENT_BYTES = 64 * 1024 * 1024
_INSTALL = "pip install 'ce-inspect[datasets]'"


@dataclass(frozen=True)
class Fields:
    """Names of the record fields (``--prompt-field`` and friends); TRL's names are fixed."""

    prompt: str = "prompt"
    answer: str = "answer"
    messages: str = "messages"
    id: str = "id"
    completion: str = "completion"
    text: str = "text"
    conversations: str = "conversations"


@dataclass(frozen=True)
class Record:
    """One example of the input, in one of ``FORMATS``, or the reason it is none.

    Exactly one group of fields is set: ``prompt``/``answer`` (prompt-answer, plain prompt-completion),
    ``prompt_messages``/``completion_messages`` (conversational prompt-completion), ``messages`` (messages,
    conversations), ``text``, or ``input_ids``/``labels`` (tokenized). ``labels`` are as given, or built from
    the masks as TRL builds them (the id where every mask is 1, else -100); ``labels_from`` says which.
    """

    line: int  # 1-based: the line of a JSONL file, else the record's position in the data set
    id: str | int | None = None
    prompt: str | None = None
    answer: str | None = None
    messages: list[dict[str, str]] | None = None
    error: str | None = None
    format: str | None = field(default=None, compare=False)
    text: str | None = None
    prompt_messages: list[dict[str, str]] | None = None
    completion_messages: list[dict[str, str]] | None = None
    input_ids: tuple[int, ...] | None = None
    labels: tuple[int, ...] | None = None
    labels_from: str | None = (
        None  # "labels", "completion_mask", "assistant_masks", both masks joined by "+", "input_ids"
    )
    attention_mask: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DataInfo:
    """What ``open_data`` found: the file kind, the format of the first record, and how records are numbered."""

    path: str
    kind: str  # one of FILE_KINDS
    format: str | None  # the forced format, or the first valid record's (None: no record had one)
    forced: bool  # format given by the caller, not detected
    split: str | None = None
    unit: str = "line"  # "line" for JSONL (Record.line is the file's line), else "record"

    def describe(self) -> str:
        """The one line shown on stderr: what is read and how it was recognised."""
        kind = {"jsonl": "JSONL", "json": "a JSON array", "parquet": "Parquet", "saved-dataset": "a saved dataset"}
        what = kind.get(self.kind, "a Hub dataset from the local cache") + (
            f", split {self.split}" if self.split else ""
        )
        how = "as given (`format`)" if self.forced else "detected from the first record; `format` overrides"
        return f"Reading {self.path} ({what}): format {self.format or 'unknown'}, {how}."

    def where(self, record: Record) -> str:
        """``path line N`` or ``path record N``, and the id when there is one: what error messages name."""
        rid = "" if record.id is None else f" (id {record.id!r})"
        return f"{self.path} {self.unit} {record.line}{rid}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.kind, "format": self.format, "format_forced": self.forced, "split": self.split}


# --- one object -> one record ---------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def detect_format(obj: dict[str, Any], fields: Fields | None = None) -> str | None:
    """The format a record's fields say it is in, or None. The first match of ``FORMATS`` wins."""
    f = fields or Fields()
    if "input_ids" in obj:
        return "tokenized"
    if f.conversations in obj and f.messages not in obj:
        return "conversations"
    if f.messages in obj:
        return "messages"
    if f.completion in obj and f.answer not in obj:
        return "prompt-completion"
    if f.prompt in obj or f.answer in obj:
        return "prompt-answer"
    if f.text in obj:
        return "text"
    return None


def parse_record(line: int, obj: Any, fields: Fields | None = None, format: str | None = None) -> Record:
    """One decoded object (a JSON line, an array element, a dataset row) as a ``Record`` of ``format``.

    ``format`` None detects it from the fields. Never raises for bad data: the reason goes in ``error``.
    """
    f = fields or Fields()
    if not isinstance(obj, dict):
        return Record(line, error=f"not a JSON object but a JSON {_type_name(obj)}")
    rid = obj.get(f.id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int, type(None))):
        return Record(line, error=f"field {f.id!r} must be a string or an integer, not {_type_name(rid)}")
    fmt = format or detect_format(obj, f)
    if fmt is None:
        found = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        return Record(
            line,
            rid,
            error=f"no known format (fields: {found}); expected prompt/answer, prompt/completion, messages, "
            "conversations, text or input_ids (`format` and the field options pick others)",
        )
    try:
        return _PARSERS[fmt](line, rid, obj, f)
    except InputError as exc:
        return Record(line, rid, error=str(exc), format=fmt)


def _string(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise InputError(f"missing field {name!r}")
    if not isinstance(obj[name], str):
        raise InputError(f"field {name!r} must be a string, not {_type_name(obj[name])}")
    return _text(obj[name], name)


def _text(value: str, name: str) -> str:
    """The core's text rule (no lone surrogates, ...), so that a bad record is an invalid line, not a crash."""
    from ce_inspect.text import check_text

    check_text(value, f"field {name!r}")
    return value


def _parse_prompt_answer(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if f.messages in obj:
        raise InputError(f"has both {f.messages!r} and {f.prompt!r}/{f.answer!r}; keep one")
    prompt, answer = _string(obj, f.prompt), _string(obj, f.answer)
    return Record(line, rid, prompt=prompt, answer=answer, format="prompt-answer")


def _parse_prompt_completion(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    from ce_inspect.text import parse_messages

    for name in (f.prompt, f.completion):
        if name not in obj:
            raise InputError(f"missing field {name!r}")
    prompt, completion = obj[f.prompt], obj[f.completion]
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt, completion = _text(prompt, f.prompt), _text(completion, f.completion)
        return Record(line, rid, prompt=prompt, answer=completion, format="prompt-completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return Record(
            line,
            rid,
            prompt_messages=parse_messages(prompt, f"field {f.prompt!r}"),
            completion_messages=parse_messages(completion, f"field {f.completion!r}"),
            format="prompt-completion",
        )
    raise InputError(
        f"fields {f.prompt!r} and {f.completion!r} must both be strings or both be message lists, not "
        f"{_type_name(prompt)} and {_type_name(completion)}"
    )


def _parse_messages(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    from ce_inspect.text import parse_messages

    if f.prompt in obj or f.answer in obj:
        raise InputError(f"has both {f.messages!r} and {f.prompt!r}/{f.answer!r}; keep one")
    if f.messages not in obj:
        raise InputError(f"missing field {f.messages!r}")
    return Record(line, rid, messages=parse_messages(obj[f.messages], f"field {f.messages!r}"), format="messages")


def sharegpt_messages(data: Any, source: str = "conversations") -> list[dict[str, Any]]:
    """ShareGPT ``[{"from", "value"}]`` as ``[{"role", "content"}]``: human -> user, gpt -> assistant.

    Messages already in role/content form pass through; ``parse_messages`` validates the result. A ShareGPT
    message without a ``from`` or a ``value`` string is an InputError naming ShareGPT's field.
    """
    if not isinstance(data, list):
        return data  # parse_messages names the problem
    out: list[Any] = []
    for i, message in enumerate(data):
        if isinstance(message, dict) and "role" not in message:
            speaker, value = message.get("from"), message.get("value")
            if not isinstance(speaker, str) or not speaker:
                raise InputError(
                    f'{source}: message {i} has no "from" string (ShareGPT\'s speaker: human, gpt, system, ...)'
                )
            role = SHAREGPT_ROLES.get(speaker, speaker)
            if not isinstance(value, (str, list)):
                raise InputError(f'{source}: message {i} ({speaker}) has no "value" string (ShareGPT\'s text)')
            out.append({"role": role, "content": value})
        else:
            out.append(message)
    return out


def _parse_conversations(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    from ce_inspect.text import parse_messages

    if f.conversations not in obj:
        raise InputError(f"missing field {f.conversations!r}")
    source = f"field {f.conversations!r}"
    messages = parse_messages(sharegpt_messages(obj[f.conversations], source), source)
    return Record(line, rid, messages=messages, format="conversations")


def _parse_text(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    text = _string(obj, f.text)
    if not text:
        raise InputError(f"field {f.text!r} is empty: there is nothing to score")
    return Record(line, rid, text=text, format="text")


def _int_list(obj: dict[str, Any], name: str, *, bits: bool = False) -> tuple[int, ...]:
    value = obj[name]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"field {name!r} must be a non-empty array of integers, not {_type_name(value)}")
    for k, item in enumerate(value):
        ok = isinstance(item, int) and (not isinstance(item, bool) or bits)
        if not ok or (bits and item not in (0, 1)):
            want = "0 or 1" if bits else "an integer"
            raise InputError(f"field {name!r}: item {k} is {item!r}, not {want}")
    return tuple(int(x) for x in value)


def _parse_tokenized(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if "input_ids" not in obj:
        raise InputError("missing field 'input_ids'")
    ids = _int_list(obj, "input_ids")
    for name in ("labels", *MASK_FIELDS):
        if name in obj and obj[name] is None:  # absent would train every token: say so, do not guess
            raise InputError(
                f"field {name!r} is null; give it as an array, or drop the field (with no labels and no masks every "
                "token is trained, as TRL does)"
            )
    attention = None
    if obj.get("attention_mask") is not None:
        attention = _int_list(obj, "attention_mask", bits=True)
    masks = [name for name in MASK_FIELDS if obj.get(name) is not None]
    given = (["labels"] if obj.get("labels") is not None else []) + masks + (["attention_mask"] if attention else [])
    lengths = {name: len(obj[name]) for name in given if isinstance(obj[name], (list, tuple))}
    for name, n in lengths.items():
        if n != len(ids):
            raise InputError(f"field {name!r} has {n} items but 'input_ids' has {len(ids)}; they must match")
    if obj.get("labels") is not None:
        labels, source = _int_list(obj, "labels"), "labels"
    elif masks:
        values = [_int_list(obj, name, bits=True) for name in masks]
        labels = tuple(tid if all(bits) else -100 for tid, *bits in zip(ids, *values))
        source = "+".join(masks)
    else:
        labels, source = ids, "input_ids"
    return Record(
        line, rid, input_ids=ids, labels=labels, labels_from=source, attention_mask=attention, format="tokenized"
    )


_PARSERS = {
    "prompt-answer": _parse_prompt_answer,
    "prompt-completion": _parse_prompt_completion,
    "messages": _parse_messages,
    "conversations": _parse_conversations,
    "text": _parse_text,
    "tokenized": _parse_tokenized,
}


# --- files -> objects -----------------------------------------------------------------------------------


#: Names that say JSON Lines: every line is a record, whatever its first character.
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def file_kind(path: str | os.PathLike[str]) -> str:
    """Which reader a path needs: by what it is (a folder, a Parquet file, a JSON array), else a Hub id.

    A ``.jsonl`` (or ``.ndjson``) name is JSON Lines; another file is a JSON array when its first character
    is ``[``. Only a regular file is looked into: a pipe's first bytes would be gone for its reader (such an
    input is read by name: a ``.json`` name is a JSON array, any other JSON Lines).
    """
    p = Path(path)
    if p.is_dir():
        return "saved-dataset"
    if p.is_file() or p.suffix:
        suffix = p.suffix.lower()
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
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return ""
    return head.decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")[:1]


def _jsonl_objects(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        fh = open(path, "rb")  # closed by the with below; opened first to map errors
    except OSError as exc:
        raise read_error(str(path), exc, kind="data file") from None
    with fh:
        for number, raw in enumerate(fh, 1):
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


def _json_array_objects(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, Any, str | None]]:
    """The elements of a JSON array file, one at a time: only the element being parsed is in memory.

    An element larger than ``MAX_JSON_ELEMENT_BYTES`` is refused; a syntax error ends the file (a JSON array
    cannot be resynchronised after one), as an error on the element where it happened.
    """
    try:
        fh = open(path, encoding="utf-8")  # closed by the with below
    except OSError as exc:
        raise read_error(str(path), exc, kind="data file") from None
    with fh:
        reader = _ArrayReader(fh, str(path), chunk)
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

    def __init__(self, fh: Any, label: str, chunk: int) -> None:
        self.fh, self.label, self.chunk = fh, label, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def fill(self) -> bool:
        if self.pos > self.chunk:  # drop what was consumed: each character is copied O(1) times
            self.buf, self.pos = self.buf[self.pos :], 0
        try:
            more = self.fh.read(self.chunk)
        except UnicodeDecodeError as exc:
            raise read_error(self.label, exc) from None
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
    datasets = _require_datasets(f"the Hub dataset {name}")
    from datasets import config as ds_config

    saved = ds_config.HF_HUB_OFFLINE
    ds_config.HF_HUB_OFFLINE = True  # the local cache only: ce-inspect never downloads data
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a dataset it cannot find offline
        raise InputError(
            f"{name}: no such file, and not a Hub dataset in the local cache ({' '.join(str(exc).split())[:160]})"
        ) from None
    finally:
        ds_config.HF_HUB_OFFLINE = saved
    yield from _arrow_dataset_rows(_pick_split(ds, split if not hasattr(ds, "column_names") else None, name))


def read_objects(path: str | os.PathLike[str], kind: str, split: str | None) -> Iterator[tuple[int, Any, str | None]]:
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
) -> Iterator[Record]:
    """Every record of a data set, in order, streamed; a record that is not an example carries ``error``.

    ``format`` (one of ``FORMATS``) forces how every record is read; None detects it per record.
    ``split`` picks the split of a saved or Hub dataset.
    """
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    fields = fields or Fields()
    for number, obj, error in read_objects(path, file_kind(path), split):
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
) -> DataInfo:
    """The file kind and the format of the data set (from its first valid record), for the one-line notice.

    Reads only until the first record that parses; raises for a file that cannot be opened at all, and for
    an input that can be read only once (stdin, a pipe, a FIFO: ``files.is_stream``), since every reader of
    a data set reads it again after this: ``files.spooled_input`` copies such an input to a file first.
    """
    from ce_inspect.files import is_stream

    if is_stream(path):
        raise InputError(
            f"{path}: can be read only once (stdin, a pipe or a FIFO), and a data set is read more than once; "
            "copy it to a file first (`files.spooled_input` does)"
        )
    kind = file_kind(path)
    detected = format
    if detected is None:
        for record in read_records(path, fields, split=split):
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
    )


# --- records -> training examples -----------------------------------------------------------------------


def encode_record(lm: LoadedModel, record: Record, layout: Layout) -> Encoded:
    """The one dispatch from a record to a training example, for every format.

    Pairs go through ``encoding.encode``, the function ``run`` uses, so every layout option means the same;
    conversations through ``encoding.encode_messages``; ``layout.tokenization == "trl"`` applies TRL's rule to
    every text format; tokenized records are scored exactly as given.
    """
    from ce_inspect.text import encode, encode_trl, encode_trl_language_modeling

    if record.error is not None:
        raise InputError(record.error)
    tokenizer, context = lm.tokenizer, lm.context_length
    trl = layout.tokenization == "trl"
    if record.input_ids is not None:
        assert record.labels is not None
        return encode_tokenized(
            record.input_ids,
            record.labels,
            vocab_size=vocab_size(lm),
            ignore_index=layout.ignore_index,
            max_length=context,
            attention_mask=record.attention_mask,
            labels_from=record.labels_from or "labels",
        )
    if record.text is not None:
        encoded = _encode_text_record(lm, record.text, layout)
        windows = encoded.layout.get("windows")
        if windows:
            from ce_inspect.text import window_plan

            window_plan(len(encoded), windows["window"], windows["stride"])  # a stride the window cannot take fails now
        return encoded
    if record.prompt_messages is not None:
        assert record.completion_messages is not None
        if trl:
            return encode_trl(
                tokenizer,
                record.prompt_messages,
                record.completion_messages,
                ignore_index=layout.ignore_index,
                add_eos=layout.add_eos,
                mask_prompt=layout.mask_prompt,
                max_length=context,
            )
        return _encode_chat_completion(lm, record, layout)
    if record.messages is not None:
        if trl:
            return encode_trl_language_modeling(
                tokenizer, record.messages, ignore_index=layout.ignore_index, max_length=context
            )
        from ce_inspect.text import encode_messages

        return encode_messages(tokenizer, record.messages, _chat_layout(layout), max_length=context)
    assert record.prompt is not None and record.answer is not None
    return encode(tokenizer, record.prompt, record.answer, layout, max_length=context)


def encode_whole(lm: LoadedModel, record: Record, layout: Layout, command: str) -> Encoded:
    """``encode_record`` for a command that scores whole examples only, never windows (``diff``; ``audit``'s
    command line, which has no `stride`): a text longer than the context is an error whose advice is the
    command's own, not `stride`, which ``command`` does not have."""
    from dataclasses import replace

    from ce_inspect.errors import WINDOWS_REMEDY, SequenceTooLongError

    try:
        return encode_record(lm, record, replace(layout, stride=None) if layout.stride is not None else layout)
    except SequenceTooLongError as exc:
        if exc.remedy != WINDOWS_REMEDY:
            raise
        raise SequenceTooLongError(exc.problem, f"{command} scores whole examples only, not windows") from None


def _encode_text_record(lm: LoadedModel, text: str, layout: Layout) -> Encoded:
    from ce_inspect.text import encode_trl_language_modeling

    if layout.tokenization == "trl":
        return encode_trl_language_modeling(
            lm.tokenizer,
            text,
            ignore_index=layout.ignore_index,
            add_eos=layout.add_eos,
            max_length=lm.context_length,
            stride=layout.stride,
        )
    return encode_text(lm.tokenizer, text, layout, max_length=lm.context_length)


def _chat_layout(layout: Layout) -> Layout:
    from dataclasses import replace

    return replace(layout, chat=True) if not layout.chat else layout


def _encode_chat_completion(lm: LoadedModel, record: Record, layout: Layout) -> Encoded:
    """Conversational prompt-completion without TRL's rule: the chat layout, scoring the completion's turn."""
    from ce_inspect.text import encode_messages

    completion = record.completion_messages or []
    if [m["role"] for m in completion] != ["assistant"]:
        raise InputError(
            "a conversational completion of several messages (or not one assistant message) is scored only with "
            "`tokenization` trl, which trains everything after the prompt"
        )
    messages = [*(record.prompt_messages or []), *completion]
    return encode_messages(lm.tokenizer, messages, _chat_layout(layout), max_length=lm.context_length, last_turn=True)


def vocab_size(lm: LoadedModel) -> int:
    """How many token ids the model's embedding takes (ids at or past it would index out of range)."""
    embeddings = lm.model.get_input_embeddings()
    return int(embeddings.weight.shape[0])


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, layout: Layout, *, max_length: int | None) -> Encoded:
    """Language modelling: [BOS] + the text + [EOS unless `add_eos` is off], every token scored but the first."""
    from ce_inspect.errors import WINDOWS_REMEDY, SequenceTooLongError
    from ce_inspect.text import ANSWER, BOS, EOS, special_prefix

    if layout.chat or layout.sep:
        raise InputError("a `text` record has no prompt and answer: `chat` and `sep` do not apply")
    bos = special_prefix(tokenizer)
    body = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos: list[int] = []
    if layout.add_eos:
        if tokenizer.eos_token_id is None:
            raise InputError("this tokenizer has no EOS token; pass `add_eos` False to score the text without one")
        eos = [tokenizer.eos_token_id]
    ids = bos + body + eos
    if len(ids) < 2:
        raise InputError("the text is a single token with nothing before it: nothing predicts anything")
    windows = None
    if max_length is not None and len(ids) > max_length:
        if layout.stride is None:
            raise SequenceTooLongError(
                f"the text is {len(ids)} tokens but the model's context is {max_length}", WINDOWS_REMEDY
            )
        windows = {"window": max_length, "stride": layout.stride}
    segments = [BOS] * len(bos) + [ANSWER] * len(body) + [EOS] * len(eos)
    labels = [tid if j > 0 else layout.ignore_index for j, tid in enumerate(ids)]
    return Encoded(
        input_ids=tuple(ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=layout.ignore_index,
        layout={
            "kind": "text",
            "bos": bool(bos),
            "eos": layout.add_eos,
            "text_tokens": len(body),
            **({"windows": windows} if windows else {}),
        },
    )


def encode_tokenized(
    input_ids: tuple[int, ...] | list[int],
    labels: tuple[int, ...] | list[int],
    *,
    vocab_size: int,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    attention_mask: tuple[int, ...] | list[int] | None = None,
    labels_from: str = "labels",
) -> Encoded:
    """Pre-tokenized ids and labels as a training example, exactly as given: the model shifts them.

    Every id must be in the vocabulary; every label an id or ``ignore_index``. A label that differs from the
    id at its position is the target there, as in training (the note counts them: labels shifted by hand are
    shifted again by the model).
    """
    from ce_inspect.errors import SequenceTooLongError
    from ce_inspect.text import ANSWER, PROMPT

    if len(labels) != len(input_ids):
        raise InputError(f"{labels_from!r} has {len(labels)} items but 'input_ids' has {len(input_ids)}")
    for k, tid in enumerate(input_ids):
        if not 0 <= tid < vocab_size:
            raise InputError(f"'input_ids' item {k} is {tid}, outside the model's vocabulary of {vocab_size} ids")
    for k, label in enumerate(labels):
        if label != ignore_index and not 0 <= label < vocab_size:
            raise InputError(
                f"{labels_from!r} item {k} is {label}: neither a token id of the model's vocabulary of {vocab_size} "
                f"nor the ignore index {ignore_index} (`ignore_index`)"
            )
    if attention_mask is not None and 0 in attention_mask:
        raise InputError(
            f"'attention_mask' is 0 at {attention_mask.count(0)} positions: the record is padded; give unpadded records"
        )
    if max_length is not None and len(input_ids) > max_length:
        from ce_inspect.errors import SequenceTooLongError

        raise SequenceTooLongError(f"the record is {len(input_ids)} tokens but the model's context is {max_length}")
    notes: list[str] = []
    trained = [k for k in range(1, len(labels)) if labels[k] != ignore_index]
    differ = [k for k in trained if labels[k] != input_ids[k]]
    if differ:
        notes.append(
            f"{len(differ)} of {len(trained)} trained labels differ from the input id at their position (first at "
            f"{differ[0]}); they are the targets, as in training. Labels already shifted by one are shifted again by "
            "the model"
        )
    if labels and labels[0] != ignore_index:
        notes.append("the label at position 0 is not ignored, but nothing predicts the first token; the shift drops it")
    segments = [ANSWER if label != ignore_index else PROMPT for label in labels]
    return Encoded(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        notes=tuple(notes),
        layout={"kind": "tokenized", "labels_from": labels_from, "trained": len(trained)},
    )


__all__ = [
    "FILE_KINDS",
    "FORMATS",
    "MASK_FIELDS",
    "SHAREGPT_ROLES",
    "DataInfo",
    "Fields",
    "Record",
    "detect_format",
    "encode_record",
    "encode_text",
    "encode_whole",
    "encode_tokenized",
    "file_kind",
    "open_data",
    "parse_record",
    "read_records",
    "sharegpt_messages",
    "vocab_size",
]
