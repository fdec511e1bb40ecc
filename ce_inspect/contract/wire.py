"""The wire machinery every document shares: ``SCHEMA_VERSION``, the one JSON encoder (``dumps``) and
``conform``, which checks a parsed document against its TypedDict.
"""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import json
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    from typing import NotRequired as NotRequired
    from typing import TypedDict as TypedDict
    from typing import get_type_hints, is_typeddict
else:  # typing's TypedDict on 3.10 does not know NotRequired
    from typing_extensions import NotRequired as NotRequired
    from typing_extensions import TypedDict as TypedDict
    from typing_extensions import get_type_hints, is_typeddict

SCHEMA_VERSION = 1


# --- reading documents back -----------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def conform(tp: Any, value: Any, where: str = "document") -> None:
    """Raise ``ValueError`` unless ``value`` (parsed JSON) is of type ``tp``, objects holding exactly their keys."""
    origin = get_origin(tp)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, not {_json_type(value)}")
        hints = get_type_hints(tp)
        missing = sorted(tp.__required_keys__ - value.keys())
        if missing:
            raise ValueError(f"{where}: missing {missing[0]!r}")
        extra = sorted(value.keys() - hints.keys())
        if extra:
            raise ValueError(f"{where}: unexpected key {extra[0]!r}")
        for key, item in value.items():
            conform(hints[key], item, f"{where}.{key}")
    elif origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected an array, not {_json_type(value)}")
        for k, item in enumerate(value):
            conform(get_args(tp)[0], item, f"{where}[{k}]")
    elif origin is dict:  # an open object (``dict[str, Any]``): its keys are not part of the contract
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, not {_json_type(value)}")
    elif origin is Union or origin is types.UnionType:
        errors = []
        for option in get_args(tp):
            try:
                return conform(option, value, where)
            except ValueError as exc:
                if option is not type(None):
                    errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: none of its forms fits ({'; '.join(errors)})")
    elif origin is Literal:
        if not any(value == v and type(value) is type(v) for v in get_args(tp)):
            raise ValueError(f"{where}: expected one of {list(get_args(tp))}, not {value!r}")
    elif tp is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, not {_json_type(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, not {_json_type(value)}")
    elif tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {_json_type(tp())}, not {_json_type(value)}")
    else:  # pragma: no cover - a type the wire format does not use
        raise TypeError(f"{where}: cannot check values of type {tp!r}")


def dumps(obj: Any, indent: int | None = None) -> str:
    """The one JSON encoder: UTF-8 text as is, and no NaN/Infinity (they are not JSON)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent)


def as_read_back(obj: Any) -> Any:
    """``obj`` as it reads back from an output line (tuples become lists), to compare with what a line holds."""
    return json.loads(dumps(obj))
