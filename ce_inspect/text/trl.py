"""TRL's preparations (``--tokenization trl``): a prompt-completion pair as ``SFTTrainer`` tokenizes it,
and its language-modelling types (``text``, ``messages``) with every token trained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import WINDOWS_REMEDY, InputError, SequenceTooLongError
from ce_inspect.text.chat import chat_template, one_line
from ce_inspect.text.encoded import ANSWER, BOS, EOS, EOT, IGNORE_INDEX, PROMPT, Encoded
from ce_inspect.text.tokens import decode_tokens, special_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# --- TRL's rule (--tokenization trl) -------------------------------------------------------------------


def encode_trl(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[dict[str, Any]],
    completion: str | Sequence[dict[str, Any]],
    *,
    ignore_index: int = IGNORE_INDEX,
    add_eos: bool = True,
    mask_prompt: bool = True,
    max_length: int | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Encoded:
    """A prompt-completion pair exactly as TRL's ``SFTTrainer`` prepares it (TRL 1.x, ``completion_only_loss``).

    Plain (two strings): the EOS token's text is appended to the completion unless it already ends with it,
    then the prompt alone and prompt + completion are each tokenized as one string, special tokens added
    (BOS). Conversational (two message lists): the prompt is rendered with the generation prompt, prompt +
    completion without, both tokenized by the chat template. Either way the completion starts where the two
    token sequences diverge (their common prefix), and every token after it is trained: for a chat template
    that ends a turn with ``<|im_end|>\\n``, the newline too. When the prompt alone has tokens past that point
    (a word merged across the boundary, a template that renders the prompt differently when it is last),
    they are not in the sequence; a note says which. ``add_eos=False`` (TRL always appends it), ``mask_prompt=
    False`` (TRL's ``completion_only_loss=False``) are in the notes. ``tools`` go to the template, as in TRL.
    """
    conversational = not isinstance(prompt, str)
    if conversational != (not isinstance(completion, str)):
        raise InputError("prompt and completion must both be strings or both be message lists")
    notes: list[str] = []
    prompt_ids, full_ids = _trl_pair_ids(tokenizer, prompt, completion, add_eos, notes, tools)
    start = _trl_completion_start(tokenizer, prompt_ids, full_ids, notes)
    if max_length is not None and len(full_ids) > max_length:
        raise SequenceTooLongError(
            f"the example is {len(full_ids)} tokens but the model's context is {max_length}; shorten it "
            "(TRL would cut it at its own max_length, keeping the start)"
        )
    special = special_ids(tokenizer)
    segments = [PROMPT] * start + [
        (EOS if tid == tokenizer.eos_token_id else EOT) if tid in special else ANSWER for tid in full_ids[start:]
    ]
    if mask_prompt:
        labels = [tid if j >= start else ignore_index for j, tid in enumerate(full_ids)]
    else:
        labels = list(full_ids)
        notes.append("the prompt is trained too (`mask_prompt` off: TRL's completion_only_loss=False)")
    return Encoded(
        input_ids=tuple(full_ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        notes=tuple(notes),
        layout={
            "kind": "trl",
            "conversational": conversational,
            "eos": add_eos,
            "mask_prompt": mask_prompt,
            "prompt_tokens": start,
            "prompt_tokens_alone": len(prompt_ids),
            "answer_tokens": len(full_ids) - start,
            "tokenization": "trl",
        },
    )


def _trl_pair_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[dict[str, Any]],
    completion: str | Sequence[dict[str, Any]],
    add_eos: bool,
    notes: list[str],
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[int], list[int]]:
    """TRL's two tokenizations: the prompt alone (with the generation prompt) and prompt + completion."""
    if not isinstance(prompt, str):
        prompt_ids = _trl_chat_ids(tokenizer, list(prompt), generation_prompt=True, tools=tools)
        return prompt_ids, _trl_chat_ids(tokenizer, [*prompt, *completion], tools=tools)  # type: ignore[list-item]
    assert isinstance(completion, str)
    if not completion:
        raise InputError("the answer is empty: there is nothing to score")
    if add_eos:
        eos = tokenizer.eos_token
        if eos is None:
            raise InputError("this tokenizer has no EOS token; pass `add_eos` False to score without one")
        if not completion.endswith(eos):
            completion += eos  # as text: TRL's add_eos step, so the tokenizer parses it as the special token
    else:
        notes.append("no EOS appended to the completion (TRL always appends one; `add_eos` is off)")
    return list(tokenizer(prompt)["input_ids"]), list(tokenizer(prompt + completion)["input_ids"])


def _trl_completion_start(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], full_ids: list[int], notes: list[str]
) -> int:
    """Where TRL starts the completion: the length of the common prefix of the two tokenizations."""
    start = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        start += 1
    if start >= len(full_ids):
        raise InputError("the completion adds no token after the prompt's: there is nothing to score")
    if start < len(prompt_ids):
        dropped = decode_tokens(tokenizer, prompt_ids[start:])
        notes.append(
            f"TRL's rule: the prompt tokenized alone ends in {dropped}, which prompt+completion does not "
            f"have; the completion starts where they diverge (token {start}), so the context lacks that tail, "
            "as in TRL's training (TRL warns about it once)"
        )
    return start


def encode_trl_language_modeling(
    tokenizer: PreTrainedTokenizerBase,
    data: str | Sequence[dict[str, Any]],
    *,
    ignore_index: int = IGNORE_INDEX,
    add_eos: bool = True,
    max_length: int | None = None,
    stride: int | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Encoded:
    """TRL's language-modelling types: ``text`` (EOS text appended, special tokens added) or ``messages``
    (rendered by the chat template, with ``tools`` as TRL passes them); every token trained, as TRL does
    without ``assistant_only_loss``."""
    notes: list[str] = []
    if isinstance(data, str):
        text = data
        if add_eos and tokenizer.eos_token is not None and not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        ids = list(tokenizer(text)["input_ids"])
        kind = "text"
    else:
        ids = _trl_chat_ids(tokenizer, list(data), tools=tools)
        kind = "messages"
        notes.append("every token of the conversation is trained, as TRL does for `messages` data by default")
    if len(ids) < 2:
        raise InputError("the text is a single token: nothing predicts anything")
    windows = None
    if max_length is not None and len(ids) > max_length:
        if stride is None or kind != "text":
            raise SequenceTooLongError(
                f"the example is {len(ids)} tokens but the model's context is {max_length}",
                WINDOWS_REMEDY if kind == "text" else None,
            )
        windows = {"window": max_length, "stride": stride}
    special = special_ids(tokenizer)
    segments = [
        BOS if j == 0 and tid in special else (EOS if tid == tokenizer.eos_token_id else ANSWER)
        for j, tid in enumerate(ids)
    ]
    labels = [tid if j > 0 else ignore_index for j, tid in enumerate(ids)]
    return Encoded(
        input_ids=tuple(ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        notes=tuple(notes),
        layout={
            "kind": "trl",
            "conversational": kind == "messages",
            "eos": add_eos,
            "tokenization": "trl",
            **({"windows": windows} if windows else {}),
        },
    )


def _trl_chat_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    generation_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    chat_template(tokenizer)
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(tools) if tools is not None else None,
            tokenize=True,
            return_dict=True,
            add_generation_prompt=generation_prompt,
        )
    except Exception as exc:  # noqa: BLE001 - a template raising on this conversation is an input problem
        raise InputError(f"the chat template failed on this conversation: {one_line(exc)}") from exc
    return list(out["input_ids"])
