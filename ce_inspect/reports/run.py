"""The run report: its context, from ``ScoreResult.to_dict()``, and its HTML and Markdown."""

from __future__ import annotations

from typing import Any

from ce_inspect.display import fmt, printable, sparkline
from ce_inspect.reports.environment import fence, html_environment, markdown_environment
from ce_inspect.reports.pieces import TARGET_SEGMENTS, legend, script_json, strip_lines, token_rows, version_rows


def _run_summary_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, shown value, JSON field) of the run summary, the rows the terminal shows."""
    rows = [
        ("mean loss", fmt(s["mean"]), "summary.mean"),
        ("sum", fmt(s["sum"]), "summary.sum"),
        ("scored tokens", str(s["count"]), "summary.count"),
        (
            "perplexity",
            fmt(s["perplexity"], 3) if s["perplexity"] is not None else "overflow",
            "summary.perplexity",
        ),
    ]
    if s.get("sum_logprob") is not None:
        rows.append(("log-likelihood", fmt(s["sum_logprob"]), "summary.sum_logprob"))
    rows.append(("greedy hits", str(s["greedy_hits"]), "summary.greedy_hits"))
    if s["label_smoothing"]:
        rows.append(("label smoothing", str(s["label_smoothing"]), "summary.label_smoothing"))
        rows.append(("mean NLL without it", fmt(s["mean_nll"]), "summary.mean_nll"))
    if s.get("model_loss") is not None:
        rows.append(("model's own loss", fmt(s["model_loss"], 6), "summary.model_loss"))
        rows.append(("|diff|", f"{s['verify_abs_diff']:.2e}", "summary.verify_abs_diff"))
    return rows


def run_context(doc: dict[str, Any], command: str) -> dict[str, Any]:
    """What the run templates show, all derived from ``doc`` (a ``ScoreResult.to_dict()``)."""
    layout = doc.get("layout") or {}
    tokens = doc["tokens"]
    losses = [t["loss"] for t in tokens]
    worst = max(range(len(tokens)), key=lambda k: losses[k]) if tokens else None
    by_part = any(t["segment"] not in TARGET_SEGMENTS for t in tokens)
    return {
        "doc": doc,
        "command": printable(command),
        "model": printable(doc["model"]),
        "device": doc["device"],
        "dtype": doc["dtype"],
        "versions": version_rows(doc),
        "strip": strip_lines(doc),
        "rows": token_rows(doc),
        "by_turn": layout.get("kind") == "chat",
        "by_part": by_part,
        "top_k": max((len(t.get("top_k", [])) for t in tokens), default=0),
        "summary": _run_summary_rows(doc["summary"]),
        "turns": [
            {
                "field": f"turns.{k}",
                "label": f"{t['turn']} {t['role']}" if t["turn"] is not None else t["role"],
                "count": t["count"],
                "mean": fmt(t["mean"]),
                "sum": fmt(t["sum"]),
                "greedy_hits": t["greedy_hits"],
            }
            for k, t in enumerate(doc.get("turns") or [])
        ],
        "notes": [printable(n) for n in doc.get("notes", [])],
        "spark": sparkline(losses, 120),
        "spark_top": fmt(max(losses)) if losses else None,
        "spark_worst": f"tokens.{worst}" if worst is not None else None,
        "legend": legend(),
        "data": script_json(doc),
    }


def run_html(doc: dict[str, Any], command: str) -> str:
    return html_environment().get_template("run.html.j2").render(run_context(doc, command))


def run_markdown(doc: dict[str, Any], command: str) -> str:
    return markdown_environment().get_template("run.md.j2").render(run_context(doc, command), fence=fence(command))
