"""How figures and tokens are shown, in one place for the terminal, the HTML and the Markdown reports.

Pure Python (no rich, no torch): ``cli/render.py`` and ``report.py`` both call these, so a token or a loss
reads the same in all three outputs and the three can be compared by eye.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Whitespace made visible, as the terminal shows it.
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
#: Loss thresholds (nats) of the colour scale's bins: p > 0.61, p > 0.14, p > 0.02, below.
LOSS_BINS = (0.5, 2.0, 4.0)
#: The one loss colour scale of every output: bin k of ``LOSS_BINS`` as (label, background, text on it). The
#: terminal (and so the SVG, its recording) and the HTML reports take their colours from here, the Markdown
#: legend its labels. Viridis: lightness falls as the loss rises, so the bins read in grey print and for
#: colour-blind readers; a figure is always shown on its bin's background, so it reads on any terminal.
LOSS_SCALE = (
    ("< 0.5", "#fde725", "#000000"),
    ("0.5 to 2", "#5ec962", "#000000"),
    ("2 to 4", "#21918c", "#ffffff"),
    ("≥ 4", "#440154", "#ffffff"),
)
SPARK = "▁▂▃▄▅▆▇█"


def _escaped(ch: str) -> str:
    # Control and format characters (U+202E, zero-width joiners, ...) as escapes: they would reorder or hide text.
    return ch if ch.isprintable() else f"\\x{ord(ch):02x}"


def shown_token(token: str, special: bool = False, raw: str | None = None) -> str:
    """The token with whitespace and control characters made visible; special tokens as they are spelled.

    An empty token is shown as ``∅``; ``raw``, the hex bytes of a token that is part of a character (the
    JSON's ``bytes``), as ``<F0 9F>`` instead of the replacement character every such token decodes to.
    """
    if raw is not None and not special:
        return f"<{raw}>"
    if special:
        return "".join(_escaped(ch) for ch in token) or "∅"
    return "".join(VISIBLE.get(ch) or _escaped(ch) for ch in token) or "∅"


def printable(text: str) -> str:
    """User text other than tokens (ids, paths, a command line): every non-printable character escaped."""
    return "".join(ch if ch == " " else _escaped(ch) for ch in text)


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure as every output shows it: 4 decimals, or scientific notation from a million on; ``-`` for none."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"


def fmt_pm(value: float | None, stderr: float | None = None, digits: int = 4) -> str:
    """``fmt(value)``, followed by `` ± stderr`` when its standard error is known."""
    return fmt(value, digits) if stderr is None else f"{fmt(value, digits)} ± {fmt(stderr, digits)}"


def prob_text(prob: float) -> str:
    """A probability in 3 characters or so: .41, .05, <.01."""
    if prob >= 0.995:
        return "1.0"
    return f"{prob:.2f}".lstrip("0") if prob >= 0.005 else "<.01"


def loss_bin(loss: float) -> int:
    """Which bin of the colour scale a loss falls in: 0 (< 0.5) to 3 (>= 4)."""
    return next((i for i, limit in enumerate(LOSS_BINS) if loss < limit), len(LOSS_BINS))


def loss_css(scope: str = "") -> str:
    """The HTML reports' CSS for the loss bins (``.b0`` .. ``.b3``, and their bars in SVG), from ``LOSS_SCALE``;
    ``scope`` (a selector such as ``.ce-nb``) confines the cells' rules to it, as a notebook fragment needs."""
    prefix = f"{scope} " if scope else ""
    cells = " ".join(f"{prefix}.b{k} {{ background: {bg}; color: {fg}; }}" for k, (_, bg, fg) in enumerate(LOSS_SCALE))
    bars = " ".join(f"svg .b{k} {{ fill: {bg}; }}" for k, (_, bg, _fg) in enumerate(LOSS_SCALE))
    return f"{cells}\n{bars}"


def sparkline(values: Sequence[float], width: int, top: float | None = None) -> str:
    """``values`` as one line of block characters, at most ``width`` of them (each the max of its stretch).

    Heights are linear from 0 to ``top`` (default: the largest value), so a flat line of low losses stays low.
    """
    if not values or width < 1:
        return ""
    columns = buckets(values, width)
    top = max(columns) if top is None else top
    if top <= 0:
        return SPARK[0] * len(columns)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in columns)


def buckets(values: Sequence[float], width: int) -> list[float]:
    """``values`` cut into at most ``width`` consecutive stretches, each shown by its largest value."""
    n = len(values)
    if n <= width:
        return list(values)
    return [max(values[i * n // width : (i + 1) * n // width]) for i in range(width)]


def histogram(values: Sequence[float], target_bins: int = 10) -> dict[str, Any]:
    """Counts of ``values`` in equal bins with round edges from 0 (or below the smallest value) up.

    ``edges`` has one more entry than ``counts``; bin k holds edges[k] <= v < edges[k+1], the last bin is
    closed. About ``target_bins`` bins (between half and twice as many).
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"edges": [], "counts": []}
    lo, hi = min(0.0, min(finite)), max(finite)
    width = _nice_step((hi - lo) / target_bins) if hi > lo else 0.5
    start = math.floor(lo / width)
    bins = max(1, math.ceil((hi - start * width) / width))
    edges = [float(round((start + k) * width, 10)) for k in range(bins + 1)]
    counts = [0] * bins
    for v in finite:
        k = max(0, min(bins - 1, int((v - edges[0]) // width)))
        counts[k] += 1
    return {"edges": edges, "counts": counts}


def _nice_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
