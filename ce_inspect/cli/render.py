"""Rich rendering of a ScoreResult. Every token is user data: it goes into ``Text``, never into markup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ce_inspect.contract import ScoreResult, SequenceToken, TokenScore, TurnSummary
from ce_inspect.display import LOSS_BINS, LOSS_SCALE, buckets, fmt, prob_text, shown_token, sparkline
from ce_inspect.text import boundary_note

# Loss thresholds (nats) for the colour scale: p > 0.61, p > 0.14, p > 0.02, below.
#: The loss bins' styles, from the one scale of every output (``display.LOSS_SCALE``): each figure on its
#: bin's background, as the HTML reports show it.
HEAT_BG = tuple((limit, f"{fg} on {bg}") for limit, (_, bg, fg) in zip((*LOSS_BINS, float("inf")), LOSS_SCALE))
_HEAT = HEAT_BG  # figures in tables take the strip's styles: one scale
#: The same colours for bars (sparklines, histograms): the glyph in its bin's colour.
HEAT_BAR = tuple((limit, bg) for limit, (_, bg, _fg) in zip((*LOSS_BINS, float("inf")), LOSS_SCALE))
#: Segments that a masked layout trains on; the others are context (prompt, template, other roles).
_TARGET_SEGMENTS = {"answer", "eos", "assistant", "eot"}
_TOP_K_WIDTH = 10  # characters of each alternative shown in the table


def visible(token: str, special: bool = False, raw: str | None = None) -> Text:
    """The token with whitespace and control characters made visible; special tokens highlighted.

    ``raw``: the hex bytes of a token that does not decode on its own (part of a character), shown as
    ``<F0 9F>`` instead of the "\ufffd" every such token decodes to.
    """
    if raw is not None and not special:
        return Text(shown_token(token, raw=raw), style="cyan")
    return Text(shown_token(token, special), style="bold magenta" if special else "")


def clipped(text: Text, width: int) -> Text:
    if len(text) <= width:
        return text
    text = text[: width - 1]
    text.append("…", style="dim")
    return text


def loss_style(loss: float, scale: tuple[tuple[float, str], ...] = _HEAT) -> str:
    # NaN and +inf are below no limit: they take the worst style (scoring refuses them; this must never raise).
    return next((style for limit, style in scale if loss < limit), scale[-1][1])


def loss_figure(text: str, loss: float) -> Text:
    """A figure (``text``) on the background of ``loss``'s bin, the background on the figure only."""
    return Text().append(text, style=loss_style(loss))


def turn_label(turn: int | None, role: str) -> str:
    return f"{turn} {role}" if turn is not None else role


def top_k_cell(t: TokenScore) -> Text:
    """The model's K most likely next tokens, compactly: ``token .41`` each, the target in bold green."""
    cell = Text()
    for i, alt in enumerate(t.top_k):
        if i:
            cell.append("  ")
        is_target = alt.token_id == t.token_id
        shown = clipped(visible(alt.token, t.special and is_target, alt.bytes), _TOP_K_WIDTH)
        if is_target:
            shown.stylize("bold green underline")
        cell.append_text(shown)
        cell.append(f" {prob_text(alt.prob)}", style="bold green" if is_target else "dim")
    return cell


@dataclass
class Column:
    """One column of a table that fits the terminal (``fit_columns``): its header, how much it matters on a
    narrow terminal, and its cells."""

    header: str
    keep: int  # columns with the lowest ``keep`` go first when the line is too narrow; ALWAYS never goes
    options: dict[str, Any]
    cells: list[Any] = field(default_factory=list)

    def width(self) -> int:
        widest = max((cell_len(c.plain if isinstance(c, Text) else str(c)) for c in self.cells), default=0)
        natural = max(widest, cell_len(self.header), self.options.get("min_width") or 0)
        return min(natural, self.options.get("max_width") or natural)


ALWAYS = 100  # target, prob, loss: what the table is for
FLEXIBLE_MIN = 20  # the top-k column shrinks (cut with …) down to this many characters


def token_table(
    tokens: tuple[TokenScore, ...], top_k: int, roles: list[str] | None = None, width: int | None = None
) -> Table:
    """One row per scored target; a section per turn for conversations, and a "part" column (the segment)
    when context tokens are scored too (--no-mask-prompt).

    With top-k the alternatives replace the single "top choice" column, on one line per row, cut with
    "…" where the console (``width``) is too narrow; ✓ marks a greedy target. On a narrow console the less
    important columns go first (id, top choice, part, turn, #, top-k, rank); target, prob and loss stay.
    """
    columns, sections = _token_columns(tokens, top_k, roles)
    columns, tight = fitted(columns, width, "target")
    table = Table(
        padding=(0, 0) if tight else (0, 1),
        title=f"Per-token loss ({len(tokens)} scored tokens)",
        title_justify="left",
        caption="✓ the target is the model's greedy choice"
        + ("; top-k: target in green (cut with … when the terminal is narrow; --json has all)" if top_k else ""),
        caption_justify="left",
        expand=False,
    )
    for column in columns:
        table.add_column(column.header, **column.options)
    for i in range(len(tokens)):
        if i in sections:
            table.add_section()
        table.add_row(*(column.cells[i] for column in columns))
    return table


def _token_columns(
    tokens: tuple[TokenScore, ...], top_k: int, roles: list[str] | None
) -> tuple[list[Column], set[int]]:
    """Every column the table can show, with its cells, and the rows that start a new section."""
    by_turn = roles is not None
    by_part = any(t.segment not in _TARGET_SEGMENTS for t in tokens)
    last = max((t.index for t in tokens), default=0)
    widest_id = max((t.token_id for t in tokens), default=0)
    turn = Column("turn", 30, {"style": "dim", "no_wrap": True, "min_width": 4})
    part = Column("part", 25, {"style": "cyan", "no_wrap": True})
    index = Column("#", 40, {"justify": "right", "style": "dim", "no_wrap": True, "min_width": len(str(last))})
    target = Column("target", ALWAYS, {"no_wrap": True, "min_width": 6, "max_width": 24})
    ids = Column("id", 10, {"justify": "right", "style": "dim", "no_wrap": True, "min_width": len(str(widest_id))})
    prob = Column("prob", ALWAYS, {"justify": "right", "no_wrap": True, "min_width": 6})
    loss = Column("loss", ALWAYS, {"justify": "right", "no_wrap": True, "min_width": 6})
    rank = Column("rank", 50, {"justify": "right", "no_wrap": True, "min_width": 4})
    entropy = Column("entropy", 45, {"justify": "right", "no_wrap": True, "min_width": 7})  # asked for: kept longer
    with_entropy = bool(tokens) and tokens[0].entropy is not None
    if top_k:
        top = Column(f"top {top_k}", 45, {"no_wrap": True, "overflow": "ellipsis"})  # asked for: kept longer
    else:
        top = Column("top choice", 20, {"no_wrap": True})
    sections: set[int] = set()
    previous: object = object()
    previous_part: str | None = None
    for i, t in enumerate(tokens):
        if by_turn:
            if t.turn != previous:
                if previous is not object:
                    sections.add(i)
                previous_part = None  # a new section names its part again
            turn.cells.append(("-" if t.turn is None else str(t.turn)) if t.turn != previous else "")
            previous = t.turn
        if by_part:
            if not by_turn and previous_part is not None and t.segment != previous_part:
                sections.add(i)
            part.cells.append(t.segment if t.segment != previous_part else "")
            previous_part = t.segment
        style = loss_style(t.loss)
        index.cells.append(str(t.index))
        target.cells.append(visible(t.token, t.special, t.bytes))
        ids.cells.append(str(t.token_id))
        prob.cells.append(Text(f"{t.prob:.4f}", style=style))
        loss.cells.append(Text(fmt(t.loss), style=style))
        rank.cells.append(Text(f"{t.rank} ✓", style="green") if t.is_greedy else Text(str(t.rank)))
        entropy.cells.append(fmt(t.entropy))
        if top_k:
            top.cells.append(top_k_cell(t))
        elif t.is_greedy:
            top.cells.append(Text("✓", style="green"))
        else:
            shown = clipped(visible(t.top_token, False, t.top_bytes), _TOP_K_WIDTH)
            top.cells.append(shown.append(f" {prob_text(t.top_prob)}", "dim"))
    columns = [*([turn] if by_turn else []), *([part] if by_part else []), index, target, ids, prob, loss, rank]
    columns += [*([entropy] if with_entropy else []), top]
    return columns, sections


def fitted(columns: list[Column], width: int | None, cut: str) -> tuple[list[Column], bool]:
    """``columns`` fitted to ``width`` (None: as they are), and whether even the kept ones are too wide with
    their padding: then the table drops its padding and the column named ``cut`` is cut with …, rather
    than a column lost."""
    if not width:
        return columns, False
    columns = fit_columns(columns, width)
    tight = needed(columns, None) > width
    if tight:
        column = next(c for c in columns if c.header == cut)
        others = sum(c.width() + 1 for c in columns if c is not column)
        column.options.update(max_width=max(3, width - 2 - others), overflow="ellipsis")
    return columns, tight


def fit_columns(columns: list[Column], width: int) -> list[Column]:
    """The columns that fit ``width``, dropping the least important first; the top-k column takes what is left."""
    columns = list(columns)
    flexible = next((c for c in columns if c.options.get("overflow") == "ellipsis"), None)
    while needed(columns, flexible) > width:
        droppable = [c for c in columns if c.keep < ALWAYS]
        if not droppable:
            break
        columns.remove(min(droppable, key=lambda c: c.keep))
    if flexible in columns:
        rest = needed([c for c in columns if c is not flexible], None)
        flexible.options["max_width"] = max(FLEXIBLE_MIN, width - rest - 3)
    return columns


def needed(columns: list[Column], flexible: Column | None) -> int:
    """Characters the table takes: one space of padding either side of each column, a border on its right
    and one more on the left; ``flexible`` counts at its smallest."""
    return 1 + sum((min(c.width(), FLEXIBLE_MIN) if c is flexible else c.width()) + 3 for c in columns)


def summary_table(result: ScoreResult) -> Table:
    s = result.summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    headline = {"mean": s.mean, "sum": s.sum}.get(s.reduction)
    grid.add_row("mean loss", loss_figure(fmt(s.mean), s.mean))
    grid.add_row("sum", fmt(s.sum))
    grid.add_row("scored tokens", str(s.count))
    grid.add_row("perplexity", fmt(s.perplexity, 3) if s.perplexity is not None else "overflow")
    if s.sum_logprob is not None:
        grid.add_row("log-likelihood", f"{fmt(s.sum_logprob)}  (sum of log p over the scored tokens)")
    if s.mean_entropy is not None:
        grid.add_row("mean entropy", f"{fmt(s.mean_entropy)}  (nats, of the model's distribution at each scored token)")
    grid.add_row(
        "greedy hits",
        f"{s.greedy_hits}/{s.count}"
        + (
            "  (the scored tokens are the greedy continuation: is_greedy)"
            if s.is_greedy
            else "  (not the greedy continuation)"
        ),
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


def turns_table(turns: tuple[TurnSummary, ...]) -> Table:
    table = Table(title="Per turn (the overall mean above is over all scored tokens)", title_justify="left")
    table.add_column("turn")
    table.add_column("tokens", justify="right")
    table.add_column("mean loss", justify="right")
    table.add_column("sum", justify="right")
    table.add_column("perplexity", justify="right")
    table.add_column("greedy", justify="right")
    for t in turns:
        table.add_row(
            turn_label(t.turn, t.role),
            str(t.count),
            loss_figure(fmt(t.mean), t.mean),
            fmt(t.sum),
            fmt(t.perplexity, 3) if t.perplexity is not None else "overflow",
            Text(f"{t.greedy_hits}/{t.count}", style="green" if t.is_greedy else ""),
        )
    return table


def sequence_view(
    sequence: tuple[SequenceToken, ...], special_ids: set[int] | None = None, roles: list[str] | None = None
) -> Text:
    """The heat strip: the whole input, masked tokens dim, scored tokens on a background coloured by their loss.

    Conversations start a line at each message, labelled with its index and role. Where context tokens
    are scored too (--no-mask-prompt), they are italic and ``┃`` marks each boundary between context and
    the answer, so the two parts stay apart.
    """
    text = Text()
    context_scored = any(t.scored and t.segment not in _TARGET_SEGMENTS for t in sequence)
    previous_turn: object = object()
    previous_target: bool | None = None
    for i, tok in enumerate(sequence):
        if roles is not None and tok.turn != previous_turn:
            if text and not text.plain.endswith("\n"):
                text.append("\n")
            role = roles[tok.turn] if tok.turn is not None and tok.turn < len(roles) else "template"
            text.append(f"{turn_label(tok.turn, role)} ▸ ", style="dim cyan")
            previous_turn = tok.turn
        is_target = tok.segment in _TARGET_SEGMENTS
        if context_scored and previous_target is not None and is_target != previous_target:
            text.append("┃", style="bold cyan")
        previous_target = is_target
        special = tok.special or (special_ids is not None and tok.token_id in special_ids)
        piece = visible(tok.token, special, tok.bytes)
        if tok.scored and tok.loss is not None:
            piece.stylize(loss_style(tok.loss, HEAT_BG))
            if context_scored and not is_target:
                piece.stylize("italic")
        else:
            piece.stylize("dim")
            if i % 2:
                piece.stylize("underline")  # alternate underline so token boundaries stay visible
        text.append_text(piece)
        if tok.token.endswith("\n"):
            text.append("\n")
    text.rstrip()
    return text


def loss_sparkline(tokens: tuple[TokenScore, ...], width: int) -> Text:
    """The loss of each scored token along the answer as one line of bars (0 to the largest loss), coloured
    as the strip; a long answer is squeezed to ``width`` (each bar the largest loss of its stretch)."""
    label = "loss along the answer "
    top = max((t.loss for t in tokens), default=0.0)
    worst = max(tokens, key=lambda t: t.loss) if tokens else None
    tail = f"  0 to {fmt(top)}" + (f" (#{worst.index})" if worst is not None else "")
    room = max(8, width - len(label) - len(tail))
    losses = [t.loss for t in tokens]
    line = Text(label, style="dim")
    for value, bar in zip(buckets(losses, room), sparkline(losses, room)):
        line.append(bar, style=loss_style(value, HEAT_BAR))
    return line.append(tail, style="dim")


def loss_key() -> list[tuple[str, str] | str]:
    """The loss bins of the strip, each in its own style, from ``HEAT_BG``: what every legend shows."""
    parts: list[tuple[str, str] | str] = []
    previous = None
    for limit, style in HEAT_BG:
        label = f"<{limit:g}" if limit != float("inf") else f"≥{previous:g}"
        parts += [" ", (label, style)] if parts else [(label, style)]
        previous = limit
    return parts


def heat_legend(context_scored: bool, width: int | None = None, partial_bytes: bool = False) -> Text:
    """The strip's key, one entry never split across lines: wrapped between entries to fit ``width``."""
    entries = [
        Text("masked", style="dim"),
        Text.assemble("scored loss: ", *loss_key()),
        Text("special", style="bold magenta"),
        Text("␣ space"),
        Text("↵ newline"),
        Text("⇥ tab"),
    ]
    if partial_bytes:
        entries.append(Text.assemble(("<F0 9F>", "cyan"), " bytes of part of a character"))
    lines = [entries]
    if context_scored:
        lines.append(
            [
                Text.assemble(("italic", "italic"), ": context tokens scored too (--no-mask-prompt)"),
                Text.assemble(("┃", "bold cyan"), ": context | answer boundary"),
            ]
        )
    legend = Text()
    for n, line in enumerate(lines):
        if n:
            legend.append("\n")
        used = 0
        for entry in line:
            if used and width and used + 2 + entry.cell_len > width:
                legend.append("\n")
                used = 0
            if used:
                legend.append("  ")
                used += 2
            legend.append_text(entry)
            used += entry.cell_len
    return legend


def boundary_panel(boundary: dict[str, Any]) -> Panel:
    """How separate and joint tokenization split this pair, token by token, with the split marked."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    for mode in ("separate", "joint"):
        line = Text("… " if boundary.get("start") else "", style="dim")
        previous = "prompt"
        for j, tok in enumerate(boundary[mode]):
            if tok["part"] != previous:
                line.append("┃ ", style="bold cyan")
                previous = tok["part"]
            piece = visible(tok["token"])
            piece.stylize("dim" if tok["part"] == "prompt" else "bold")
            line.append_text(piece)
            if j < len(boundary[mode]) - 1:
                line.append(" ")
        if previous == "prompt":
            line.append(" ┃", style="bold cyan")
        used = "  ← scored in this run" if mode == boundary["used"] else ""
        count = boundary["answer_tokens"][mode]
        grid.add_row(mode, line.append(f"   ({count} answer tokens){used}", style="dim"))
    body = Group(
        grid,
        Text(
            "┃ is the split: tokens after it are the answer and are scored. "
            "The scores depend on this choice (--tokenization separate|joint).",
            style="yellow",
        ),
    )
    return Panel(
        body, title="tokenization boundary: separate and joint differ", title_align="left", border_style="yellow"
    )


def render_result(result: ScoreResult, console: Console | None = None) -> None:
    console = console or Console()
    layout = result.layout
    roles = layout.get("roles") if layout.get("kind") == "chat" else None
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
    context_scored = any(t.scored and t.segment not in _TARGET_SEGMENTS for t in result.sequence)
    special = {t.token_id for t in result.tokens if t.special}
    console.print(
        Panel(
            Group(
                sequence_view(result.sequence, special, roles),
                loss_sparkline(result.tokens, console.width - 4),
                Text(),
                heat_legend(context_scored, console.width - 4, any(t.bytes for t in result.sequence)),
            ),
            title="sequence",
            title_align="left",
        )
    )
    boundary = layout.get("boundary") or {}
    if boundary.get("differs"):
        console.print(boundary_panel(boundary))
    top_k = max((len(t.top_k) for t in result.tokens), default=0)
    console.print(token_table(result.tokens, top_k, roles, width=console.width))
    console.print(summary_table(result))
    if len(result.turns) > 1:
        console.print(turns_table(result.turns))
    shown_boundary = boundary_note(boundary) if boundary.get("differs") else None
    for note in result.notes:
        if note != shown_boundary:
            console.print(Text(f"note: {note}", style="yellow"))
