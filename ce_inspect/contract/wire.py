"""The wire machinery every document shares: ``SCHEMA_VERSION``, the one JSON encoder (``dumps``),
``conform``, which checks a parsed document against its TypedDict, and ``WireObject``, which derives a
dataclass's ``to_dict``/``from_dict`` from its TypedDict.
"""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import dataclasses
import json
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

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


# --- objects whose wire format is a TypedDict -----------------------------------------------------------

D = TypeVar("D")  # the TypedDict of a WireObject
W = TypeVar("W", bound="WireObject[Any]")
Convert = Callable[[Any], Any]

#: ``field(metadata=NOT_ON_WIRE)``: a dataclass field that is not in the wire format (``Summary.per_token``).
NOT_ON_WIRE: Mapping[str, bool] = types.MappingProxyType({"wire": False})


class WireObject(Generic[D]):
    """A dataclass whose wire format is the TypedDict ``D``: ``class TokenScore(WireObject[TokenDict])``.

    ``D`` declares the keys, once; ``to_dict`` and ``from_dict`` follow it. Each key is the attribute of that
    name, a dataclass field or a figure derived from them (a property, a ``ClassVar``), unless ``wire_names``
    maps the key to another attribute; a dataclass field that is not a key is marked ``NOT_ON_WIRE``.
    ``to_dict`` writes the required keys in ``D``'s order, then the ``NotRequired`` ones in ``D``'s order,
    each left out when its value is None (an empty tuple, for a tuple field). A field's value converts by its
    type: a WireObject, or a tuple of them, to their dicts (so does another class with a ``to_dict`` of its own,
    such as the hand-written ``DiffSummary``); another tuple to a list; a dict to a copy; an
    ``X | None`` as an ``X`` unless it is None, but a ``dict | None`` as it is (audit's optional details: not
    copied, so a per-record ``Finding.to_dict`` stays as fast as by hand). A derived figure (a property, a
    ``ClassVar``) is written as it is. ``from_dict`` reads back the dataclass fields ``d`` holds, converted the
    other way; derived keys are not read, so an object with a ``NOT_ON_WIRE`` field that has no default
    (``ExampleStats``) cannot be read back this way.
    """

    wire_type: ClassVar[Any]  # D, set for each subclass
    wire_names: ClassVar[Mapping[str, str]] = {}  # key -> attribute, where they differ

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is WireObject:
                cls.wire_type = get_args(base)[0]
        if "to_dict" not in cls.__dict__:  # its own, compiled on first use (not a parent's, compiled for the parent)
            cls.to_dict = WireObject.to_dict  # type: ignore[method-assign]

    def to_dict(self) -> D:
        cls = type(self)
        encode = _ENCODERS.get(cls)
        if encode is None:
            encode = _ENCODERS[cls] = _compile_encoder(cls)
            if cls.__dict__["to_dict"] is WireObject.to_dict:  # from now on, called directly
                cls.to_dict = encode  # type: ignore[method-assign]
        return encode(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[W], d: Any) -> W:
        return cls(**cls.fields_from_dict(d))

    @classmethod
    def fields_from_dict(cls, d: Any) -> dict[str, Any]:
        """The dataclass fields ``d`` holds, as keyword arguments of the constructor."""
        readers = _READERS.get(cls)
        if readers is None:
            readers = _READERS[cls] = _readers(cls)
        fields = {}
        for key, name, convert in readers:
            if key in d:
                fields[name] = d[key] if convert is None else convert(d[key])
        return fields


_ENCODERS: dict[type, Callable[[Any], Any]] = {}
_READERS: dict[type, tuple[tuple[str, str, Convert | None], ...]] = {}  # (key, field, conversion)


def wire_fields(cls: Any) -> dict[str, Any]:
    """The dataclass fields of ``cls`` that are on the wire, with their types (``TypeError`` for a field that
    is neither a key of its TypedDict nor marked ``NOT_ON_WIRE``)."""
    attrs = {cls.wire_names.get(key, key) for key in get_type_hints(cls.wire_type)}
    hints = get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("wire", True):
            if f.name not in attrs:
                raise TypeError(f"{cls.__name__}.{f.name} is not a key of {cls.wire_type.__name__} (NOT_ON_WIRE?)")
            fields[f.name] = hints[f.name]
    return fields


def wire_attributes(cls: Any) -> dict[str, str]:
    """Each key of ``cls``'s TypedDict -> the attribute it is read from (``TypeError`` when there is none)."""
    fields = wire_fields(cls)
    attrs = {key: cls.wire_names.get(key, key) for key in get_type_hints(cls.wire_type)}
    for key, attr in attrs.items():
        if not attr.isidentifier() or (attr not in fields and not hasattr(cls, attr)):
            raise TypeError(f"{cls.__name__}: no attribute {attr!r} for the key {key!r} of {cls.wire_type.__name__}")
    return attrs


def _compile_encoder(cls: Any) -> Callable[[Any], Any]:
    """``cls``'s ``to_dict``, written out from its TypedDict the way one writes it by hand (as dataclasses writes
    ``__init__``), so it runs as fast: a dict display of the required keys, then one ``if`` per NotRequired key::

        def to_dict(self):
            d = {'token_id': self.token_id, 'token': self.token, 'prob': self.prob}
            v = self.bytes
            if v is not None:
                d['bytes'] = v
            return d
    """
    wire, fields = cls.wire_type, wire_fields(cls)
    required, optional = [], []
    for key, attr in wire_attributes(cls).items():
        tp = fields.get(attr)
        if key in wire.__required_keys__:
            required.append(f"{key!r}: {_encoding(f'self.{attr}', tp)}")
        else:
            # A tuple is left out when empty; so is a derived tuple (a property: ``tp`` None), written as a list.
            test = "v != ()" if get_origin(tp) is tuple else "v is not None and v != ()"
            encoded = "(list(v) if type(v) is tuple else v)" if tp is None else _encoding("v", tp, present=True)
            optional += [f"    v = self.{attr}", f"    if {test}:", f"        d[{key!r}] = {encoded}"]
    source = "\n".join(["def to_dict(self):", f"    d = {{{', '.join(required)}}}", *optional, "    return d"])
    namespace: dict[str, Any] = {}
    exec(source, {}, namespace)  # the source is built from identifiers and key reprs only
    encode: Callable[[Any], Any] = namespace["to_dict"]
    encode.__qualname__ = f"{cls.__qualname__}.to_dict"
    return encode


def _is_wire_object(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, WireObject)


def _has_to_dict(tp: Any) -> bool:
    """A WireObject, or a class that writes its own dict (``DiffSummary``)."""
    return isinstance(tp, type) and callable(getattr(tp, "to_dict", None))


def _optional(tp: Any) -> Any:
    """``X`` of a field type ``X | None``, else None."""
    if get_origin(tp) is Union or get_origin(tp) is types.UnionType:
        args = get_args(tp)
        if len(args) == 2 and type(None) in args:
            return args[0] if args[1] is type(None) else args[1]
    return None


def _encoding(value: str, tp: Any, present: bool = False) -> str:
    """The expression that puts ``value``, of the field type ``tp`` (None: derived), on the wire; ``present``:
    ``value`` is known not to be None."""
    inner = _optional(tp)
    if inner is not None:
        if inner is dict or get_origin(inner) is dict:  # as it is (see WireObject)
            return value
        encoded = _encoding(value, inner)
        return encoded if present or encoded == value else f"(None if {value} is None else {encoded})"
    if _has_to_dict(tp):
        return f"{value}.to_dict()"
    if get_origin(tp) is tuple:
        return f"[item.to_dict() for item in {value}]" if _has_to_dict(get_args(tp)[0]) else f"list({value})"
    if tp is dict or get_origin(tp) is dict:
        return f"dict({value})"
    return value


def _readers(cls: Any) -> tuple[tuple[str, str, Convert | None], ...]:
    fields = wire_fields(cls)
    return tuple((key, attr, _decoding(fields[attr])) for key, attr in wire_attributes(cls).items() if attr in fields)


def _decoding(tp: Any) -> Convert | None:
    """How a field of type ``tp`` comes back from JSON (None: as it is)."""
    present = _optional(tp)
    if present is not None:
        convert = _decoding(present)
        return None if convert is None else lambda value: None if value is None else convert(value)
    if _is_wire_object(tp):
        return tp.from_dict
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if _is_wire_object(item):
            return lambda values: tuple(item.from_dict(v) for v in values)
        return tuple
    if tp is dict or get_origin(tp) is dict:
        return dict
    return None
