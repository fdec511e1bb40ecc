"""Prompt/answer -> the exact (input_ids, labels) a causal-LM training step would see.

Layout: [BOS if the tokenizer adds one] + prompt + [separator] + answer + [EOS unless disabled].
Prompt and answer are tokenized separately, as most SFT collators do, then concatenated. Labels are
the input ids with every position that is not trained set to ``ignore_index``; the shift by one
happens in scoring, exactly where the model's own loss does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InputError, SequenceTooLongError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

#: Segment names used in ``Encoded.segments``; scored positions are those whose label is not ignored.
BOS, PROMPT, SEP, ANSWER, EOS = "bos", "prompt", "sep", "answer", "eos"


@dataclass(frozen=True)
class Encoded:
    """One training example, unshifted: ``labels[i]`` is the target for the logits at ``i - 1``."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    segments: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    truncated_prompt_tokens: int = 0
    notes: tuple[str, ...] = ()
    layout: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.input_ids) == len(self.labels) == len(self.segments)):
            raise ValueError("input_ids, labels and segments must have the same length")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def scored_positions(self) -> list[int]:
        """Positions whose token is a training target (never position 0: nothing predicts it)."""
        return [i for i in range(1, len(self.labels)) if self.labels[i] != self.ignore_index]


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before any text (BOS for Llama-style tokenizers, nothing for GPT-2)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def context_length(model_config: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The longest sequence the model takes, from its config (the tokenizer's limit is often a sentinel)."""
    config = getattr(model_config, "text_config", None) or model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return None


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Layout:
    """How a prompt/answer pair becomes a training example (the options `run` and `batch` share)."""

    sep: str | None = None
    add_eos: bool = True
    ignore_index: int = IGNORE_INDEX
    mask_prompt: bool = True
    truncate_prompt: bool = False


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    layout: Layout,
    *,
    max_length: int | None = None,
) -> Encoded:
    """Encode one pair with ``layout``; ``max_length`` is the model's context."""
    return encode_pair(
        tokenizer,
        prompt,
        answer,
        sep=layout.sep,
        add_eos=layout.add_eos,
        ignore_index=layout.ignore_index,
        mask_prompt=layout.mask_prompt,
        max_length=max_length,
        truncate_prompt=layout.truncate_prompt,
    )


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    *,
    sep: str | None = None,
    add_eos: bool = True,
    ignore_index: int = IGNORE_INDEX,
    mask_prompt: bool = True,
    max_length: int | None = None,
    truncate_prompt: bool = False,
) -> Encoded:
    """Build the training layout for one prompt/answer pair."""
    if not answer:
        raise InputError("the answer is empty: there is nothing to score")
    bos = special_prefix(tokenizer)
    prompt_ids = _tokens(tokenizer, prompt)
    sep_ids = _tokens(tokenizer, sep) if sep else []
    answer_ids = _tokens(tokenizer, answer)
    if not answer_ids:
        raise InputError(f"the answer {answer!r} yields no tokens with this tokenizer")
    eos_ids: list[int] = []
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise InputError("this tokenizer has no EOS token; pass --no-eos to score the answer without one")
        eos_ids = [tokenizer.eos_token_id]
    if not (bos or prompt_ids or sep_ids):
        raise InputError(
            "the prompt is empty and the tokenizer adds no BOS token, so the first answer token has "
            "nothing to be predicted from; give a prompt or a --sep"
        )

    truncated = 0
    total = len(bos) + len(prompt_ids) + len(sep_ids) + len(answer_ids) + len(eos_ids)
    if max_length is not None and total > max_length:
        excess = total - max_length
        if not truncate_prompt:
            raise SequenceTooLongError(
                f"the example is {total} tokens but the model's context is {max_length}; "
                "shorten it or pass --truncate-prompt to drop prompt tokens from the left"
            )
        # Something must remain before the answer for its first token to be predicted from.
        min_prompt = 0 if (bos or sep_ids) else 1
        if len(prompt_ids) - excess < min_prompt:
            raise SequenceTooLongError(
                f"the answer alone ({len(answer_ids) + len(eos_ids)} tokens with EOS) does not fit the "
                f"model's context of {max_length} tokens, even with the whole prompt dropped"
            )
        prompt_ids = prompt_ids[excess:]
        truncated = excess

    parts = [(BOS, bos), (PROMPT, prompt_ids), (SEP, sep_ids), (ANSWER, answer_ids), (EOS, eos_ids)]
    input_ids: list[int] = []
    segments: list[str] = []
    for name, ids in parts:
        input_ids.extend(ids)
        segments.extend([name] * len(ids))
    trained = {ANSWER, EOS} if mask_prompt else {PROMPT, SEP, ANSWER, EOS}
    labels = [tid if seg in trained else ignore_index for tid, seg in zip(input_ids, segments)]
    notes = ()
    if truncated:
        notes = (f"dropped {truncated} prompt tokens from the left to fit the context of {max_length}",)
    return Encoded(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        truncated_prompt_tokens=truncated,
        notes=notes,
        layout={
            "kind": "pair",
            "bos": bool(bos),
            "sep": sep,
            "eos": add_eos,
            "mask_prompt": mask_prompt,
            "prompt_tokens": len(prompt_ids),
            "answer_tokens": len(answer_ids),
        },
    )


def decode_tokens(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own, special tokens kept, so that the text is what the token adds."""
    return [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]
