"""Text longer than the model's context, scored in sliding windows (``stride``).

The protocol of the transformers perplexity guide ("Perplexity of fixed-length models"): windows of the
context's length start every ``stride`` tokens; each window scores only the tokens that no earlier window
scored, so every token after the first is scored exactly once, with as much left context as the window
allows (at least ``window - stride`` tokens once the first window is past). The figures of the windows are
put back together at the positions of the whole text, as one result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ce_inspect.contract import ScoreResult, SequenceToken, Summary, TokenScore
from ce_inspect.errors import InputError, NonFiniteError
from ce_inspect.scoring.api import score_batch
from ce_inspect.scoring.figures import nonfinite_error
from ce_inspect.scoring.results import mean_entropy, scored_text_counts
from ce_inspect.text import Encoded, decode_tokens, is_windowed, special_ids, token_bytes, windows_plan

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel
    from ce_inspect.scoring.options import ScoreOptions

#: Windows scored in one forward pass.
WINDOWS_PER_BATCH = 8


def score_examples(
    lm: LoadedModel, examples: Sequence[Encoded], options: ScoreOptions, *, padding_side: str = "right"
) -> list[ScoreResult]:
    """``scoring.score_batch``, except that examples longer than the context are scored in windows."""
    plain = [i for i, e in enumerate(examples) if not is_windowed(e)]
    results: dict[int, ScoreResult] = {}
    if plain:
        scored = score_batch(lm, [examples[i] for i in plain], options, padding_side=padding_side)
        results.update(zip(plain, scored))
    for i, example in enumerate(examples):
        if i not in results:
            results[i] = score_windows(lm, example, options, padding_side=padding_side)
    return [results[i] for i in range(len(examples))]


def score_windows(
    lm: LoadedModel, example: Encoded, options: ScoreOptions, *, padding_side: str = "right"
) -> ScoreResult:
    """Score every trained position of ``example`` once, in windows of ``layout["windows"]``."""
    plan = windows_plan(example)
    pieces = [(begin, _window(example, begin, end, first)) for begin, end, first in plan]
    pieces = [(begin, piece) for begin, piece in pieces if piece.scored_positions]  # a window of masked labels
    tokens: list[TokenScore] = []
    each = replace(options, verify=False)  # the model's own loss of a window is no figure of the text
    for start in range(0, len(pieces), WINDOWS_PER_BATCH):
        group = pieces[start : start + WINDOWS_PER_BATCH]
        try:
            scored = score_batch(lm, [piece for _, piece in group], each, padding_side=padding_side)
        except NonFiniteError as exc:
            raise _in_text(lm, example, options, exc, len(tokens), [piece for _, piece in group]) from None
        for (begin, _), result in zip(group, scored):
            tokens.extend(replace(t, index=t.index + begin) for t in result.tokens)
    note = _windows_note(example, len(plan))
    return _merged(lm, example, tokens, options, note, len(plan))


def _windows_note(example: Encoded, windows: int) -> str:
    rolling = example.layout.get("rolling")
    if rolling:
        return (
            f"scored in {windows} disjoint windows of {rolling['window']} predicted tokens, each after one token of "
            "context (the last reaching back to fill its window): lm-eval's loglikelihood_rolling; its total is "
            "summary.sum_logprob"
        )
    spec = example.layout["windows"]
    return (
        f"scored in {windows} windows of {spec['window']} tokens (the model's context) starting every "
        f"{spec['stride']} tokens (`stride`): every token scored once, with at least {spec['window'] - spec['stride']} "
        "tokens of left context after the first window (the sliding-window protocol of the transformers "
        "perplexity guide)"
    )


def _in_text(
    lm: LoadedModel, example: Encoded, options: ScoreOptions, exc: NonFiniteError, done: int, group: list[Encoded]
) -> NonFiniteError:
    """``exc``, raised for a window of ``group``, naming its token among the whole text's scored tokens."""
    at = next(i for i, piece in enumerate(group) if piece is exc.example)
    row = done + sum(len(piece.scored_positions) for piece in group[:at]) + exc.scored
    smoothing = options.label_smoothing
    return nonfinite_error(
        lm.tokenizer, [example], row, exc.why, target=exc.target, dtype=lm.dtype, label_smoothing=smoothing
    )


def _window(example: Encoded, begin: int, end: int, first: int) -> Encoded:
    ignore = example.ignore_index
    return Encoded(
        input_ids=example.input_ids[begin:end],
        labels=tuple(example.labels[j] if j >= first else ignore for j in range(begin, end)),
        segments=example.segments[begin:end],
        ignore_index=ignore,
    )


def _merged(
    lm: LoadedModel, example: Encoded, tokens: list[TokenScore], options: ScoreOptions, note: str, windows: int
) -> ScoreResult:
    if not tokens:
        raise InputError("the example has no scored position (every label is ignore_index)")
    loss_at = {t.index: t.loss for t in tokens}
    total = math.fsum(t.loss for t in tokens)
    sum_logprob = math.fsum(t.logprob for t in tokens)
    counts = scored_text_counts(tokens, token_bytes(lm.tokenizer, [t.token_id for t in tokens]))
    summary = Summary(
        reduction=options.reduction,
        mean=total / len(tokens),
        sum=total,
        count=len(tokens),
        mean_nll=-sum_logprob / len(tokens),
        label_smoothing=options.label_smoothing,
        ignore_index=example.ignore_index,
        greedy_hits=sum(t.is_greedy for t in tokens),
        per_token=tuple(loss_at.get(i, 0.0) for i in range(1, len(example))),
        sum_logprob=sum_logprob,
        mean_entropy=mean_entropy(tokens),
        **counts,
    )
    special = special_ids(lm.tokenizer)
    sequence = tuple(
        SequenceToken(
            index=i,
            token_id=tid,
            token=text,
            segment=example.segments[i],
            scored=i in loss_at,
            loss=loss_at.get(i),
            special=tid in special,
        )
        for i, (tid, text) in enumerate(zip(example.input_ids, decode_tokens(lm.tokenizer, example.input_ids)))
    )
    notes = [*example.notes, note]
    if options.verify:
        notes.append("`verify` does not apply to windowed text: the model's own loss needs the whole text at once")
    layout = dict(example.layout)
    layout.update({"sequence_tokens": len(example), "scored_tokens": len(tokens), "window_count": windows})
    return ScoreResult(
        model=lm.name,
        device=lm.device,
        dtype=lm.dtype,
        versions=lm.versions,
        tokens=tuple(tokens),
        summary=summary,
        sequence=sequence,
        layout=layout,
        notes=tuple(notes),
    )
