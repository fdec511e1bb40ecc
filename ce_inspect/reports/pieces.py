"""What every report shares: the report mark, the heat strip and the token rows (each figure with the JSON
field it shows), the loss legend, shown ids and skipped lines, and JSON for a ``<script>`` element.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ce_inspect.display import LOSS_SCALE, fmt, loss_bin, printable, prob_text, shown_token

#: The first bytes of every report ce-inspect writes (HTML, SVG, Markdown): how ``files.check_output``
#: recognises a report it may replace.
REPORT_MARK = re.compile(rb"\A(<!DOCTYPE html>\s*)?<!-- ce-inspect report")
#: ``REPORT_MARK`` in the words of a refusal.
REPORT_MARK_TEXT = (
    "<!-- ce-inspect report: KIND -->, the comment every ce-inspect report opens with, after <!DOCTYPE html> in HTML"
)
#: Segments that a masked layout trains on; the others are context (as ``cli/render.py``).
TARGET_SEGMENTS = frozenset({"answer", "eos", "assistant", "eot"})


def _tooltip(seq: dict[str, Any], tok: dict[str, Any] | None) -> str:
    head = f"#{seq['index']} {shown_token(seq['token'], seq.get('special', False), seq.get('bytes'))}"
    head += f"  id {seq['token_id']}"
    if tok is None:
        return f"{head}\nmasked: not scored"
    lines = [
        head,
        f"prob {fmt(tok['prob'])}  loss {fmt(tok['loss'])}  rank {tok['rank']}",
    ]
    if tok.get("top_k"):
        lines.append("top-k:")
        lines += [f"  {shown_token(a['token'], raw=a.get('bytes'))}  {fmt(a['prob'])}" for a in tok["top_k"]]
    elif tok["rank"] != 1:
        lines.append(f"top choice: {shown_token(tok['top_token'], raw=tok.get('top_bytes'))}  {fmt(tok['top_prob'])}")
    return "\n".join(lines)


def strip_lines(doc: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """The heat strip as lines of tokens, as the terminal draws it: masked tokens dim, scored ones on a
    background by loss bin, a new line after a newline token and at each chat message.

    Lines written with ``--no-sequence`` hold no masked tokens: the strip then shows the scored ones.
    """
    tokens = {t["index"]: t for t in doc["tokens"]}
    sequence = doc.get("sequence")
    if sequence is None:
        sequence = [dict(t, scored=True) for t in doc["tokens"]]
    layout = doc.get("layout") or {}
    roles = layout.get("roles") if layout.get("kind") == "chat" else None
    special_ids = {t["token_id"] for t in doc["tokens"] if t.get("special")}
    context_scored = any(s["scored"] and s["segment"] not in TARGET_SEGMENTS for s in sequence)
    row_of = {t["index"]: k for k, t in enumerate(doc["tokens"])}
    lines: list[dict[str, Any]] = [{"label": None, "tokens": []}]
    previous_turn: object = object()
    previous_target: bool | None = None
    for s in sequence:
        if roles is not None and s.get("turn") != previous_turn:
            turn = s.get("turn")
            role = roles[turn] if turn is not None and turn < len(roles) else "template"
            lines.append({"label": f"{turn} {role}" if turn is not None else role, "tokens": []})
            previous_turn = turn
        is_target = s["segment"] in TARGET_SEGMENTS
        boundary = context_scored and previous_target is not None and is_target != previous_target
        previous_target = is_target
        special = bool(s.get("special")) or s["token_id"] in special_ids
        tok = tokens.get(s["index"]) if s["scored"] else None
        classes = ["t"]
        if tok is None:
            classes.append("masked")
        else:
            classes.append(f"b{loss_bin(tok['loss'])}")
            if context_scored and not is_target:
                classes.append("ctx")
        if special:
            classes.append("special")
        lines[-1]["tokens"].append(
            {
                "text": shown_token(s["token"], special, s.get("bytes")),
                "cls": " ".join(classes),
                "tip": _tooltip(s, tok),
                "boundary": boundary,
                "field": f"{prefix}tokens.{row_of[s['index']]}" if tok is not None else None,
            }
        )
        if s["token"].endswith("\n"):
            lines.append({"label": None, "tokens": []})
    return [line for line in lines if line["tokens"] or line["label"]]


def token_rows(doc: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """One row per scored token, the terminal table's columns, each figure with the JSON field it shows."""
    rows = []
    for k, t in enumerate(doc["tokens"]):
        field = f"{prefix}tokens.{k}"
        rows.append(
            {
                "field": field,
                "index": t["index"],
                "turn": "-" if t.get("turn") is None else str(t["turn"]),
                "segment": t["segment"],
                "token": shown_token(t["token"], t.get("special", False), t.get("bytes")),
                "special": t.get("special", False),
                "token_id": t["token_id"],
                "prob": fmt(t["prob"]),
                "loss": fmt(t["loss"]),
                "rank": t["rank"],
                "greedy": t["rank"] == 1,
                "bin": loss_bin(t["loss"]),
                "top_choice": shown_token(t["top_token"], raw=t.get("top_bytes")),
                "top_prob": prob_text(t["top_prob"]),
                "top_k": [
                    {
                        "token": shown_token(a["token"], raw=a.get("bytes")),
                        "prob": prob_text(a["prob"]),
                        "target": a["token_id"] == t["token_id"],
                    }
                    for a in t.get("top_k", [])
                ],
            }
        )
    return rows


def legend() -> list[dict[str, str]]:
    return [{"cls": f"b{k}", "label": label} for k, (label, _, _) in enumerate(LOSS_SCALE)]


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped (no ``</script>`` or ``<!--``
    can end it), and every non-ASCII character as ``\\uXXXX`` (U+2028/2029, right-to-left marks)."""
    import json

    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def complete_lines(path: str | os.PathLike[str], size: int) -> list[dict[str, Any]]:
    """The complete JSON lines in the first ``size`` bytes of an output file (what ``--resume`` keeps)."""
    import json

    with open(path, "rb") as fh:
        data = fh.read(size)
    return [json.loads(raw) for raw in data.splitlines() if raw.strip()]


def shown_id(rid: str | int | None) -> str:
    return "" if rid is None else printable(str(rid))


def skipped_rows(skipped: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The skipped lines as a report lists them: line, shown id and printable reason."""
    return [{"line": k["line"], "id": shown_id(k["id"]), "reason": printable(k["reason"])} for k in skipped]


def stderr_row(d: dict[str, Any], key: str, prefix: str = "") -> list[tuple[str, str, str]]:
    """The ± row under the figure ``key`` of ``d`` when it has a standard error (its own field, ``key_stderr``)."""
    stderr = d.get(f"{key}_stderr")
    return [("± standard error", fmt(stderr), f"{prefix}{key}_stderr")] if stderr is not None else []


#: The ``versions`` keys a report shows, with their labels (``contract.VersionsDict``).
VERSION_LABELS = (
    ("ce_inspect", "ce-inspect"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("python", "Python"),
    ("device", "device"),
)


def version_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, shown value, JSON field) of what produced ``doc``: its ``versions``, where the model is shown."""
    return [(label, printable(doc["versions"][key]), f"versions.{key}") for key, label in VERSION_LABELS]
