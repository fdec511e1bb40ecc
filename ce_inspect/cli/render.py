"""Rich rendering of a ScoreResult. Every token is user data: it goes into ``Text``, never into markup."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..result import ScoreResult, SequenceToken, TokenScore

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
# Loss thresholds (nats) for the colour scale: p > 0.61, p > 0.14, p > 0.02, below.
_HEAT = ((0.5, "green"), (2.0, "yellow"), (4.0, "dark_orange"), (float("inf"), "red"))
_HEAT_BG = ((0.5, "on dark_green"), (2.0, "black on yellow"), (4.0, "black on dark_orange"), (float("inf"), "on red"))


def visible(token: str, special: bool = False) -> Text:
    """The token with whitespace and control characters made visible; special tokens highlighted."""
    if special:
        return Text(token, style="bold magenta")
    shown = "".join(_VISIBLE.get(ch, ch if ch.isprintable() else f"\\x{ord(ch):02x}") for ch in token)
    return Text(shown or "∅")


def loss_style(loss: float, scale: tuple[tuple[float, str], ...] = _HEAT) -> str:
    return next(style for limit, style in scale if loss < limit)


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"


def token_table(tokens: tuple[TokenScore, ...], top_k: int) -> Table:
    table = Table(title=f"Per-token loss ({len(tokens)} scored tokens)", title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("target")
    table.add_column("id", justify="right", style="dim")
    table.add_column("prob", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("top choice")
    if top_k:
        table.add_column(f"top {top_k}")
    for t in tokens:
        style = loss_style(t.loss)
        top = Text("✓ ", style="green") if t.rank == 1 else visible(t.top_token).append(f" {t.top_prob:.3f}", "dim")
        row = [
            str(t.index),
            visible(t.token, t.special),
            str(t.token_id),
            Text(f"{t.prob:.4f}", style=style),
            Text(fmt(t.loss), style=style),
            Text(str(t.rank), style="green" if t.rank == 1 else ""),
            top,
        ]
        if top_k:
            alts = Text()
            for i, alt in enumerate(t.top_k):
                if i:
                    alts.append("  ")
                alts.append_text(visible(alt.token, alt.token_id == t.token_id and False))
                alts.append(f" {alt.prob:.2f}", style="bold green" if alt.token_id == t.token_id else "dim")
            row.append(alts)
        table.add_row(*row)
    return table


def summary_table(result: ScoreResult) -> Table:
    s = result.summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    headline = {"mean": s.mean, "sum": s.sum}.get(s.reduction)
    grid.add_row("mean loss", Text(fmt(s.mean), style=loss_style(s.mean)))
    grid.add_row("sum", fmt(s.sum))
    grid.add_row("scored tokens", str(s.count))
    grid.add_row("perplexity", fmt(s.perplexity, 3) if s.perplexity is not None else "overflow")
    grid.add_row(
        "greedy hits",
        f"{s.greedy_hits}/{s.count}" + ("  (the answer is the greedy continuation)" if s.is_greedy else ""),
    )
    if s.label_smoothing:
        grid.add_row("label smoothing", f"{s.label_smoothing}  (mean NLL without it: {fmt(s.mean_nll)})")
    if s.reduction != "mean":
        grid.add_row(
            f"reduction={s.reduction}", fmt(headline) if headline is not None else f"{len(s.per_token)} values (--json)"
        )
    if s.model_loss is not None:
        ok = s.verify_abs_diff is not None and s.verify_abs_diff < 1e-4
        grid.add_row(
            "model's own loss",
            Text(f"{fmt(s.model_loss, 6)}  |diff| = {s.verify_abs_diff:.2e}", style="green" if ok else "bold red"),
        )
    return grid


def sequence_view(sequence: tuple[SequenceToken, ...], special_ids: set[int]) -> Text:
    """The whole input: masked tokens dim, scored tokens on a background coloured by their loss."""
    text = Text()
    for i, tok in enumerate(sequence):
        piece = visible(tok.token, tok.token_id in special_ids)
        if tok.scored and tok.loss is not None:
            piece.stylize(loss_style(tok.loss, _HEAT_BG))
        else:
            piece.stylize("dim")
            if i % 2:
                piece.stylize("underline")  # alternate underline so token boundaries stay visible
        text.append_text(piece)
        if tok.token == "\n" or tok.token.endswith("\n"):
            text.append("\n")
    return text


def render_result(result: ScoreResult, console: Console | None = None) -> None:
    console = console or Console()
    special = {t.token_id for t in result.tokens if t.special}
    console.print(
        Text.assemble(
            ("model ", "dim"),
            (result.model, "bold"),
            ("  device ", "dim"),
            result.device,
            ("  dtype ", "dim"),
            result.dtype,
        )
    )
    legend = Text.assemble(
        ("masked", "dim"),
        "  scored loss: ",
        ("<0.5", "on dark_green"),
        " ",
        ("<2", "black on yellow"),
        " ",
        ("<4", "black on dark_orange"),
        " ",
        ("≥4", "on red"),
        "   ␣ space  ↵ newline  ⇥ tab",
    )
    console.print(
        Panel(Group(sequence_view(result.sequence, special), Text(), legend), title="sequence", title_align="left")
    )
    top_k = max((len(t.top_k) for t in result.tokens), default=0)
    console.print(token_table(result.tokens, top_k))
    console.print(summary_table(result))
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))
