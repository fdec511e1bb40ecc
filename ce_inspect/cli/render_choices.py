"""Rich output of `choices`: the accuracies, then each question with every choice's log-likelihood as a bar,
the gold choice and the predicted ones marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ce_inspect.cli.render import clipped, visible
from ce_inspect.display import fmt

if TYPE_CHECKING:
    from ce_inspect.choices import ChoicesSummary

BAR = 10


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def summary_table(summary: ChoicesSummary) -> Table:
    d = summary.to_dict()
    table = Table(title=f"choices: {d['input']} ({d['tokenization']} tokenization)", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("questions", f"{d['questions']} ({d['resumed']} resumed, {d['skipped_count']} skipped)")
    table.add_row("acc", f"{_pm(d['acc'], d['acc_stderr'])}  ({d['correct']} right)")
    table.add_row("acc_norm", f"{_pm(d['acc_norm'], d['acc_norm_stderr'])}  ({d['correct_norm']} right)")
    if "acc_mutual_info" in d:
        mutual = _pm(d["acc_mutual_info"], d["acc_mutual_info_stderr"])
        table.add_row("acc_mutual_info", f"{mutual}  ({d['correct_mutual_info']} right)")
    if d.get("bits_per_byte") is not None:
        table.add_row("bits per byte", f"{d['bits_per_byte']:.4f}  (of the right choices)")
    table.add_row("model", Text(f"{d['model']} ({d['device']}, {d['dtype']})"))
    return table


def _bar(value: float, low: float, high: float) -> Text:
    """The choice's log-likelihood between the question's lowest and highest: a longer bar is more likely."""
    share = 1.0 if high == low else (value - low) / (high - low)
    filled = max(1, round(share * BAR))
    return Text("█" * filled + "·" * (BAR - filled), style="cyan")


def _marks(line: dict[str, Any], k: int) -> Text:
    out = Text()
    if k == line["label"]:
        out.append("gold", style="bold green")
    if k == line["pred"]:
        out.append(" pred", style="bold" if line["correct"] else "bold red")
    if k == line["pred_norm"]:
        out.append(" norm", style="bold" if line["correct_norm"] else "bold red")
    return out


def questions_table(lines: Sequence[dict[str, Any]], width: int = 24) -> Table:
    """Each question's choices: log-likelihood (a bar across the question's range), per character, tokens."""
    table = Table(caption="gold: the label; pred: by log-likelihood; norm: by log-likelihood per character")
    for name in ("line", "#", "choice", "logL", "", "logL/char", "tok", "greedy", "marks"):
        justify = "left" if name in ("choice", "", "marks") else "right"
        table.add_column(name, justify=justify, no_wrap=name != "choice")  # type: ignore[arg-type]
    for line in lines:
        values = [c["sum_logprob"] for c in line["choices"]]
        low, high = min(values), max(values)
        for c in line["choices"]:
            table.add_row(
                Text(str(line["line"])) if c["index"] == 0 else Text(""),
                str(c["index"]),
                clipped(visible(c["text"]), width),
                fmt(c["sum_logprob"], 3),
                _bar(c["sum_logprob"], low, high),
                fmt(c["norm_logprob"], 3),
                str(c["count"]),
                "yes" if c["is_greedy"] else "no",
                _marks(line, c["index"]),
            )
        table.add_section()
    return table


def render_choices(
    summary: ChoicesSummary, lines: Sequence[dict[str, Any]], console: Console | None = None, *, show: int = 20
) -> None:
    """The summary, then the first ``show`` questions."""
    console = console or Console()
    if lines and show:
        console.print(questions_table(lines[:show]))
        if len(lines) > show:
            console.print(Text(f"... {len(lines) - show} more questions in the JSON lines (--show)"))
    console.print(summary_table(summary))


__all__ = ["questions_table", "render_choices", "summary_table"]
