"""The notebook views: each result's ``_repr_html_`` fragment, from the same contexts as its HTML report (the
strip and the summary; for a data set, its summary and worst examples). ``register`` hands them to
``ce_inspect.notebook``, which the result types use; ``ce_inspect`` calls it on import.
"""

from __future__ import annotations

from typing import Any

from ce_inspect.display import loss_css, printable
from ce_inspect.notebook import register_html
from ce_inspect.reports.audit import audit_context
from ce_inspect.reports.batch import batch_context
from ce_inspect.reports.diff import diff_context, diff_dataset_context
from ce_inspect.reports.environment import html_environment
from ce_inspect.reports.lines import BatchLines
from ce_inspect.reports.run import run_context

SCOPE = ".ce-nb"


def fragment(**context: Any) -> str:
    env = html_environment()
    env.globals["LOSS_CSS_NB"] = loss_css(SCOPE).split("\n")[0]  # the cells; the SVG bars are not drawn here
    defaults = {"strip": None, "legend": [], "legend_title": "", "masked": False, "rows": [], "table": None}
    return env.get_template("notebook.html.j2").render({**defaults, **context})


def run_view(doc: dict[str, Any]) -> str:
    c = run_context(doc, "")
    return fragment(
        title="ce-inspect run", subtitle=f"{c['model']} · {c['device']} · {c['dtype']}", strip=c["strip"],
        legend=c["legend"], legend_title="loss (nats):", masked=True, rows=c["summary"], notes=c["notes"],
    )  # fmt: skip


def diff_view(doc: dict[str, Any]) -> str:
    c = diff_context(doc, "")
    models = " vs ".join(s["model"] for s in c["sides"])
    return fragment(
        title="ce-inspect diff", subtitle=models, strip=[{"label": None, "tokens": c["strip"]}],
        legend=c["legend"], legend_title="KL(ref‖cand), nats:", rows=c["summary"], notes=c["notes"],
    )  # fmt: skip


def _worst_table(rows: list[dict[str, Any]], head: list[str], keys: list[str]) -> dict[str, Any] | None:
    return {"head": head, "rows": [[r[k] for k in keys] for r in rows]} if rows else None


def batch_view(doc: dict[str, Any]) -> str:
    c = batch_context(doc, BatchLines(0), "")
    table = _worst_table(c["worst"], ["line", "id", "mean loss", "tokens"], ["line", "id", "mean", "count"])
    return fragment(
        title="ce-inspect batch", subtitle=f"{printable(doc['input'])} · {printable(doc['model'])}",
        rows=c["rows"], table=table, notes=[printable(n) for n in doc.get("notes", [])],
    )  # fmt: skip


def diff_dataset_view(doc: dict[str, Any]) -> str:
    c = diff_dataset_context(doc, "")
    rows = [("examples", str(c["examples"]), "examples"), ("skipped", str(c["skipped_count"]), "skipped_count")]
    worst = c["worst"][0]["rows"] if c["worst"] else []
    table = _worst_table(worst, ["line", "id", "tokens", "mean KL"], ["line", "id", "count", "kl_mean"])
    return fragment(
        title="ce-inspect diff", subtitle=f"{c['input']} · " + " vs ".join(s["model"] for s in c["sides"]),
        rows=rows + c["summary"], table=table, notes=c["notes"],
    )  # fmt: skip


def audit_view(doc: dict[str, Any]) -> str:
    c = audit_context(doc, "")
    checks = [
        [k["name"], "not run" if not k["ran"] else ("✗ failed" if k["failed"] else "✓ pass"), k["checked"], k["failed"]]
        for k in c["checks"]
    ]
    verdict = "FAIL: " + ", ".join(c["gate_failed"]) if c["gate_failed"] else "pass"
    return fragment(
        title="ce-inspect audit", subtitle=f"{c['input']} · {c['records']} records · {verdict}",
        table={"head": ["check", "result", "checked", "failed"], "rows": checks},
    )  # fmt: skip


def register() -> None:
    for view, render in (
        ("run", run_view),
        ("diff", diff_view),
        ("batch_summary", batch_view),
        ("diff_summary", diff_dataset_view),
        ("audit", audit_view),
    ):
        register_html(view, render)


__all__ = ["register"]
