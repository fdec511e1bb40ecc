"""Data sets: files (JSONL, JSON, Parquet, saved and Hub datasets) and record formats -> ``Record`` -> ``Encoded``."""

from ce_inspect.data.examples import encode_record, encode_text, encode_tokenized, encode_whole, vocab_size
from ce_inspect.data.formats import (
    FORMATS,
    MASK_FIELDS,
    SHAREGPT_ROLES,
    Fields,
    Record,
    detect_format,
    parse_record,
    sharegpt_messages,
)
from ce_inspect.data.readers import (
    FILE_KINDS,
    JSONL_SUFFIXES,
    MAX_JSON_ELEMENT_BYTES,
    DataInfo,
    check_limit,
    file_kind,
    open_data,
    read_objects,
    read_records,
)

__all__ = [
    "DataInfo",
    "FILE_KINDS",
    "FORMATS",
    "Fields",
    "JSONL_SUFFIXES",
    "MASK_FIELDS",
    "MAX_JSON_ELEMENT_BYTES",
    "Record",
    "SHAREGPT_ROLES",
    "check_limit",
    "detect_format",
    "encode_record",
    "encode_text",
    "encode_tokenized",
    "encode_whole",
    "file_kind",
    "open_data",
    "parse_record",
    "read_objects",
    "read_records",
    "sharegpt_messages",
    "vocab_size",
]
