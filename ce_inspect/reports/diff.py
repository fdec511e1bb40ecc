"""The diff reports: the KL colour scale, the context of one diff (``DiffResult.to_dict()``) and of a
data-set diff (``DiffDatasetSummary.to_dict()``), and their HTML and Markdown.
"""

from __future__ import annotations

from typing import Any

from ce_inspect.display import fmt, printable, prob_text, shown_token
from ce_inspect.reports.environment import fence, html_environment, markdown_environment
from ce_inspect.reports.lines import BatchLines
from ce_inspect.reports.pieces import script_json, shown_id, version_rows

#: KL(ref‖cand) thresholds of the diff strip's colours (nats), as ``cli/render_diff.py``'s scale.
KL_BINS = (0.001, 0.01, 0.1)
_KL_LABELS = ("< 0.001", "0.001 to 0.01", "0.01 to 0.1", "≥ 0.1")
#: The diff summary's statistics: (label, JSON key), each shown with 6 decimals as in the terminal.
_DIFF_SUMMARY = (
    ("mean loss reference", "ref_loss_mean"),
    ("mean loss candidate", "cand_loss_mean"),
    ("mean ΔNLL (cand − ref)", "dnll_mean"),
    ("± (standard error)", "dnll_se"),
    ("mean KL(ref‖cand)", "kl_mean"),
    ("± (standard error)", "kl_se"),
    ("mean KL(cand‖ref)", "kl_reverse_mean"),
    ("KL max", "kl_max"),
    ("KL 99.9%", "kl_p999"),
    ("KL 99%", "kl_p99"),
    ("KL 95%", "kl_p95"),
    ("KL 90%", "kl_p90"),
    ("KL median", "kl_median"),
    ("KL 10%", "kl_p10"),
    ("KL 1%", "kl_p01"),
    ("KL min", "kl_min"),
    ("RMS Δp (fraction of 1)", "dp_rms"),
    ("same top-1 %", "same_top1_pct"),
)


def kl_bin(kl: float) -> int:
    return next((i for i, limit in enumerate(KL_BINS) if kl < limit), len(KL_BINS))


def _diff_summary_rows(s: dict[str, Any], prefix: str = "summary.") -> list[tuple[str, str, str]]:
    rows = [("scored tokens", str(s["count"]), f"{prefix}count")]
    rows += [(label, fmt(s[key], 6), f"{prefix}{key}") for label, key in _DIFF_SUMMARY if s.get(key) is not None]
    rows.append(("same top-1", str(s["same_top1"]), f"{prefix}same_top1"))
    return rows


def _bootstrap_rows(b: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """``--bootstrap``'s standard errors of the data set's means, as rows of the summary table."""
    if b is None:
        return []
    drawn = f"({b['resamples']} resamples of the examples, seed {b['seed']})"
    return [
        (f"mean ΔNLL ± bootstrap {drawn}", fmt(b["dnll_mean_stderr"], 6), "bootstrap.dnll_mean_stderr"),
        (f"mean KL ± bootstrap {drawn}", fmt(b["kl_mean_stderr"], 6), "bootstrap.kl_mean_stderr"),
    ]


def _diff_tooltip(t: dict[str, Any]) -> str:
    token = shown_token(t["token"], t["ref"].get("special", False), t["ref"].get("bytes"))
    lines = [f"#{t['index']} {token}  id {t['token_id']}"]
    for label, side in (("ref ", t["ref"]), ("cand", t["cand"])):
        top = shown_token(side["top_token"], raw=side.get("top_bytes"))
        lines.append(f"{label} prob {fmt(side['prob'])}  loss {fmt(side['loss'])}  rank {side['rank']}  top-1 {top}")
    lines.append(f"KL {fmt(t['kl'], 6)}  ΔNLL {fmt(t['dnll'])}")
    return "\n".join(lines)


def _diff_side(t: dict[str, Any], side: str) -> dict[str, Any]:
    s = t[side]
    return {
        "prob": fmt(s["prob"]),
        "loss": fmt(s["loss"]),
        "rank": s["rank"],
        "top": shown_token(s["top_token"], raw=s.get("top_bytes")),
        "top_prob": prob_text(s["top_prob"]),
    }


def kl_strip(tokens: list[dict[str, Any]], prefix: str | None = "") -> list[dict[str, Any]]:
    """A diff's scored tokens as strip tokens coloured by KL(ref‖cand), each with both models' figures;
    ``prefix`` None: tokens of an output line, not of the page's document (no ``data-f`` field)."""
    return [
        {
            "text": shown_token(t["token"], t["ref"].get("special", False), t["ref"].get("bytes")),
            "cls": f"t k{kl_bin(t['kl'])}",
            "tip": _diff_tooltip(t),
            "field": None if prefix is None else f"{prefix}tokens.{k}",
        }
        for k, t in enumerate(tokens)
    ]


def diff_context(doc: dict[str, Any], command: str, worst: int = 10) -> dict[str, Any]:
    """What the diff templates show, all from ``doc`` (a ``DiffResult.to_dict()``). The strip holds the scored
    tokens (the document keeps no masked context), coloured by KL; the table the ``worst`` by KL, in order."""
    tokens = doc["tokens"]
    strip = kl_strip(tokens)
    chosen = sorted(range(len(tokens)), key=lambda k: tokens[k]["kl"], reverse=True)[:worst]
    rows = [
        {
            "field": f"tokens.{k}",
            "index": tokens[k]["index"],
            "token": shown_token(
                tokens[k]["token"], tokens[k]["ref"].get("special", False), tokens[k]["ref"].get("bytes")
            ),
            "kl": fmt(tokens[k]["kl"], 6),
            "kbin": kl_bin(tokens[k]["kl"]),
            "dnll": fmt(tokens[k]["dnll"]),
            "ref": _diff_side(tokens[k], "ref"),
            "cand": _diff_side(tokens[k], "cand"),
            "same": tokens[k]["same_top1"],
        }
        for k in sorted(chosen)
    ]
    return {
        "command": printable(command),
        "sides": [
            {
                "label": label,
                "model": printable(doc[key]["model"]),
                "device": doc[key]["device"],
                "dtype": doc[key]["dtype"],
            }
            for label, key in (("reference", "reference"), ("candidate", "candidate"))
        ],
        "versions": version_rows(doc),
        "strip": strip,
        "rows": rows,
        "count": len(tokens),
        "summary": _diff_summary_rows(doc["summary"]),
        "notes": [printable(n) for n in doc.get("notes", [])],
        "legend": [{"cls": f"k{k}", "label": label} for k, label in enumerate(_KL_LABELS)],
        "data": script_json(doc),
    }


def diff_html(doc: dict[str, Any], command: str, worst: int = 10) -> str:
    return html_environment().get_template("diff.html.j2").render(diff_context(doc, command, worst))


def diff_markdown(doc: dict[str, Any], command: str, worst: int = 10) -> str:
    context = diff_context(doc, command, worst)
    return markdown_environment().get_template("diff.md.j2").render(context, fence=fence(command))


def _worst_strips(doc: dict[str, Any], lines: BatchLines | None) -> list[dict[str, Any]]:
    """The strips of the examples that moved most by mean KL, from the kept output lines (none without them)."""
    strips = []
    for k, entry in enumerate(doc["worst_by_kl"] if lines is not None else ()):
        line = lines.line(entry["line"])
        if line is not None:
            strips.append({"field": f"worst_by_kl.{k}", "line": entry["line"], "id": shown_id(entry["id"]),
                           "kl_mean": fmt(entry["kl_mean"], 6),
                           "strip": [{"label": None, "tokens": kl_strip(line["tokens"], None)}]})  # fmt: skip
    return strips


def diff_dataset_context(doc: dict[str, Any], command: str, lines: BatchLines | None = None) -> dict[str, Any]:
    """What the data-set diff templates show, from ``doc`` (a ``DiffDatasetSummary.to_dict()``) and, when the
    output lines were kept, the strips of the examples that moved most."""
    worst = []
    for key, title in (("worst_by_kl", "by mean KL"), ("worst_by_dnll", "by mean ΔNLL")):
        rows = [
            {
                "field": f"{key}.{k}",
                "line": e["line"],
                "id": shown_id(e["id"]),
                "count": e["count"],
                "kl_mean": fmt(e["kl_mean"], 6),
                "kbin": kl_bin(e["kl_mean"]),
                "dnll_mean": fmt(e["dnll_mean"]),
                "same_top1_pct": fmt(e["same_top1_pct"]),
            }
            for k, e in enumerate(doc[key])
        ]
        if rows:
            worst.append({"title": title, "rows": rows})
    return {
        "command": printable(command),
        "input": printable(doc["input"]),
        "output": printable(doc["output"]) if doc.get("output") else "stdout",
        "sides": [
            {
                "label": key,
                "model": printable(doc[key]["model"]),
                "device": doc[key]["device"],
                "dtype": doc[key]["dtype"],
            }
            for key in ("reference", "candidate")
        ],
        "versions": version_rows(doc),
        "examples": doc["examples"],
        "skipped_count": doc["skipped_count"],
        "summary": (_diff_summary_rows(doc["summary"]) if doc.get("summary") is not None else [])
        + _bootstrap_rows(doc.get("bootstrap")),
        "worst": worst,
        "strips": _worst_strips(doc, lines),
        "legend": [{"cls": f"k{k}", "label": label} for k, label in enumerate(_KL_LABELS)],
        "skipped": [
            {"line": k["line"], "id": shown_id(k["id"]), "reason": printable(k["reason"])} for k in doc["skipped"]
        ],
        "notes": [printable(n) for n in doc.get("notes", [])],
        "data": script_json(doc),
    }


def diff_dataset_html(doc: dict[str, Any], command: str, lines: BatchLines | None = None) -> str:
    return html_environment().get_template("diff_dataset.html.j2").render(diff_dataset_context(doc, command, lines))


def diff_dataset_markdown(doc: dict[str, Any], command: str, lines: BatchLines | None = None) -> str:
    context = diff_dataset_context(doc, command, lines)
    return markdown_environment().get_template("diff_dataset.md.j2").render(context, fence=fence(command))
