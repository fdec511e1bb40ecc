"""Rich rendering of a DiffResult: the heat strip coloured by KL or ΔNLL, the tokens where the models
disagree most, then llama.cpp-style statistics. Tokens are user data: ``Text`` only, never markup."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ce_inspect.cli.render import ALWAYS, Column, clipped, fitted, visible
from ce_inspect.diff import DiffDatasetSummary, DiffResult, DiffSummary, TokenDiff
from ce_inspect.display import fmt, prob_text

# KL (nats) thresholds: imperceptible, small (a bf16 cast), notable, large.
_KL_BG = ((0.001, "on dark_green"), (0.01, "black on yellow"), (0.1, "black on dark_orange"), (float("inf"), "on red"))
# ΔNLL (nats): the candidate better (blue), about the same, worse, much worse.
_DNLL_BG = (
    (-0.1, "on blue"),
    (0.1, "on dark_green"),
    (0.5, "black on yellow"),
    (2.0, "black on dark_orange"),
    (float("inf"), "on red"),
)


def _style(value: float, scale: tuple[tuple[float, str], ...]) -> str:
    return next(style for limit, style in scale if value < limit)


def diff_strip(result: DiffResult, color_by: str) -> Text:
    """The whole input: context dim, scored tokens on a background coloured by their KL (or ΔNLL)."""
    scale = _KL_BG if color_by == "kl" else _DNLL_BG
    at = {t.index: t for t in result.tokens}
    text = Text()
    for i, tok in enumerate(result.reference.sequence):
        piece = visible(tok.token, tok.special)
        scored = at.get(i)
        if scored is not None:
            piece.stylize(_style(scored.kl if color_by == "kl" else scored.dnll, scale))
        else:
            piece.stylize("dim")
            if i % 2:
                piece.stylize("underline")
        text.append_text(piece)
        if tok.token.endswith("\n"):
            text.append("\n")
    text.rstrip()
    return text


def legend(color_by: str) -> Text:
    if color_by == "kl":
        parts = [("<0.001", "on dark_green"), ("<0.01", "black on yellow"), ("<0.1", "black on dark_orange")]
        parts.append(("≥0.1", "on red"))
        head = "  KL(ref‖cand) nats: "
    else:
        parts = [("<-0.1 better", "on blue"), ("<0.1", "on dark_green"), ("<0.5", "black on yellow")]
        parts += [("<2", "black on dark_orange"), ("≥2", "on red")]
        head = "  ΔNLL (cand − ref) nats: "
    out = Text.assemble(("context", "dim"), head)
    for i, part in enumerate(parts):
        if i:
            out.append(" ")
        out.append(*part)
    return out


def top_choice(t: TokenDiff, side: str) -> Text:
    score = t.ref if side == "ref" else t.cand
    return clipped(visible(score.top_token), 10).append(f" {prob_text(score.top_prob)}", "dim")


def disagreement_table(result: DiffResult, worst: int, color_by: str, width: int | None = None) -> Table:
    """The tokens where the models disagree most. On a terminal narrower than the table (``width``) the less
    important columns go first (top choices, ranks, probabilities, #), as ``run``'s table does; target, KL
    and ΔNLL stay, and the borders with them."""
    key = (lambda t: t.kl) if color_by == "kl" else (lambda t: abs(t.dnll))
    rows = sorted(result.tokens, key=key, reverse=True)[:worst]
    rows.sort(key=lambda t: t.index)
    last = max((t.index for t in rows), default=0)
    columns = [
        Column("#", 40, {"justify": "right", "style": "dim", "no_wrap": True, "min_width": len(str(last))}),
        Column("target", ALWAYS, {"no_wrap": True, "max_width": 14}),
        Column("KL", ALWAYS, {"justify": "right", "no_wrap": True}),
        Column("ΔNLL", ALWAYS, {"justify": "right", "no_wrap": True}),
        Column("p ref→cand", 50, {"justify": "right", "no_wrap": True}),
        Column("rank", 30, {"justify": "right", "no_wrap": True}),
        Column("top ref", 20, {"no_wrap": True}),
        Column("top cand", 25, {"no_wrap": True}),
    ]
    for t in rows:
        cells = (
            str(t.index),
            clipped(visible(t.token, t.ref.special), 14),
            Text(f"{t.kl:.4g}", style=_style(t.kl, _KL_BG)),
            Text(f"{t.dnll:+.3f}", style=_style(t.dnll, _DNLL_BG)),
            f"{prob_text(t.ref.prob)}→{prob_text(t.cand.prob)}",
            f"{t.ref.rank}→{t.cand.rank}",
            top_choice(t, "ref"),
            top_choice(t, "cand").append("" if t.same_top1 else " ≠", "bold red"),
        )
        for column, cell in zip(columns, cells):
            column.cells.append(cell)
    columns, tight = fitted(columns, width, "target")
    table = Table(
        padding=(0, 0) if tight else (0, 1),
        title=f"Where the models disagree most ({len(rows)} of {len(result.tokens)} scored tokens, by "
        + ("KL" if color_by == "kl" else "|ΔNLL|")
        + ")",
        title_justify="left",
        caption="p, rank: the target's, reference → candidate; top: each one's most likely token (≠: they differ)",
        caption_justify="left",
    )
    for column in columns:
        table.add_column(column.header, **column.options)
    for i in range(len(rows)):
        table.add_row(*(column.cells[i] for column in columns))
    return table


def _pm(value: float, error: float | None, digits: int = 6) -> str:
    return fmt(value, digits) + ("" if error is None else f" ± {fmt(error, digits)}")


def summary_grid(s: DiffSummary) -> Table:
    q = s.kl_quantiles
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("scored tokens", str(s.count))
    grid.add_row("mean loss ref / cand", f"{fmt(s.ref_loss_mean, 6)} / {fmt(s.cand_loss_mean, 6)}")
    grid.add_row("mean ΔNLL (cand − ref)", _pm(s.dnll_mean, s.dnll_se))
    grid.add_row("mean KL(ref‖cand)", _pm(s.kl_mean, s.kl_se))
    grid.add_row("mean KL(cand‖ref)", _pm(s.kl_reverse_mean, s.kl_reverse_se))
    order = ("max", "p999", "p99", "p95", "p90", "median", "p10", "p05", "p01", "p001", "min")
    labels = ("max", "99.9%", "99%", "95%", "90%", "median", "10%", "5%", "1%", "0.1%", "min")
    grid.add_row("KL distribution", "  ".join(f"{label} {fmt(q[k], 6)}" for label, k in zip(labels, order)))
    grid.add_row("RMS Δp", _pm(100 * s.dp_rms, None if s.dp_rms_se is None else 100 * s.dp_rms_se, 3) + " %")
    grid.add_row(
        "same top-1",
        f"{s.same_top1}/{s.count} = " + _pm(s.same_top1_pct, s.same_top1_se_pct, 3) + " %",
    )
    return grid


def render_diff(result: DiffResult, color_by: str = "kl", worst: int = 10, console: Console | None = None) -> None:
    console = console or Console()
    for label, side in (("reference", result.reference), ("candidate", result.candidate)):
        console.print(
            Text.assemble(
                (f"{label} ", "dim"), (side.model, "bold"), ("  device ", "dim"), side.device, ("  dtype ", "dim")
            ).append(side.dtype)
        )
    console.print(
        Panel(Group(diff_strip(result, color_by), Text(), legend(color_by)), title="sequence", title_align="left")
    )
    if worst:
        console.print(disagreement_table(result, worst, color_by, width=console.width))
    console.print(summary_grid(result.summary))
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))


def render_diff_dataset(summary: DiffDatasetSummary, console: Console | None = None) -> None:
    """The data-set comparison: token-weighted statistics, then the examples that moved most."""
    console = console or Console()
    for label, side in (("reference", summary.reference), ("candidate", summary.candidate)):
        console.print(
            Text.assemble((f"{label} ", "dim"), (side["model"], "bold"), ("  device ", "dim"), side["device"])
            .append("  dtype ", "dim")
            .append(side["dtype"])
        )
    console.print(Text(f"{summary.examples} examples compared, {len(summary.skipped)} skipped; input {summary.input}"))
    if summary.summary is not None:
        console.print(summary_grid(summary.summary))
    if summary.bootstrap is not None:
        b = summary.bootstrap
        console.print(
            f"bootstrap over examples ({b['resamples']} resamples, seed {b['seed']}): mean ΔNLL ± "
            f"{fmt(b['dnll_mean_stderr'], 6)}, mean KL(ref‖cand) ± {fmt(b['kl_mean_stderr'], 6)}"
        )
    for title, rows in (("by mean KL", summary.worst_by_kl), ("by mean ΔNLL", summary.worst_by_dnll)):
        if not rows:
            continue
        table = Table(title=f"Examples that moved most, {title}", title_justify="left")
        for name in ("line", "id", "tokens", "mean KL", "mean ΔNLL", "same top-1 %"):
            table.add_column(name, justify="left" if name == "id" else "right", no_wrap=True)
        for e in rows:
            table.add_row(
                str(e["line"]),
                clipped(visible("" if e["id"] is None else str(e["id"])), 24),
                str(e["count"]),
                Text(fmt(e["kl_mean"], 6), style=_style(e["kl_mean"], _KL_BG)),
                Text(f"{e['dnll_mean']:+.4f}", style=_style(e["dnll_mean"], _DNLL_BG)),
                f"{e['same_top1_pct']:.1f}",
            )
        console.print(table)
    for skipped in summary.skipped:
        console.print(Text(f"skipped line {skipped.line}: {skipped.reason}", style="yellow"))
    for note in summary.notes:
        console.print(Text(f"note: {note}", style="yellow"))
