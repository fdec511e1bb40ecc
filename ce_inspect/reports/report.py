"""HTML and Markdown reports, rendered from the JSON documents only (so what a report shows is the JSON).

A run's report is built from ``ScoreResult.to_dict()``; a batch's from ``DatasetSummary.to_dict()`` and the
output lines (``BatchLines`` keeps what it needs of them: loss by position and the worst lines whole).
Templates live in ``ce_inspect/reports/templates``; jinja2 escapes every value in HTML, and a finalize step
escapes every value in Markdown, so a token cannot add markup to either.

Every figure goes through ``display.fmt`` (4 decimals), as in the terminal. Each number in the HTML sits in
an element whose ``data-f`` attribute names the JSON field it shows (``tokens.3.loss``), which is how the
tests check every number against the JSON document.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterable
from typing import Any

from ce_inspect.display import LOSS_BINS, fmt, histogram, loss_bin, printable, prob_text, shown_token, sparkline

#: The first bytes of every report ce-inspect writes (HTML, SVG, Markdown): how ``files.check_output``
#: recognises a report it may replace.
REPORT_MARK = re.compile(rb"\A(<!DOCTYPE html>\s*)?<!-- ce-inspect report")
#: ``REPORT_MARK`` in the words of a refusal.
REPORT_MARK_TEXT = (
    "<!-- ce-inspect report: KIND -->, the comment every ce-inspect report opens with, after <!DOCTYPE html> in HTML"
)
#: Segments that a masked layout trains on; the others are context (as ``cli/render.py``).
TARGET_SEGMENTS = frozenset({"answer", "eos", "assistant", "eot"})
_BIN_LABELS = ("< 0.5", "0.5 to 2", "2 to 4", "≥ 4")


# --- the shared pieces: strip, token rows, tooltips -----------------------------------------------------


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


def _legend() -> list[dict[str, str]]:
    return [{"cls": f"b{k}", "label": label} for k, label in enumerate(_BIN_LABELS)]


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped (no ``</script>`` or ``<!--``
    can end it), and every non-ASCII character as ``\\uXXXX`` (U+2028/2029, right-to-left marks)."""
    import json

    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- run ------------------------------------------------------------------------------------------------


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
        "legend": _legend(),
        "data": script_json(doc),
    }


def run_html(doc: dict[str, Any], command: str) -> str:
    return _html().get_template("run.html.j2").render(run_context(doc, command))


def run_markdown(doc: dict[str, Any], command: str) -> str:
    return _markdown().get_template("run.md.j2").render(run_context(doc, command), fence=_fence(command))


# --- batch ----------------------------------------------------------------------------------------------


class BatchLines:
    """What a batch report needs of the output lines, in bounded memory: the sum and count of the loss at
    each position among an example's scored tokens, and the ``worst`` lines (by mean loss) whole.

    The worst lines are ranked as the data-set summary ranks them (mean, then the earlier line first), so
    the report finds every example of the summary's ``worst_examples`` here.
    """

    def __init__(self, worst: int) -> None:
        self.worst = worst
        self.position_sum: list[float] = []
        self.position_count: list[int] = []
        self._heap: list[tuple[float, int, int, dict[str, Any]]] = []
        self._order = 0

    def add(self, line: dict[str, Any]) -> None:
        for k, t in enumerate(line["tokens"]):
            if k == len(self.position_sum):
                self.position_sum.append(0.0)
                self.position_count.append(0)
            self.position_sum[k] += t["loss"]
            self.position_count[k] += 1
        if self.worst:
            item = (line["summary"]["mean"], -line["line"], self._order, line)
            self._order += 1
            if len(self._heap) < self.worst:
                heapq.heappush(self._heap, item)
            elif item[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, item)

    def add_all(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.add(line)

    def add_file(self, path: str | os.PathLike[str], size: int) -> None:
        """The complete lines in the first ``size`` bytes of an output file (what ``--resume`` keeps)."""
        import json

        with open(path, "rb") as fh:
            data = fh.read(size)
        self.add_all(json.loads(raw) for raw in data.splitlines() if raw.strip())

    def line(self, number: int) -> dict[str, Any] | None:
        return next((item[-1] for item in self._heap if item[-1]["line"] == number), None)

    def position_means(self) -> list[float]:
        return [s / n for s, n in zip(self.position_sum, self.position_count)]


def _batch_summary_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        ("examples", str(s["examples"]), "examples"),
        ("scored tokens", str(s["scored_tokens"]), "scored_tokens"),
    ]
    if s.get("token_weighted_mean_loss") is not None:
        rows.append(("token-weighted mean loss", fmt(s["token_weighted_mean_loss"]), "token_weighted_mean_loss"))
    if s.get("example_weighted_mean_loss") is not None:
        rows.append(("example-weighted mean loss", fmt(s["example_weighted_mean_loss"]), "example_weighted_mean_loss"))
    rows.append(("loss sum", fmt(s["loss_sum"]), "loss_sum"))
    if s.get("mean_nll") is not None:
        ppl = fmt(s["perplexity"], 3) if s["perplexity"] is not None else "overflow"
        rows.append(("perplexity", ppl, "perplexity"))
        if s["label_smoothing"]:
            rows.append(("mean NLL", fmt(s["mean_nll"]), "mean_nll"))
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


def _shown_id(rid: str | int | None) -> str:
    return "" if rid is None else printable(str(rid))


def _skipped_rows(skipped: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The skipped lines as a report lists them: line, shown id and printable reason."""
    return [{"line": k["line"], "id": _shown_id(k["id"]), "reason": printable(k["reason"])} for k in skipped]


def _batch_worst_examples(summary: dict[str, Any], lines: BatchLines) -> list[dict[str, Any]]:
    """The worst examples, each with its whole line's strip and token rows when ``lines`` kept it."""
    worst = []
    for k, e in enumerate(summary["worst_examples"]):
        line = lines.line(e["line"])
        worst.append(
            {
                "field": f"worst_examples.{k}",
                "line": e["line"],
                "id": _shown_id(e["id"]),
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
            "id": _shown_id(t["id"]),
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
        "input": printable(summary["input"]),
        "output": printable(summary["output"] or "stdout"),
        "rows": _batch_summary_rows(summary),
        "histogram": _histogram_figure(hist),
        "hist_spark": sparkline(hist["counts"], 40, top=max(hist["counts"], default=0)),
        "hist_rows": _histogram_rows(hist),
        "positions": _position_figure(lines.position_means(), counts),
        "worst": worst,
        "worst_tokens": _batch_worst_tokens(summary, anchors),
        "skipped": _skipped_rows(summary["skipped"]),
        "legend": _legend(),
        "data": script_json(summary),
    }


def batch_html(summary: dict[str, Any], lines: BatchLines, command: str) -> str:
    return _html().get_template("batch.html.j2").render(batch_context(summary, lines, command))


def batch_markdown(summary: dict[str, Any], lines: BatchLines, command: str) -> str:
    context = batch_context(summary, lines, command)
    return _markdown().get_template("batch.md.j2").render(context, fence=_fence(command))


# --- diff -------------------------------------------------------------------------------------------------

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


def diff_context(doc: dict[str, Any], command: str, worst: int = 10) -> dict[str, Any]:
    """What the diff templates show, all from ``doc`` (a ``DiffResult.to_dict()``). The strip holds the scored
    tokens (the document keeps no masked context), coloured by KL; the table the ``worst`` by KL, in order."""
    tokens = doc["tokens"]
    strip = [
        {
            "text": shown_token(t["token"], t["ref"].get("special", False), t["ref"].get("bytes")),
            "cls": f"t k{kl_bin(t['kl'])}",
            "tip": _diff_tooltip(t),
            "field": f"tokens.{k}",
        }
        for k, t in enumerate(tokens)
    ]
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
        "strip": strip,
        "rows": rows,
        "count": len(tokens),
        "summary": _diff_summary_rows(doc["summary"]),
        "notes": [printable(n) for n in doc.get("notes", [])],
        "legend": [{"cls": f"k{k}", "label": label} for k, label in enumerate(_KL_LABELS)],
        "data": script_json(doc),
    }


def diff_html(doc: dict[str, Any], command: str, worst: int = 10) -> str:
    return _html().get_template("diff.html.j2").render(diff_context(doc, command, worst))


def diff_markdown(doc: dict[str, Any], command: str, worst: int = 10) -> str:
    return _markdown().get_template("diff.md.j2").render(diff_context(doc, command, worst), fence=_fence(command))


def diff_dataset_context(doc: dict[str, Any], command: str) -> dict[str, Any]:
    """What the data-set diff templates show, from ``doc`` (a ``DiffDatasetSummary.to_dict()``)."""
    worst = []
    for key, title in (("worst_by_kl", "by mean KL"), ("worst_by_dnll", "by mean ΔNLL")):
        rows = [
            {
                "field": f"{key}.{k}",
                "line": e["line"],
                "id": _shown_id(e["id"]),
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
        "examples": doc["examples"],
        "skipped_count": doc["skipped_count"],
        "summary": _diff_summary_rows(doc["summary"]) if doc.get("summary") is not None else [],
        "worst": worst,
        "skipped": [
            {"line": k["line"], "id": _shown_id(k["id"]), "reason": printable(k["reason"])} for k in doc["skipped"]
        ],
        "notes": [printable(n) for n in doc.get("notes", [])],
        "data": script_json(doc),
    }


def diff_dataset_html(doc: dict[str, Any], command: str) -> str:
    return _html().get_template("diff_dataset.html.j2").render(diff_dataset_context(doc, command))


def diff_dataset_markdown(doc: dict[str, Any], command: str) -> str:
    context = diff_dataset_context(doc, command)
    return _markdown().get_template("diff_dataset.md.j2").render(context, fence=_fence(command))


# --- audit ------------------------------------------------------------------------------------------------

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
            {"field": f"{field}.records.{j}", "line": r["line"], "id": _shown_id(r["id"])} for j, r in enumerate(shown)
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
                "id": _shown_id(e["id"]),
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
        "records": doc["records"],
        "max_length": doc.get("max_length"),
        "checks": checks,
        "examples": examples,
        "loss": loss,
        "skipped": _skipped_rows(doc["skipped"]),
        "gate_failed": doc["gate_failed"],
        "failed_checks": doc["failed_checks"],
        "legend": _legend(),
        "data": script_json(doc),
    }


def audit_html(doc: dict[str, Any], command: str) -> str:
    return _html().get_template("audit.html.j2").render(audit_context(doc, command))


def audit_markdown(doc: dict[str, Any], command: str) -> str:
    return _markdown().get_template("audit.md.j2").render(audit_context(doc, command), fence=_fence(command))


# --- template environments ------------------------------------------------------------------------------


class MarkdownText(str):
    """Markdown a template builds itself (tables, links): the finalize step leaves it as it is."""


#: Characters that mean something to GitHub-flavoured Markdown inline (emphasis, code, links, HTML,
#: tables, strikethrough, entities, math, emoji, mentions, issue links), written as numeric references.
_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|~&$:@#]")


def markdown_escape(value: Any) -> str:
    """Any value as inert Markdown text: every character GitHub could read as markup becomes ``&#N;``."""
    if isinstance(value, MarkdownText):
        return value
    text = printable(str(value)) if not isinstance(value, (int, float)) else str(value)
    return _MD_SPECIAL.sub(lambda m: f"&#{ord(m[0])};", text)


def _fence(command: str) -> str:
    """A code fence longer than any run of backticks in the command, so nothing in it can close the block."""
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    return "`" * max(3, longest + 1)


def _loader() -> Any:
    import jinja2

    return jinja2.PackageLoader("ce_inspect.reports", "templates")


def _html() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=_loader(), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.globals["LOSS_BINS"] = LOSS_BINS
    return env


def _markdown() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=_loader(),
        autoescape=False,
        finalize=markdown_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["raw"] = MarkdownText  # a command line inside its fence: shown as it is
    return env


__all__ = [
    "REPORT_MARK",
    "REPORT_MARK_TEXT",
    "BatchLines",
    "audit_html",
    "audit_markdown",
    "batch_html",
    "batch_markdown",
    "diff_dataset_html",
    "diff_dataset_markdown",
    "diff_html",
    "diff_markdown",
    "markdown_escape",
    "run_html",
    "run_markdown",
    "script_json",
]
