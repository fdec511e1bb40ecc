"""The library's scoring entry points: a pair, a conversation, encoded examples, each through ``scorer_for``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import ScoreResult
from ce_inspect.scoring.contract import Scorer
from ce_inspect.scoring.hf import HFScorer
from ce_inspect.scoring.options import ScoreOptions
from ce_inspect.text import Encoded, Layout, encode, encode_messages

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


def scorer_for(lm: LoadedModel) -> Scorer:
    """The scorer of a loaded model, the one place a backend is chosen: the Hugging Face forward pass today."""
    return HFScorer(lm)


def score(
    lm: LoadedModel,
    prompt: str,
    answer: str,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
) -> ScoreResult:
    """Encode a prompt/answer pair with ``layout`` and score it: the library's one-call entry point."""
    example = encode(lm.tokenizer, prompt, answer, layout or Layout(), max_length=lm.context_length)
    return score_encoded(lm, example, options)


def score_messages(
    lm: LoadedModel,
    messages: Sequence[dict[str, Any]] | dict[str, Any],
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    last_turn: bool = False,
) -> ScoreResult:
    """Render a conversation with the model's chat template and score its assistant turns (or the last one)."""
    example = encode_messages(
        lm.tokenizer, messages, layout or Layout(), max_length=lm.context_length, last_turn=last_turn
    )
    return score_encoded(lm, example, options)


def score_encoded(lm: LoadedModel, example: Encoded, options: ScoreOptions | None = None) -> ScoreResult:
    """Score one encoded example with one forward pass."""
    return score_batch(lm, [example], options)[0]


def score_batch(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    options: ScoreOptions | None = None,
    *,
    padding_side: str = "right",
) -> list[ScoreResult]:
    """Score several examples in one padded forward pass; each result equals scoring it alone.

    Position ids are derived from the attention mask, so left and right padding give the same figures.
    """
    return scorer_for(lm).score(examples, options or ScoreOptions(), padding_side=padding_side)
