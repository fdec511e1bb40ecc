"""The choices report: ``ChoicesLines`` (the questions' output lines), its context and its HTML and Markdown.

Above, the accuracies as lm-eval names them (``acc``, ``acc_norm``, ``acc_mutual_info``, each ± its standard
error) and bits per byte; then a section per question: its context, and each choice with its log-likelihood as
a bar across the question's range (as the terminal's table draws it), per character, its token count, whether
it is greedy, the gold and predicted marks, and its scored tokens as a strip on the one loss colour scale.
Figures in the terminal's precision: log-likelihoods in 3 decimals, accuracies in 4.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ce_inspect.display import fmt, printable, shown_token
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

#: The questions a report holds whole (the first by input line; the JSON lines hold every one).
QUESTIONS_KEPT = 200
#: The questions shown open; the rest of those kept fold into one <details>.
QUESTIONS_OPEN = 20
#: A context longer than this many characters shows its start and folds the rest.
CONTEXT_FOLD = 300
#: Cells of the log-likelihood bar, as the terminal's (``cli/render_choices.BAR``).
BAR = 10
#: Log-likelihoods in the terminal's precision (``render_choices.questions_table``).
LL_DIGITS = 3
#: The accuracies shown, each with its ``_stderr`` and its count of right answers: (name, the count's key).
ACCURACIES = (("acc", "correct"), ("acc_norm", "correct_norm"), ("acc_mutual_info", "correct_mutual_info"))


class ChoicesLines:
    """The output lines of the first ``keep`` questions by input line, in bounded memory (a resumed line read
    twice is kept once)."""

    def __init__(self, keep: int = QUESTIONS_KEPT) -> None:
        self.keep = keep
        self.lines: dict[int, dict[str, Any]] = {}

    def add(self, line: dict[str, Any]) -> None:
        self.lines[line["line"]] = line
        if len(self.lines) > self.keep:
            del self.lines[max(self.lines)]

    def add_all(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.add(line)

    def add_file(self, path: str | os.PathLike[str], size: int) -> None:
        self.add_all(complete_lines(path, size))

    def in_order(self) -> list[dict[str, Any]]:
        return [self.lines[n] for n in sorted(self.lines)]


def bar_cells(value: float, low: float, high: float) -> int:
    """How many of ``BAR`` cells the choice's log-likelihood fills between the question's lowest and highest
    (at least one): the terminal's bar."""
    share = 1.0 if high == low else (value - low) / (high - low)
    return max(1, round(share * BAR))


def _marks(line: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """gold, then each prediction that picks choice ``k``, with whether it is right."""
    marks = [{"name": "gold", "right": True}] if k == line["label"] else []
    for name, pred, correct in (
        ("pred", "pred", "correct"),
        ("norm", "pred_norm", "correct_norm"),
        ("mi", "pred_mutual_info", "correct_mutual_info"),
    ):
        if line.get(pred) == k:
            marks.append({"name": name, "right": bool(line[correct])})
    return marks


def _choice(line: dict[str, Any], c: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    k, field = c["index"], f"line-{line['line']}.choices.{c['index']}"
    strip = strip_lines({"tokens": c["tokens"]}, prefix=f"{field}.")
    if strip:
        strip[0] = {**strip[0], "label": f"#{k}"}
    return {
        "index": k,
        "field": field,
        "text": shown_token(c["text"]),  # whitespace made visible, as the terminal shows it
        "sum_logprob": fmt(c["sum_logprob"], LL_DIGITS),
        "norm_logprob": fmt(c["norm_logprob"], LL_DIGITS),
        "mutual_info": fmt(c["mutual_info"], LL_DIGITS) if "mutual_info" in c else None,
        "count": c["count"],
        "is_greedy": c["is_greedy"],
        "cells": (cells := bar_cells(c["sum_logprob"], low, high)),
        "bar_text": "█" * cells + "·" * (BAR - cells),
        "marks": _marks(line, k),
        "strip": strip,
        "tokens_text": "".join(shown_token(t["token"], t.get("special", False), t.get("bytes")) for t in c["tokens"]),
    }


def _question(line: dict[str, Any]) -> dict[str, Any]:
    values = [c["sum_logprob"] for c in line["choices"]]
    low, high = min(values), max(values)
    context = line.get("context")
    shown = None if context is None else "\n".join(printable(part) for part in context.split("\n"))
    return {
        "line": line["line"],
        "anchor": f"line-{line['line']}",
        "id": shown_id(line["id"]),
        "label": line["label"],
        "correct": line["correct"],
        "correct_norm": line["correct_norm"],
        "correct_mutual_info": line.get("correct_mutual_info"),
        "context": shown,
        "context_head": None if shown is None or len(shown) <= CONTEXT_FOLD else shown[:CONTEXT_FOLD],
        "choices": [_choice(line, c, low, high) for c in line["choices"]],
        "mutual_info": "pred_mutual_info" in line,
    }


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """acc, acc_norm and acc_mutual_info (when present), each ± its standard error, with the right answers."""
    return [
        {
            "name": name,
            "value": fmt(summary[name]),
            "se": fmt(summary[f"{name}_stderr"]),
            "right": summary[count],
            "count_field": count,
        }
        for name, count in ACCURACIES
        if name in summary
    ]


def choices_context(summary: dict[str, Any], lines: ChoicesLines | None, command: str) -> dict[str, Any]:
    """What the choices templates show, from the summary document and the kept questions' lines."""
    questions = [_question(line) for line in (lines.in_order() if lines is not None else [])]
    bpb = summary.get("bits_per_byte")
    return {
        "summary": summary,
        "command": printable(command),
        "model": printable(summary["model"]),
        "device": printable(summary["device"]),
        "dtype": printable(summary["dtype"]),
        "input": printable(summary["input"]),
        "output": printable(summary["output"] or "stdout"),
        "tokenization": printable(summary["tokenization"]),
        "versions": version_rows(summary),
        "accuracies": _summary_rows(summary),
        "bits_per_byte": fmt(bpb) if bpb is not None else None,
        "questions": questions[:QUESTIONS_OPEN],
        "folded": questions[QUESTIONS_OPEN:],
        "left_out": summary["questions"] - len(questions) if lines is not None else 0,
        "mutual_info": "acc_mutual_info" in summary,
        "bar": BAR,
        "skipped": skipped_rows(summary["skipped"]),
        "notes": [printable(n) for n in summary["notes"]],
        "legend": legend(),
        "data": script_json(summary),
    }


def choices_html(summary: dict[str, Any], lines: ChoicesLines | None, command: str) -> str:
    return html_environment().get_template("choices.html.j2").render(choices_context(summary, lines, command))


def choices_markdown(summary: dict[str, Any], lines: ChoicesLines | None, command: str) -> str:
    context = choices_context(summary, lines, command)
    return markdown_environment().get_template("choices.md.j2").render(context, fence=fence(command))


__all__ = ["QUESTIONS_KEPT", "QUESTIONS_OPEN", "ChoicesLines", "bar_cells", "choices_context", "choices_html",
           "choices_markdown"]  # fmt: skip
