"""Rich rendering of ``prefs``'s summary: TRL's metrics with their standard errors, the pair checks, the pairs
with the most negative margins. User data (ids) only as ``Text``, never markup."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ce_inspect.display import fmt
from ce_inspect.prefs import PrefsDatasetSummary


def render_prefs_summary(summary: PrefsDatasetSummary, console: Console | None = None) -> None:
    """The summary on ``console`` (default: stdout)."""
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
    worst = Table(title="Most negative margins", title_justify="left")
    for name in ("line", "id", "margin", "loss"):
        worst.add_column(name, justify="left" if name == "id" else "right")
    for w in doc["most_negative_margins"]:
        worst.add_row(str(w["line"]), Text("" if w["id"] is None else str(w["id"])), fmt(w["margin"]), fmt(w["loss"]))
    parts = [head, metrics, checks, worst, *(Text(note, style="dim") for note in doc["notes"])]
    console.print(Panel(Group(*parts), title="ce-inspect prefs", title_align="left"))


__all__ = ["render_prefs_summary"]
