"""Rich output of `batch`: the progress bar (stderr, terminals only) and the data-set summary tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ce_inspect.cli.render import HEAT_BAR, loss_figure, loss_style, visible
from ce_inspect.display import fmt, fmt_pm

if TYPE_CHECKING:
    from ce_inspect.dataset import DatasetSummary, FilterCounts, Scan


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- tok/s" if speed is None else f"{speed:,.0f} tok/s", style="cyan")


@contextmanager
def batch_progress(console: Console, scan: Scan) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over the examples still to score; yields the callback ``run_scan`` reports batches to.

    The bar advances in tokens, so its ETA follows the work left rather than the count of examples. It is
    drawn only on a terminal; when stderr is a file or a pipe nothing is printed at all.
    """
    pending = scan.pending
    if not console.is_terminal or not pending:
        yield lambda examples, tokens: None
        return
    done = 0
    progress = Progress(
        TextColumn("scoring"),
        BarColumn(),
        TextColumn("{task.fields[examples]}/{task.fields[total_examples]} examples"),
        _TokensPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        # stdout may carry the JSON lines: nothing of it may be routed through the bar's console.
        redirect_stdout=False,
        redirect_stderr=False,
    )
    task = progress.add_task("batch", total=sum(e.length for e in pending), examples=0, total_examples=len(pending))

    def advance(examples: int, tokens: int) -> None:
        nonlocal done
        done += examples
        progress.update(task, advance=tokens, examples=done)

    with progress:
        yield advance


def render_dataset_summary(summary: DatasetSummary, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_header(summary))
    console.print(_figures(summary))
    histogram = loss_histogram(summary.example_loss_histogram)
    if histogram is not None:
        console.print(histogram)
    for table in (_worst_examples(summary), _worst_tokens(summary), _skipped(summary)):
        if table is not None:
            console.print(table)


def _header(s: DatasetSummary) -> Text:
    return Text.assemble(
        ("data set ", "dim"),
        (s.input, "bold"),
        ("  ->  ", "dim"),
        s.output or "stdout",
        ("  model ", "dim"),
        s.model,
        ("  ", ""),
        (f"{s.device} {s.dtype}", "dim"),
    )


def _bootstrap_note(s: DatasetSummary) -> str:
    if s.bootstrap is None or s.token_weighted_mean_loss_stderr is None:
        return ""
    resamples, seed = s.bootstrap["resamples"], s.bootstrap["seed"]
    return f"; ± bootstrap standard error, {resamples:,} resamples of the examples, seed {seed}"


def _figures(s: DatasetSummary) -> Table:
    """The data-set figures: counts, the two means, perplexity, and how this run batched its work."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(style="dim")
    notes = []
    if s.resumed:
        notes.append(f"{s.resumed} read back from the output (--resume)")
    if s.skipped:
        notes.append(f"{_count(len(s.skipped), 'invalid line')} skipped")
    grid.add_row("examples", f"{s.examples}", ", ".join(notes))
    grid.add_row("scored tokens", str(s.scored_tokens), "")
    if s.token_weighted_mean_loss is not None:
        grid.add_row(
            "token-weighted mean loss",
            loss_figure(
                fmt_pm(s.token_weighted_mean_loss, s.token_weighted_mean_loss_stderr), s.token_weighted_mean_loss
            ),
            "sum / tokens, as CrossEntropyLoss(mean) over the whole set" + _bootstrap_note(s),
        )
    if s.example_weighted_mean_loss is not None:
        grid.add_row(
            "example-weighted mean loss",
            loss_figure(
                fmt_pm(s.example_weighted_mean_loss, s.example_weighted_mean_loss_stderr), s.example_weighted_mean_loss
            ),
            "mean of per-example means" + ("; ± its standard error" if s.example_weighted_mean_loss_stderr else ""),
        )
    grid.add_row("loss sum", fmt(s.loss_sum), "")
    if s.mean_nll is not None:
        ppl = fmt(s.perplexity, 3) if s.perplexity is not None else "overflow"
        grid.add_row("perplexity", ppl, "exp(token-weighted mean NLL)")
        if s.label_smoothing:
            grid.add_row(
                "mean NLL", fmt_pm(s.mean_nll, s.mean_nll_stderr), f"without label smoothing {s.label_smoothing}"
            )
        grid.add_row("greedy hits", f"{s.greedy_hits}/{s.scored_tokens}", "targets that are the top choice")
    if s.mean_entropy is not None:
        grid.add_row("mean entropy", fmt(s.mean_entropy), "nats, of the model's distribution at the scored tokens")
    if s.bits_per_byte is not None:
        grid.add_row(
            "bits per byte",
            fmt_pm(s.bits_per_byte, s.bits_per_byte_stderr),
            f"sum NLL / ln 2 / {s.scored_bytes:,} scored UTF-8 bytes",
        )
    if s.filter is not None:
        grid.add_row("kept", str(s.filter.kept), _filter_rule(s.filter, s.filter.kept_file, "<"))
        grid.add_row("dropped", str(s.filter.dropped), _filter_rule(s.filter, s.filter.dropped_file, ">="))
    b = s.batching
    if b.batches:
        speed = f"{b.tokens_per_second:,.0f} tok/s" if b.tokens_per_second else ""
        padding = f", {b.padding_fraction:.0%} padding" if b.padding_fraction is not None else ""
        grid.add_row(
            "this run",
            f"{b.seconds:.1f} s",
            f"{_count(b.examples, 'example')} in {_count(b.batches, 'batch')}{padding}, {speed}",
        )
    return grid


def _filter_rule(f: FilterCounts, file: str | None, below: str) -> str:
    """What one side of ``--keep-below/--keep-above`` holds: its rule and its file."""
    kept = below == "<"
    rules = []
    if f.above is not None:
        rules.append(f"{f.by} {'>' if kept else '<='} {f.above:g}")
    if f.below is not None:
        rules.append(f"{f.by} {below} {f.below:g}")
    rule = (" and " if kept else " or ").join(rules)
    return f"{rule}, in {file}" if file else f"{rule}, not written"


def loss_histogram(histogram: dict[str, list[Any]], bar_width: int = 30) -> Table | None:
    """The per-example mean losses as horizontal bars, one per bin of the summary's histogram."""
    edges, counts = histogram.get("edges", []), histogram.get("counts", [])
    if not counts:
        return None
    most = max(counts) or 1
    table = Table.grid(padding=(0, 1))
    table.title = "Mean loss per example"
    table.title_justify = "left"
    table.add_column(justify="right", style="dim")
    table.add_column()
    table.add_column(justify="right")
    for k, n in enumerate(counts):
        mid = (edges[k] + edges[k + 1]) / 2
        bar = "█" * round(bar_width * n / most) or ("▏" if n else "")
        table.add_row(f"{edges[k]:g} to {edges[k + 1]:g}", Text(bar, style=loss_style(mid, HEAT_BAR)), str(n))
    return table


def _worst_examples(s: DatasetSummary) -> Table | None:
    if not s.worst_examples:
        return None
    table = Table(title=f"Worst {len(s.worst_examples)} examples by mean loss", title_justify="left")
    table.add_column("line", justify="right", style="dim")
    table.add_column("id")
    table.add_column("mean loss", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("sum", justify="right")
    for e in s.worst_examples:
        table.add_row(
            str(e.line),
            Text("" if e.id is None else str(e.id)),
            loss_figure(fmt(e.mean), e.mean),
            str(e.count),
            fmt(e.loss_sum),
        )
    return table


def _worst_tokens(s: DatasetSummary) -> Table | None:
    if not s.worst_tokens:
        return None
    table = Table(title=f"Highest-loss tokens across the data set (top {len(s.worst_tokens)})", title_justify="left")
    table.add_column("line", justify="right", style="dim")
    table.add_column("id")
    table.add_column("#", justify="right", style="dim")
    table.add_column("target")
    table.add_column("loss", justify="right")
    table.add_column("prob", justify="right")
    table.add_column("rank", justify="right")
    for t in s.worst_tokens:
        style = loss_style(t.loss)
        table.add_row(
            str(t.line),
            Text("" if t.id is None else str(t.id)),
            str(t.index),
            visible(t.token, t.segment == "eos"),
            Text(fmt(t.loss), style=style),
            Text(f"{t.prob:.4f}", style=style),
            str(t.rank),
        )
    return table


def _skipped(s: DatasetSummary) -> Table | None:
    if not s.skipped:
        return None
    table = Table(title=f"Skipped {_count(len(s.skipped), 'invalid line')}", title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("id")
    table.add_column("reason")
    for k in s.skipped:
        table.add_row(str(k.line), Text("" if k.id is None else str(k.id)), Text(k.reason))
    return table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('ch') else 's'}"
