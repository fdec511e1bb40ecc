"""Rich output of `audit`: one line per check, then the first failing records of each with their tokens.

Tokens are user data: every one goes into ``Text``, never into markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ce_inspect.cli.render import HEAT_BG, loss_key, loss_style, visible
from ce_inspect.display import fmt, fmt_pm

if TYPE_CHECKING:
    from ce_inspect.audit import AuditReport, CheckResult, ShownFinding, TokenView

_OFFENDING = "bold white on red"


def token_strip(tokens: tuple[TokenView, ...]) -> Text:
    """The record's tokens around the findings: offending ones on red (framed by ▸◂), trained ones bold (or on
    their loss colour when a model ran), untrained ones dim; ``…`` where tokens are left out."""
    text = Text()
    previous: int | None = None
    for tok in tokens:
        if previous is not None and tok.index != previous + 1:
            text.append(" … ", style="dim")
        elif previous is None and tok.index > 0:
            text.append("… ", style="dim")
        previous = tok.index
        piece = visible(tok.token, tok.special)
        if tok.offending:
            piece.stylize(_OFFENDING)
            text.append("▸", style="red")
            text.append_text(piece)
            text.append("◂", style="red")
            continue
        if tok.trained:
            piece.stylize(loss_style(tok.loss, HEAT_BG) if tok.loss is not None else "bold")
        else:
            piece.stylize("dim")
            if tok.index % 2:
                piece.stylize("underline")  # alternate underline so token boundaries stay visible
        text.append_text(piece)
    return text


def legend(with_loss: bool) -> Text:
    parts: list[Any] = [("▸offending◂", _OFFENDING), "  ", ("trained", "bold"), "  ", ("not trained", "dim")]
    if with_loss:
        parts += ["   trained loss: ", *loss_key()]
    parts += ["   ", ("special", "bold magenta"), "  ␣ space  ↵ newline  ⇥ tab"]
    return Text.assemble(*parts)


def _status(check: CheckResult, gate: tuple[str, ...]) -> Text:
    if not check.ran:
        return Text("not run", style="dim")
    if not check.failed:
        return Text("✓ pass", style="green")
    style = "bold red" if check.name in gate else "yellow"
    return Text(f"✗ {check.failed} failed", style=style)


#: Narrower than this, the checks table leaves out "what it means": the meanings follow the table, one per line.
WIDE = 100


def _meaning(c: CheckResult) -> Text:
    # What a check means matters where it failed; elsewhere only its note (why it did not run, ...).
    about = Text(c.description if c.failed else "")
    if c.note and (c.failed or not c.ran):
        about.append(("\n" if c.failed else "") + c.note, style="dim")
    return about


def checks_table(report: AuditReport, width: int | None = None) -> Group:
    """One row per check; on a terminal narrower than ``WIDE`` the meanings follow the table, so that its
    columns and borders keep their width."""
    wide = width is None or width >= WIDE
    table = Table(title=f"Checks ({report.records} records)", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("checked", justify="right", no_wrap=True)
    table.add_column("gate", justify="center", no_wrap=True)
    if wide:
        table.add_column("what it means")
    below: list[Text] = []
    for c in report.checks:
        about = _meaning(c)
        cells = [
            Text(c.name, style="bold"),
            _status(c, report.fail_on),
            str(c.checked) if c.ran else "-",
            Text("●", style="red") if c.name in report.fail_on else "",
        ]
        table.add_row(*cells, *([about] if wide else []))
        if not wide and about.plain:
            below.append(Text.assemble((c.name, "bold"), ": ", about))
    table.caption = "gate ●: --fail-on (exit 3 when it fails)"
    table.caption_justify = "left"
    return Group(table, *below)


def _record_name(shown: ShownFinding) -> str:
    return f"line {shown.line}" + ("" if shown.id is None else f" (id {shown.id!r})")


def _boundary_lines(detail: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    for name in ("alone", "together"):
        line = Text("… ", style="dim")
        previous = "prompt"
        for tok in detail[name]:
            if tok["part"] != previous:
                line.append("┃ ", style="bold cyan")
                previous = tok["part"]
            piece = visible(tok["token"])
            piece.stylize("dim" if tok["part"] == "prompt" else "bold")
            line.append_text(piece)
            line.append(" ")
        grid.add_row("separately" if name == "alone" else "together", line)
    return grid


def finding_panel(check: CheckResult) -> Panel:
    parts: list[Any] = []
    for shown in check.examples:
        head = Text(_record_name(shown), style="bold")
        head.append(": ")
        head.append(shown.finding.message)
        if shown.mean_loss is not None:
            head.append(f"  (mean loss {fmt(shown.mean_loss)})", style="dim")
        parts.append(head)
        if shown.finding.detail and "alone" in shown.finding.detail:
            parts.append(_boundary_lines(shown.finding.detail))
            parts.append(
                Text(
                    "separately: prompt and completion tokenized on their own, ┃ at the prompt's end; together: "
                    "prompt+completion as one string, ┃ where its tokens part from the prompt's (TRL's split)",
                    style="dim",
                )
            )
        else:
            parts.append(token_strip(shown.tokens))
        parts.append(Text())
    more = check.failed - len(check.examples)
    if more > 0:
        lines = ", ".join(str(r.line) for r in check.records[len(check.examples) : len(check.examples) + 12])
        parts.append(Text(f"and {more} more: lines {lines}{' …' if more > 12 else ''} (--json lists all)", style="dim"))
    return Panel(Group(*parts), title=f"{check.name}: {check.failed} records", title_align="left")


def render_audit(report: AuditReport, console: Console | None = None) -> None:
    console = console or Console()
    head = Text.assemble(("audit ", "dim"), (report.input, "bold"), ("  records ", "dim"), str(report.records))
    if report.model is not None:
        head.append_text(Text.assemble(("  model ", "dim"), report.model))
    else:
        head.append_text(Text.assemble(("  tokenizer ", "dim"), report.tokenizer, (" (no model)", "dim")))
    if report.max_length is not None:
        head.append_text(Text.assemble(("  max length ", "dim"), str(report.max_length)))
    console.print(head)
    console.print(checks_table(report, width=console.width))
    failing = [c for c in report.checks if c.failed and c.examples]
    if failing:
        console.print(legend(any(t.loss is not None for c in failing for s in c.examples for t in s.tokens)))
    for check in failing:
        panel = finding_panel(check)
        panel.border_style = "red" if check.name in report.fail_on else "yellow"
        console.print(panel)
    if report.loss is not None:
        loss = report.loss
        ew = loss.get("example_weighted_mean_loss")
        console.print(
            Text.assemble(
                ("loss ", "dim"),
                f"token-weighted mean {fmt(loss.get('token_weighted_mean_loss'))}, "
                f"example-weighted mean {fmt_pm(ew, loss.get('example_weighted_mean_loss_stderr'))} over "
                f"{loss.get('examples')} "
                f"records ({loss.get('scored_tokens')} trained tokens)",
                f", {fmt(loss['bits_per_byte'])} bits per byte" if loss.get("bits_per_byte") is not None else "",
                f"; {loss['resumed']} read back from the output (--resume)" if loss.get("resumed") else "",
            )
        )
        for u in loss.get("unscored", [])[:5]:
            console.print(Text(f"not scored: line {u['line']}: {u['reason']}", style="yellow"))
    for s in report.skipped[:10]:
        console.print(Text(f"skipped: line {s['line']}: {s['reason']}", style="yellow"))
    if len(report.skipped) > 10:
        console.print(Text(f"... and {len(report.skipped) - 10} more skipped (--json lists all)", style="yellow"))
    if report.output:
        console.print(Text.assemble(("per-record results: ", "dim"), report.output))
    verdict = report.gate_failed
    if verdict:
        console.print(Text(f"FAIL: {', '.join(verdict)} (--fail-on)", style="bold red"))
    elif report.failed_checks:
        console.print(Text(f"pass (--fail-on); findings: {', '.join(report.failed_checks)}", style="yellow"))
    else:
        console.print(Text("pass: no check failed", style="green"))
