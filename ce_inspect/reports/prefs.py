"""The prefs report: ``PrefsLines`` (every pair's output line), its context and its HTML and Markdown.

Per pair, the two sides' token strips aligned where the sequences diverge: the completion tokens both sides
share (before ``layout.divergence``) once, then chosen and rejected one above the other from there on; the
margin, the loss, TRL's sums and the pair's findings. Above, the summary under TRL's metric names (mean ± its
standard error), the checks and the pairs with the most negative margins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ce_inspect.display import fmt, loss_bin, printable, shown_token
from ce_inspect.reports.environment import fence, html_environment, markdown_environment
from ce_inspect.reports.pieces import (
    complete_lines,
    legend,
    script_json,
    shown_id,
    skipped_rows,
    strip_lines,
    version_rows,
)

SIDES = ("chosen", "rejected")
#: The per-pair figures the page shows, in order: (label, the line's key).
PAIR_FIGURES = (
    ("margin", "margin"),
    ("loss", "loss"),
    ("chosen_logps", "chosen_logps"),
    ("rejected_logps", "rejected_logps"),
    ("ref_chosen_logps", "ref_chosen_logps"),
    ("ref_rejected_logps", "ref_rejected_logps"),
    ("chosen reward", "chosen_reward"),
    ("rejected reward", "rejected_reward"),
)


class PrefsLines:
    """Every pair's output line, by input line (a page shows each pair; a resumed line read twice is kept once)."""

    def __init__(self) -> None:
        self.lines: dict[int, dict[str, Any]] = {}

    def add(self, line: dict[str, Any]) -> None:
        self.lines[line["line"]] = line

    def add_all(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.add(line)

    def add_file(self, path: str | os.PathLike[str], size: int) -> None:
        self.add_all(complete_lines(path, size))

    def in_order(self) -> list[dict[str, Any]]:
        return [self.lines[n] for n in sorted(self.lines)]


class MostNegative(PrefsLines):
    """The lines of the ``worst`` pairs with the most negative margins, ranked as the summary ranks them
    (margin, then the earlier line first): what the terminal shows token by token, in bounded memory."""

    def __init__(self, worst: int) -> None:
        super().__init__()
        self.worst = worst

    def add(self, line: dict[str, Any]) -> None:
        if line["margin"] is None or not self.worst:
            return
        self.lines[line["line"]] = line
        if len(self.lines) > self.worst:
            last = max(self.lines.values(), key=lambda x: (x["margin"], x["line"]))
            del self.lines[last["line"]]

    def ranked(self) -> list[dict[str, Any]]:
        return sorted(self.lines.values(), key=lambda x: (x["margin"], x["line"]))


def _side_strip(line: dict[str, Any], name: str, keep: Any, label: str) -> list[dict[str, Any]]:
    """The strip of the tokens of side ``name`` that ``keep(index)`` selects, each with the JSON field it shows
    (``line-N.chosen.tokens.K``), ``label`` on its first line."""
    side = line[name]
    chosen = [dict(t, scored=True) for t in side["tokens"] if keep(t["index"])]
    if not chosen:
        return []
    lines = strip_lines({"tokens": side["tokens"], "sequence": chosen}, prefix=f"line-{line['line']}.{name}.")
    # no-break spaces: the strip's font is monospace, so the three sides start in one column
    lines[0] = {**lines[0], "label": label.ljust(len("rejected"), "\u00a0")}
    return lines


def aligned_strips(line: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The pair's strips aligned at the divergence: ``common`` (trained tokens both sides share, shown once,
    from the chosen side: the same context gives the same figures), then ``chosen`` and ``rejected``."""
    at = line["layout"]["divergence"]
    if at is None:  # identical sequences: all of it is common
        return {"common": _side_strip(line, "chosen", lambda i: True, "both"), "chosen": [], "rejected": []}
    return {
        "common": _side_strip(line, "chosen", lambda i: i < at, "both"),
        "chosen": _side_strip(line, "chosen", lambda i: i >= at, "chosen"),
        "rejected": _side_strip(line, "rejected", lambda i: i >= at, "rejected"),
    }


def _side_text(line: dict[str, Any], name: str, keep: Any) -> str:
    """The side's tokens ``keep`` selects as one line of text (Markdown), whitespace made visible."""
    return "".join(shown_token(t["token"], t.get("special", False), t.get("bytes")) for t in line[name]["tokens"]
                   if keep(t["index"]))  # fmt: skip


def _pair(line: dict[str, Any]) -> dict[str, Any]:
    n, at = line["line"], line["layout"]["divergence"]
    figures = [
        {"label": label, "value": fmt(line[key]), "field": f"line-{n}.{key}"}
        for label, key in PAIR_FIGURES
        if line[key] is not None
    ]
    text = {name: _side_text(line, name, (lambda i: True) if at is None else (lambda i: i >= at)) for name in SIDES}
    return {
        "line": n,
        "id": shown_id(line["id"]),
        "anchor": f"line-{n}",
        "figures": figures,
        "bin": loss_bin(line["loss"]) if line["loss"] is not None else None,
        "findings": [{"check": f["check"], "message": printable(f["message"])} for f in line["findings"]],
        "strips": aligned_strips(line),
        "identical": at is None,
        "divergence": at,
        "prompt_tokens": line["layout"]["prompt_tokens"],
        "counts": {name: line[name]["count"] for name in SIDES},
        "common_text": _side_text(line, "chosen", (lambda i: True) if at is None else (lambda i: i < at)),
        "text": text if at is not None else {name: "" for name in SIDES},
    }


def _metric_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [(name, m, f"metrics.{name}") for name, m in summary["metrics"].items()]
    rows.append(("loss", summary["loss"], "loss"))
    return [
        {"name": name, "mean": fmt(m["mean"]), "se": fmt(m["se"]), "count": m["count"], "field": field}
        for name, m, field in rows
    ]


def prefs_context(summary: dict[str, Any], lines: PrefsLines | None, command: str) -> dict[str, Any]:
    """What the prefs templates show, from the summary document and every pair's line."""
    pairs = [_pair(line) for line in (lines.in_order() if lines is not None else [])]
    shown = {p["line"] for p in pairs}
    reference = summary["reference"]["model"] if summary["reference"] else "the policy itself"
    return {
        "summary": summary,
        "command": printable(command),
        "policy": printable(summary["policy"]["model"]),
        "reference": printable(reference),
        "versions": version_rows(summary),
        "input": printable(summary["input"]),
        "output": printable(summary["output"] or "stdout"),
        "beta": fmt(summary["beta"]),
        "gamma": fmt(summary["gamma"]) if summary["gamma"] is not None else None,
        "metrics": _metric_rows(summary),
        "checks": [{"name": k, "count": v, "field": f"checks.{k}"} for k, v in summary["checks"].items()],
        "length_bias": summary["length_bias"]["finding"],
        "worst": [
            {
                "field": f"most_negative_margins.{k}",
                "line": w["line"],
                "id": shown_id(w["id"]),
                "margin": fmt(w["margin"]),
                "loss": fmt(w["loss"]),
                "anchor": f"line-{w['line']}" if w["line"] in shown else None,
            }
            for k, w in enumerate(summary["most_negative_margins"])
        ],
        "pairs": pairs,
        "skipped": skipped_rows(summary["skipped"]),
        "notes": [printable(n) for n in summary["notes"]],
        "legend": legend(),
        "data": script_json(summary),
    }


def prefs_html(summary: dict[str, Any], lines: PrefsLines | None, command: str) -> str:
    return html_environment().get_template("prefs.html.j2").render(prefs_context(summary, lines, command))


def prefs_markdown(summary: dict[str, Any], lines: PrefsLines | None, command: str) -> str:
    context = prefs_context(summary, lines, command)
    return markdown_environment().get_template("prefs.md.j2").render(context, fence=fence(command))


__all__ = ["MostNegative", "PrefsLines", "aligned_strips", "prefs_context", "prefs_html", "prefs_markdown"]
