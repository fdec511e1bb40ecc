"""Rich rendering of ``prefs``'s summary: TRL's metrics with their standard errors, the pair checks, the pairs
with the most negative margins. User data (ids) only as ``Text``, never markup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ce_inspect.cli.render import HEAT_BG, loss_key, loss_style, visible
from ce_inspect.display import fmt
from ce_inspect.prefs import PrefsDatasetSummary

#: From this width on, the most-negative-margins table shows each pair's two sides from their divergence.
WIDE = 100


def side_text(line: dict[str, Any], name: str) -> Text:
    """A side's trained tokens from the divergence on, each on its loss colour; ``…`` first where tokens both
    sides share are left out (one line: the table cuts it to fit)."""
    at = line["layout"]["divergence"]
    tokens = line[name]["tokens"]
    text = Text(f"{name[0].upper()} ▸ ", style="dim", no_wrap=True, overflow="ellipsis")
    if at is not None and any(t["index"] < at for t in tokens):
        text.append("… ", style="dim")
    for t in tokens:
        if at is None or t["index"] >= at:
            piece = visible(t["token"], t.get("special", False), t.get("bytes"))
            piece.stylize(loss_style(t["loss"], HEAT_BG))
            text.append_text(piece)
    if not tokens:
        text.append("(no trained token)", style="dim")
    return text


def _strips(line: dict[str, Any] | None) -> Text:
    if line is None:
        return Text("")
    if line["layout"]["divergence"] is None:
        return Text("identical sequences", style="dim")
    return Text("\n", no_wrap=True, overflow="ellipsis").join(side_text(line, n) for n in ("chosen", "rejected"))


def render_prefs_summary(
    summary: PrefsDatasetSummary, console: Console | None = None, lines: Sequence[dict[str, Any]] = ()
) -> None:
    """The summary on ``console`` (default: stdout); ``lines``: the output lines of the most negative margins,
    whose two sides the table shows from their divergence when the console is wide enough."""
    console = console or Console()
    doc = summary.to_dict()
    reference = doc["reference"]["model"] if doc["reference"] else "the policy itself"
    gamma = f", γ {doc['gamma']}" if doc["gamma"] is not None else ""
    head = Text(
        f"{doc['pairs']} pairs, {doc['skipped_count']} skipped · policy {doc['policy']['model']} · "
        f"reference {reference} · loss {doc['loss_type']} (β {doc['beta']}{gamma})"
    )
    metrics = Table(title="TRL's metrics over the pairs", title_justify="left")
    for name, style in (("metric", None), ("mean", "bold"), ("± se", None), ("pairs", None)):
        metrics.add_column(name, style=style, justify="left" if name == "metric" else "right")
    for name, m in [*doc["metrics"].items(), ("loss", doc["loss"])]:
        metrics.add_row(Text(name), fmt(m["mean"]), fmt(m["se"]), str(m["count"]))
    checks = Table(title=f"Pair checks ({doc['flagged']} pairs flagged)", title_justify="left")
    checks.add_column("check")
    checks.add_column("pairs", justify="right")
    for name, count in doc["checks"].items():
        checks.add_row(Text(name), Text(str(count), style="bold red" if count else "green"))
    bias = doc["length_bias"]["finding"]
    by_line = {line["line"]: line for line in lines}
    wide = bool(by_line) and console.width >= WIDE
    worst = Table(title="Most negative margins", title_justify="left")
    for name in ("line", "id", "margin", "loss"):
        worst.add_column(name, justify="left" if name == "id" else "right", no_wrap=wide)
    if wide:  # the strips take the width the figures leave, each cut to one line
        worst.add_column("chosen (C) and rejected (R) from where they diverge", overflow="ellipsis", ratio=1)
    for w in doc["most_negative_margins"]:
        row = [str(w["line"]), Text("" if w["id"] is None else str(w["id"])), fmt(w["margin"]), fmt(w["loss"])]
        worst.add_row(*row, *([_strips(by_line.get(w["line"]))] if wide else []))
    parts = [head, metrics, checks, *([Text(f"length-bias: {bias['message']}", style="yellow")] if bias else [])]
    parts += [worst, *([Text.assemble("trained token loss: ", *loss_key())] if wide else [])]
    parts += [Text(note, style="dim") for note in doc["notes"]]
    console.print(Panel(Group(*parts), title="ce-inspect prefs", title_align="left"))


__all__ = ["render_prefs_summary"]
