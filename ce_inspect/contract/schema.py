"""JSON Schema (draft 2020-12) of ce-inspect's output, generated from the contract's TypedDicts.

``python -m ce_inspect.contract.schema`` writes the files under ``schema/``; ``--check`` only compares them with
what the types give now (exit 1 when they differ). The committed files are what consumers in other
languages validate against; tests/test_contract.py keeps them equal to the types.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from ce_inspect.contract.audit import AuditDict, AuditRecordLineDict
from ce_inspect.contract.batch import BatchLineDict, BatchSummaryDict
from ce_inspect.contract.choices import ChoicesLineDict, ChoicesSummaryDict
from ce_inspect.contract.diff import DiffDatasetDict, DiffDict, DiffLineDict
from ce_inspect.contract.prefs import PrefsLineDict, PrefsSummaryDict
from ce_inspect.contract.run import ResultDict
from ce_inspect.contract.wire import SCHEMA_VERSION, dumps, get_type_hints, is_typeddict

DRAFT = "https://json-schema.org/draft/2020-12/schema"
FOLDER = Path(__file__).resolve().parents[2] / "schema"

#: file name -> (root type, title)
DOCUMENTS: dict[str, tuple[Any, str]] = {
    "run.schema.json": (ResultDict, "ce-inspect run --json"),
    "batch-line.schema.json": (BatchLineDict, "ce-inspect batch: one output line"),
    "batch-summary.schema.json": (BatchSummaryDict, "ce-inspect batch --summary-json"),
    "diff.schema.json": (DiffDict, "ce-inspect diff --json"),
    "choices-line.schema.json": (ChoicesLineDict, "ce-inspect choices: one output line (a question)"),
    "choices-summary.schema.json": (ChoicesSummaryDict, "ce-inspect choices --summary-json"),
    "diff-line.schema.json": (DiffLineDict, "ce-inspect diff --input: one output line"),
    "diff-summary.schema.json": (DiffDatasetDict, "ce-inspect diff --input --summary-json"),
    "audit.schema.json": (AuditDict, "ce-inspect audit --json"),
    "audit-record.schema.json": (AuditRecordLineDict, "ce-inspect audit --output: one line per record"),
    "prefs-line.schema.json": (PrefsLineDict, "ce-inspect prefs: one output line per preference pair"),
    "prefs-summary.schema.json": (PrefsSummaryDict, "ce-inspect prefs --summary-json"),
}

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def _name(tp: Any) -> str:
    return tp.__name__.lstrip("_").removesuffix("Dict")


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def node(self, tp: Any) -> dict[str, Any]:
        origin = get_origin(tp)
        if is_typeddict(tp):
            name = _name(tp)
            if name not in self.defs:
                self.defs[name] = None  # claimed before the fields, so a type that nests itself ends
                self.defs[name] = self.obj(tp)
            return {"$ref": f"#/$defs/{name}"}
        if origin is list:
            return {"type": "array", "items": self.node(get_args(tp)[0])}
        if origin is dict:  # an open object: ``dict[str, Any]``
            return {"type": "object"}
        if origin is Union or origin is types.UnionType:
            options = get_args(tp)
            if all(o in _SCALARS for o in options):
                return {"type": [_SCALARS[o] for o in options]}
            return {"anyOf": [self.node(o) for o in options]}
        if origin is Literal:
            values = list(get_args(tp))
            return {"const": values[0]} if len(values) == 1 else {"enum": values}
        if tp in _SCALARS:
            return {"type": _SCALARS[tp]}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def obj(self, tp: Any) -> dict[str, Any]:
        hints = get_type_hints(tp)
        properties = {key: self.node(hint) for key, hint in hints.items()}
        if "schema_version" in properties:  # a consumer can reject documents of another version outright
            properties["schema_version"] = {"const": SCHEMA_VERSION}
        out: dict[str, Any] = {"type": "object"}
        doc = tp.__doc__
        if doc and not doc.startswith(tp.__name__ + "("):  # TypedDict's generated docstring says nothing
            out["description"] = " ".join(doc.split())
        out.update(
            properties=properties,
            required=[key for key in hints if key in tp.__required_keys__],
            additionalProperties=False,
        )
        return out


def build(root: Any, title: str) -> dict[str, Any]:
    """The schema of documents of type ``root``: every object closed, every required key listed."""
    builder = _Builder()
    ref = builder.node(root)
    return {
        "$schema": DRAFT,
        "title": f"{title} (schema_version {SCHEMA_VERSION})",
        "$ref": ref["$ref"],
        "$defs": dict(sorted(builder.defs.items())),
    }


def render(root: Any, title: str) -> str:
    return dumps(build(root, title), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    folder = Path(next((a for a in args if not a.startswith("-")), FOLDER))
    stale = []
    for name, (root, title) in DOCUMENTS.items():
        path, text = folder / name, render(root, title)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run `python -m ce_inspect.contract.schema`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
