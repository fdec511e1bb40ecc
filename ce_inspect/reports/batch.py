"""The batch report: ``BatchLines`` (what it keeps of the output lines), its figures (the example-loss
histogram, loss by position), its context, and its HTML and Markdown.
"""

from __future__ import annotations

from typing import Any

from ce_inspect.display import fmt, histogram, loss_bin, printable, shown_token, sparkline
from ce_inspect.reports.environment import fence, html_environment, markdown_environment
from ce_inspect.reports.lines import BatchLines
from ce_inspect.reports.pieces import (
    legend,
    script_json,
    shown_id,
    skipped_rows,
    stderr_row,
    strip_lines,
    token_rows,
    version_rows,
)


def _batch_summary_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        ("examples", str(s["examples"]), "examples"),
        ("scored tokens", str(s["scored_tokens"]), "scored_tokens"),
    ]
    if s.get("token_weighted_mean_loss") is not None:
        rows.append(("token-weighted mean loss", fmt(s["token_weighted_mean_loss"]), "token_weighted_mean_loss"))
        rows += stderr_row(s, "token_weighted_mean_loss")
    if s.get("example_weighted_mean_loss") is not None:
        rows.append(("example-weighted mean loss", fmt(s["example_weighted_mean_loss"]), "example_weighted_mean_loss"))
        rows += stderr_row(s, "example_weighted_mean_loss")
    rows.append(("loss sum", fmt(s["loss_sum"]), "loss_sum"))
    if s.get("mean_nll") is not None:
        ppl = fmt(s["perplexity"], 3) if s["perplexity"] is not None else "overflow"
        rows.append(("perplexity", ppl, "perplexity"))
        if s["label_smoothing"]:
            rows.append(("mean NLL", fmt(s["mean_nll"]), "mean_nll"))
            rows += stderr_row(s, "mean_nll")
        rows.append(("greedy hits", str(s["greedy_hits"]), "greedy_hits"))
    if s.get("resumed"):
        rows.append(("read back (--resume)", str(s["resumed"]), "resumed"))
    if s.get("skipped_count"):
        rows.append(("skipped lines", str(s["skipped_count"]), "skipped_count"))
    return rows


def _histogram_figure(hist: dict[str, Any], width: int = 640, height: int = 220) -> dict[str, Any]:
    """Bar geometry of the data-set histogram (SVG user units); labels keep their JSON fields."""
    edges, counts = hist["edges"], hist["counts"]
    if not counts:
        return {"bars": [], "ticks": [], "width": width, "height": height}
    left, bottom, top_pad = 40, 30, 20
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    most = max(counts) or 1
    bar_w = plot_w / len(counts)
    bars = []
    for k, n in enumerate(counts):
        h = plot_h * n / most
        mid = (edges[k] + edges[k + 1]) / 2
        bars.append(
            {
                "x": round(left + k * bar_w, 2),
                "y": round(top_pad + plot_h - h, 2),
                "w": round(max(bar_w - 2, 1), 2),
                "h": round(h, 2),
                "count": n,
                "field": f"example_loss_histogram.counts.{k}",
                "cls": f"b{loss_bin(mid)}",
                "title": f"{edges[k]:g} to {edges[k + 1]:g}: {n} examples",
            }
        )
    ticks = [
        {"x": round(left + k * bar_w, 2), "label": f"{e:g}", "field": f"example_loss_histogram.edges.{k}"}
        for k, e in enumerate(edges)
    ]
    return {"bars": bars, "ticks": ticks, "width": width, "height": height, "axis_y": top_pad + plot_h, "left": left}


def _position_figure(means: list[float], counts: list[int], width: int = 640, height: int = 220) -> dict[str, Any]:
    if not means:
        return {"points": "", "width": width, "height": height, "rows": []}
    left, bottom, top_pad = 56, 30, 20
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max(means) or 1.0
    step = plot_w / max(len(means) - 1, 1)
    points = " ".join(f"{left + k * step:.1f},{top_pad + plot_h - plot_h * m / top:.1f}" for k, m in enumerate(means))
    return {
        "points": points,
        "width": width,
        "height": height,
        "left": left,
        "axis_y": top_pad + plot_h,
        "top_y": top_pad,
        "top": fmt(top),
        "last": len(means),
        "rows": [
            {"position": k + 1, "count": n, "mean": fmt(m), "bin": loss_bin(m)}
            for k, (m, n) in enumerate(zip(means, counts))
        ],
    }


def _batch_worst_examples(summary: dict[str, Any], lines: BatchLines) -> list[dict[str, Any]]:
    """The worst examples, each with its whole line's strip and token rows when ``lines`` kept it."""
    worst = []
    for k, e in enumerate(summary["worst_examples"]):
        line = lines.line(e["line"])
        worst.append(
            {
                "field": f"worst_examples.{k}",
                "line": e["line"],
                "id": shown_id(e["id"]),
                "mean": fmt(e["mean"]),
                "sum": fmt(e["sum"]),
                "count": e["count"],
                "bin": loss_bin(e["mean"]),
                "anchor": f"line-{e['line']}" if line is not None else None,
                "strip": strip_lines(line, prefix=f"line-{e['line']}.") if line is not None else [],
                "rows": token_rows(line, prefix=f"line-{e['line']}.") if line is not None else [],
                "has_sequence": line is not None and "sequence" in line,
            }
        )
    return worst


def _histogram_rows(hist: dict[str, Any]) -> list[dict[str, Any]]:
    """The data-set histogram as text rows: bin edges, count and a bar scaled to the fullest bin."""
    return [
        {
            "lo": f"{hist['edges'][k]:g}",
            "hi": f"{hist['edges'][k + 1]:g}",
            "count": n,
            "bar": "█" * round(20 * n / max(max(hist["counts"]), 1)),
        }
        for k, n in enumerate(hist["counts"])
    ]


def _batch_worst_tokens(summary: dict[str, Any], anchors: set[int]) -> list[dict[str, Any]]:
    """The worst tokens; one links to its line's section when that line is among the worst examples shown."""
    return [
        {
            "field": f"worst_tokens.{k}",
            "line": t["line"],
            "id": shown_id(t["id"]),
            "index": t["index"],
            "token": shown_token(t["token"], t["segment"] == "eos"),
            "loss": fmt(t["loss"]),
            "prob": fmt(t["prob"]),
            "rank": t["rank"],
            "bin": loss_bin(t["loss"]),
            "anchor": f"line-{t['line']}" if t["line"] in anchors else None,
        }
        for k, t in enumerate(summary["worst_tokens"])
    ]


def batch_context(summary: dict[str, Any], lines: BatchLines, command: str) -> dict[str, Any]:
    """What the batch templates show, from the summary document and the output lines."""
    worst = _batch_worst_examples(summary, lines)
    anchors = {w["line"] for w in worst if w["anchor"]}
    hist = summary.get("example_loss_histogram") or histogram([])
    counts = lines.position_count
    return {
        "summary": summary,
        "command": printable(command),
        "model": printable(summary["model"]),
        "versions": version_rows(summary),
        "input": printable(summary["input"]),
        "output": printable(summary["output"] or "stdout"),
        "rows": _batch_summary_rows(summary),
        "histogram": _histogram_figure(hist),
        "hist_spark": sparkline(hist["counts"], 40, top=max(hist["counts"], default=0)),
        "hist_rows": _histogram_rows(hist),
        "positions": _position_figure(lines.position_means(), counts),
        "worst": worst,
        "worst_tokens": _batch_worst_tokens(summary, anchors),
        "skipped": skipped_rows(summary["skipped"]),
        "legend": legend(),
        "data": script_json(summary),
    }


def batch_html(summary: dict[str, Any], lines: BatchLines, command: str) -> str:
    return html_environment().get_template("batch.html.j2").render(batch_context(summary, lines, command))


def batch_markdown(summary: dict[str, Any], lines: BatchLines, command: str) -> str:
    context = batch_context(summary, lines, command)
    return markdown_environment().get_template("batch.md.j2").render(context, fence=fence(command))
