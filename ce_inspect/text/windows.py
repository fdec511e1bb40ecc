"""Text longer than the model's context in sliding windows: the plan (which positions each window scores).

The protocol of the transformers perplexity guide ("Perplexity of fixed-length models"): windows of the
context's length start every ``stride`` tokens; each window scores only the tokens that no earlier window
scored, so every token after the first is scored exactly once, with as much left context as the window
allows (at least ``window - stride`` tokens once the first window is past). ``scoring.windows`` runs the plan.
"""

from __future__ import annotations

from ce_inspect.errors import UsageError
from ce_inspect.text.encoded import Encoded


def check_stride(stride: int | None, window: int | None) -> None:
    """Refuse a ``stride`` the window (the model's context; None: unknown) cannot take: an error of the
    option, raised once for a whole data set, before any record is read, not once per long record."""
    if stride is not None and window is not None and stride >= window:
        raise UsageError(
            f"`stride` must be smaller than the window of {window} tokens (the model's context), so that every "
            f"token keeps some left context; got {stride}"
        )


def window_plan(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over ``length`` tokens; positions are 0-based.

    The scored spans ``[first, end)`` tile ``[1, length)`` exactly: position 0 has nothing before it.
    """
    check_stride(stride, window)
    plan: list[tuple[int, int, int]] = []
    begin, previous_end = 0, 0
    while True:
        end = min(begin + window, length)
        plan.append((begin, end, max(previous_end, begin + 1)))
        if end == length:
            return plan
        previous_end, begin = end, begin + stride


def is_windowed(example: Encoded) -> bool:
    windows = example.layout.get("windows")
    return bool(windows) and len(example) > windows["window"]
