"""The audit report: each check's row and failing examples, its context (``AuditReport.to_dict()``), and its
HTML and Markdown.
"""

from __future__ import annotations

from typing import Any

from ce_inspect.display import fmt, loss_bin, printable, shown_token
from ce_inspect.reports.environment import fence, html_environment, markdown_environment
from ce_inspect.reports.pieces import legend, script_json, shown_id, skipped_rows, stderr_row, version_rows

#: Failing records listed by line in a check's row (the JSON document lists them all).
AUDIT_RECORDS_SHOWN = 20


def _audit_token(tok: dict[str, Any], field: str) -> dict[str, Any]:
    classes = ["t"]
    if tok["offending"]:
        classes.append("offending")
    elif tok["trained"]:
        classes.append(f"b{loss_bin(tok['loss'])}" if tok.get("loss") is not None else "trained")
    else:
        classes.append("masked")
    if tok["special"]:
        classes.append("special")
    tip = f"#{tok['index']} {shown_token(tok['token'], tok['special'])}  id {tok['token_id']}\nlabel {tok['label']}"
    tip += "  trained" if tok["trained"] else "  not trained"
    if tok["offending"]:
        tip += "  OFFENDING"
    if tok.get("loss") is not None:
        tip += f"\nloss {fmt(tok['loss'])}"
    return {"text": shown_token(tok["token"], tok["special"]), "cls": " ".join(classes), "tip": tip, "field": field}


def _audit_check(c: dict[str, Any], field: str, fail_on: list[str]) -> dict[str, Any]:
    """One check's row: its counts, whether it gates the exit, and its first failing records by line."""
    shown = c["records"][:AUDIT_RECORDS_SHOWN]
    return {
        "field": field,
        "name": c["name"],
        "ran": c["ran"],
        "checked": c["checked"],
        "failed": c["failed"],
        "gate": c["name"] in fail_on,
        "records": [
            {"field": f"{field}.records.{j}", "line": r["line"], "id": shown_id(r["id"])} for j, r in enumerate(shown)
        ],
        "more": len(c["records"]) - len(shown),
        "description": printable(c["description"]) if c["failed"] else "",
        "note": printable(c.get("note", "")),
    }


def _audit_examples(c: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """One check's failing examples, each with its message and its tokens around the offending positions."""
    examples = []
    for j, e in enumerate(c["examples"]):
        ef = f"{field}.examples.{j}"
        examples.append(
            {
                "field": ef,
                "check": c["name"],
                "line": e["line"],
                "id": shown_id(e["id"]),
                "message": printable(e["message"]),
                "mean_loss": fmt(e["mean_loss"]) if e.get("mean_loss") is not None else None,
                "tokens": [_audit_token(t, f"{ef}.tokens.{i}") for i, t in enumerate(e["tokens"])],
            }
        )
    return examples


def _audit_loss_rows(loss: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """The loss figures of the audit's forward pass (none when it did not run), with their JSON fields."""
    if loss is None:
        return []
    rows = [("records scored", str(loss["examples"]), "loss.examples")]
    rows.append(("trained tokens", str(loss["scored_tokens"]), "loss.scored_tokens"))
    for label, key in (
        ("token-weighted mean loss", "token_weighted_mean_loss"),
        ("example-weighted mean loss", "example_weighted_mean_loss"),
    ):
        if loss.get(key) is not None:
            rows.append((label, fmt(loss[key]), f"loss.{key}"))
            rows += stderr_row(loss, key, "loss.")
    if loss.get("bits_per_byte") is not None:
        rows.append(("bits per byte", fmt(loss["bits_per_byte"]), "loss.bits_per_byte"))
    return rows


def audit_context(doc: dict[str, Any], command: str) -> dict[str, Any]:
    """What the audit templates show, from ``doc`` (an ``AuditReport.to_dict()``): the checks, then the first
    failing records of each with their tokens around the offending positions."""
    checks, examples = [], []
    for k, c in enumerate(doc["checks"]):
        field = f"checks.{k}"
        checks.append(_audit_check(c, field, doc["fail_on"]))
        examples.extend(_audit_examples(c, field))
    loss = _audit_loss_rows(doc.get("loss"))
    return {
        "command": printable(command),
        "input": printable(doc["input"]),
        "model": printable(doc["model"]) if doc.get("model") is not None else None,
        "tokenizer": printable(doc["tokenizer"]),
        "versions": version_rows(doc),
        "records": doc["records"],
        "max_length": doc.get("max_length"),
        "checks": checks,
        "examples": examples,
        "loss": loss,
        "skipped": skipped_rows(doc["skipped"]),
        "gate_failed": doc["gate_failed"],
        "failed_checks": doc["failed_checks"],
        "legend": legend(),
        "data": script_json(doc),
    }


def audit_html(doc: dict[str, Any], command: str) -> str:
    return html_environment().get_template("audit.html.j2").render(audit_context(doc, command))


def audit_markdown(doc: dict[str, Any], command: str) -> str:
    return markdown_environment().get_template("audit.md.j2").render(audit_context(doc, command), fence=fence(command))
