"""Text longer than the model's context in windows: the plan (which positions each window scores).

Two protocols, each scoring every token once:

- ``stride`` (sliding): the transformers perplexity guide ("Perplexity of fixed-length models"): windows of
  the context's length start every ``stride`` tokens; each window scores only the tokens that no earlier
  window scored, with as much left context as the window allows (at least ``window - stride`` tokens once
  the first window is past).
- ``rolling``: lm-evaluation-harness's ``loglikelihood_rolling`` (``get_rolling_token_windows`` with
  ``context_len=1``, then ``make_disjoint_window``): the text as ``HFLM.tok_encode`` gives it, after the
  prefix token (BOS, else EOS), cut into disjoint windows of ``window`` predicted tokens, each conditioned
  on one token before it; only the last window, shorter, reaches back to fill ``window`` tokens of input.

``scoring.windows`` runs the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ce_inspect.errors import InputError, UsageError
from ce_inspect.text.encoded import ANSWER, BOS, Encoded, Layout
from ce_inspect.text.tokens import lmeval_tok_encode, prefix_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: lm-eval's ``max_length`` for a model whose config names no context (``HFLM._DEFAULT_MAX_LENGTH``).
LMEVAL_MAX_LENGTH = 2048


def check_stride(stride: int | None, window: int | None) -> None:
    """Refuse a ``stride`` the window (the model's context; None: unknown) cannot take: an error of the
    option, raised once for a whole data set, before any record is read, not once per long record."""
    if stride is not None and window is not None and stride >= window:
        raise UsageError(
            f"`stride` must be smaller than the window of {window} tokens (the model's context), so that every "
            f"token keeps some left context; got {stride}"
        )


def check_windows(layout: Layout, context: int | None) -> None:
    """The window options of ``layout`` against the model's context (None: unknown), once per data set."""
    check_stride(layout.stride, context)
    window = layout.rolling_window
    if window is not None and context is not None and window > context:
        raise UsageError(f"`rolling_window` is {window} tokens, longer than the model's context of {context}")


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


def rolling_plan(length: int, window: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each of lm-eval's rolling windows over ``length`` tokens: the
    prefix token, then the ``length - 1`` tokens it predicts. A window is ``window`` inputs and the target
    after them, so ``end - begin`` is at most ``window + 1``; the scored spans tile ``[1, length)``."""
    if window < 1:
        raise UsageError(f"`rolling_window` must be at least 1 token, got {window}")
    predict = length - 1
    done = min(window, predict)
    plan = [(0, done + 1, 1)]  # the first window: the prefix token, then its predictions
    while done < predict:
        end = done + min(predict - done, window)
        plan.append((end - window, end + 1, done + 1))  # one token of context (more for the last window)
        done = end
    return plan


def encode_rolling(
    tokenizer: PreTrainedTokenizerBase, text: str, *, window: int, ignore_index: int, context: int | None
) -> Encoded:
    """A ``text`` record as lm-eval's ``loglikelihood_rolling`` scores it: the prefix token, then
    ``HFLM.tok_encode(text)`` (the tokenizer's own special tokens, no EOS appended), every token of it scored."""
    body, added = lmeval_tok_encode(tokenizer, text)
    if not body:
        raise InputError("the text yields no tokens: lm-eval's rolling log-likelihood scores nothing of it")
    prefix = prefix_token_id(tokenizer)
    ids = (prefix, *body)
    note = (
        f"scored as lm-eval's loglikelihood_rolling: the prefix token {tokenizer.decode(prefix)!r} first, then the "
        "text as lm-eval encodes it, every token scored, no EOS appended"
    )
    if window == LMEVAL_MAX_LENGTH and context is None:
        note += f"; the model names no context, so windows of lm-eval's default {LMEVAL_MAX_LENGTH} tokens"
    return Encoded(
        input_ids=ids,
        labels=(ignore_index, *body),
        segments=(BOS, *[BOS] * added, *[ANSWER] * (len(body) - added)),
        ignore_index=ignore_index,
        notes=(note,),
        layout={
            "kind": "text",
            "bos": prefix == tokenizer.bos_token_id,
            "eos": False,
            "text_tokens": len(body) - added,
            "rolling": {"window": window, "prefix_token_id": prefix, "special_tokens": added},
        },
    )


def is_windowed(example: Encoded) -> bool:
    if example.layout.get("rolling"):
        return True  # lm-eval's windows even when the text fits one: its request is one window
    windows = example.layout.get("windows")
    return bool(windows) and len(example) > windows["window"]


def windows_plan(example: Encoded) -> list[tuple[int, int, int]]:
    """The plan of a windowed example: lm-eval's rolling windows, or the sliding windows of ``stride``."""
    rolling = example.layout.get("rolling")
    if rolling:
        return rolling_plan(len(example), rolling["window"])
    spec = example.layout["windows"]
    return window_plan(len(example), spec["window"], spec["stride"])
