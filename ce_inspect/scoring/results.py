"""Figures -> results: one ``ScoreResult`` per example from a batch's flat figure lists, and per-turn summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import Alternative, ScoreResult, SequenceToken, Summary, TokenScore, TurnSummary
from ce_inspect.scoring.options import ScoreOptions
from ce_inspect.text import Encoded, byte_hex, count_words, decode_tokens, special_ids, token_bytes

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


def build_results(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    figures: dict[str, list[Any]],
    model_losses: Sequence[float | None],
    options: ScoreOptions,
) -> list[ScoreResult]:
    """One result per example from the batch's flat figure lists, in one pass over them (linear in tokens)."""
    special = special_ids(lm.tokenizer)
    text = _texts(lm.tokenizer, examples, figures["top_ids"], figures["target"])
    raw = {i: byte_hex(lm.tokenizer, i, t) for i, t in text.items()}  # bytes of ids that do not decode alone
    utf8 = token_bytes(lm.tokenizer, figures["target"])
    results = []
    cursor = 0
    for example, model_loss in zip(examples, model_losses):
        n = len(example.scored_positions)
        rows = {key: values[cursor : cursor + n] for key, values in figures.items()}  # this example's figures
        cursor += n
        tokens = _token_scores(lm.tokenizer, example, rows, text, raw, options, special)
        loss_at = {t.index: t.loss for t in tokens}
        layout = dict(example.layout)
        layout.update({"sequence_tokens": len(example), "scored_tokens": len(tokens)})
        results.append(
            ScoreResult(
                model=lm.name,
                device=lm.device,
                dtype=lm.dtype,
                versions=lm.versions,
                tokens=tuple(tokens),
                summary=_summary(example, tokens, loss_at, model_loss, options, scored_text_counts(tokens, utf8)),
                sequence=_sequence(example, text, raw, loss_at, special),
                layout=layout,
                notes=example.notes,
                turns=turn_summaries(tokens, example.turn_roles) if example.turns else (),
            )
        )
    return results


def _texts(tokenizer: Any, examples: Sequence[Encoded], top_ids: list[list[int]], targets: list[int]) -> dict[int, str]:
    """The text of every id the batch's results show, each distinct id decoded once."""
    ids = sorted({i for e in examples for i in e.input_ids} | {i for row in top_ids for i in row} | set(targets))
    return dict(zip(ids, decode_tokens(tokenizer, ids)))


def _token_scores(
    tokenizer: Any,
    example: Encoded,
    rows: dict[str, list[Any]],
    text: dict[int, str],
    raw: dict[int, str | None],
    options: ScoreOptions,
    special: set[int],
) -> list[TokenScore]:
    """The scored tokens of one example; ``rows`` holds its figures, one entry per scored position."""
    target_ids = rows["target"]
    top_ids, top_logps = rows["top_ids"], rows["top_logp"]
    pieces = tokenizer.convert_ids_to_tokens(target_ids)
    tokens = []
    for j, position in enumerate(example.scored_positions):
        logprob = rows["logprob"][j]
        tokens.append(
            TokenScore(
                index=position,
                token_id=target_ids[j],
                token=text[target_ids[j]],
                piece=str(pieces[j]),
                segment=example.segments[position],
                special=target_ids[j] in special,
                prob=math.exp(logprob),
                logprob=logprob,
                loss=rows["loss"][j],
                rank=int(rows["rank"][j]),
                top_id=top_ids[j][0],
                top_token=text[top_ids[j][0]],
                top_prob=math.exp(top_logps[j][0]),
                top_k=_alternatives(top_ids[j], top_logps[j], text, raw, options.top_k),
                turn=example.turns[position] if example.turns else None,
                bytes=raw[target_ids[j]],
                top_bytes=raw[top_ids[j][0]],
                entropy=rows["entropy"][j] if "entropy" in rows else None,
            )
        )
    return tokens


def _alternatives(
    ids: list[int], logps: list[float], text: dict[int, str], raw: dict[int, str | None], k: int
) -> tuple[Alternative, ...]:
    return tuple(
        Alternative(token_id=i, token=text[i], prob=math.exp(lp), bytes=raw[i]) for i, lp in zip(ids[:k], logps[:k])
    )


def scored_text(tokens: Sequence[TokenScore], utf8: dict[int, bytes]) -> bytes:
    """The scored text of an example: the UTF-8 bytes of its scored target tokens (``text.token_bytes``),
    joined in order. Its length is the ``scored_bytes`` of bits per byte."""
    return b"".join(utf8[t.token_id] for t in tokens)


def scored_text_counts(tokens: Sequence[TokenScore], utf8: dict[int, bytes]) -> dict[str, int]:
    """A summary's ``scored_bytes`` (the scored text's length) and ``scored_words`` (its words, the text
    decoded as UTF-8 with U+FFFD for a cut character, counted as lm-eval does: ``text.count_words``)."""
    text = scored_text(tokens, utf8)
    return {"scored_bytes": len(text), "scored_words": count_words(text.decode("utf-8", errors="replace"))}


def _summary(
    example: Encoded,
    tokens: Sequence[TokenScore],
    loss_at: dict[int, float],
    model_loss: float | None,
    options: ScoreOptions,
    counts: dict[str, int],
) -> Summary:
    total = math.fsum(t.loss for t in tokens)
    sum_logprob = math.fsum(t.logprob for t in tokens)
    mean_nll = -sum_logprob / len(tokens)
    return Summary(
        reduction=options.reduction,
        mean=total / len(tokens),
        sum=total,
        count=len(tokens),
        mean_nll=mean_nll,
        label_smoothing=options.label_smoothing,
        ignore_index=example.ignore_index,
        greedy_hits=sum(t.is_greedy for t in tokens),
        model_loss=model_loss,
        verify_abs_diff=None if model_loss is None else abs(model_loss - mean_nll),
        # CrossEntropyLoss(reduction="none") over the shifted sequence: 0 where the label is ignored.
        per_token=tuple(loss_at.get(i, 0.0) for i in range(1, len(example))),
        sum_logprob=sum_logprob,
        mean_entropy=mean_entropy(tokens),
        **counts,
    )


def mean_entropy(tokens: Sequence[TokenScore]) -> float | None:
    """The mean of the scored tokens' entropies; None when they carry none (``entropy`` off)."""
    if not tokens or tokens[0].entropy is None:
        return None
    return math.fsum(t.entropy or 0.0 for t in tokens) / len(tokens)


def _sequence(
    example: Encoded, text: dict[int, str], raw: dict[int, str | None], loss_at: dict[int, float], special: set[int]
) -> tuple[SequenceToken, ...]:
    """Every token of the example, scored or not: the whole-sequence view."""
    return tuple(
        SequenceToken(
            index=i,
            token_id=tid,
            token=text[tid],
            segment=example.segments[i],
            scored=i in loss_at,
            loss=loss_at.get(i),
            special=tid in special,
            turn=example.turns[i] if example.turns else None,
            bytes=raw[tid],
        )
        for i, tid in enumerate(example.input_ids)
    )


def turn_summaries(tokens: Sequence[TokenScore], roles: Sequence[str]) -> tuple[TurnSummary, ...]:
    """Per-turn figures over the scored tokens, turns in the order they appear."""
    groups: dict[int | None, list[TokenScore]] = {}
    for t in tokens:
        groups.setdefault(t.turn, []).append(t)
    out = []
    for turn, group in groups.items():
        total = math.fsum(t.loss for t in group)
        sum_logprob = math.fsum(t.logprob for t in group)
        out.append(
            TurnSummary(
                turn=turn,
                role=roles[turn] if turn is not None and turn < len(roles) else "template",
                count=len(group),
                mean=total / len(group),
                sum=total,
                mean_nll=-sum_logprob / len(group),
                sum_logprob=sum_logprob,
                greedy_hits=sum(t.is_greedy for t in group),
                first_index=group[0].index,
                last_index=group[-1].index,
            )
        )
    return tuple(out)
