"""Prompt/answer pair -> the exact (input_ids, labels) a causal-LM training step would see; ``encode``
picks the pair, chat or TRL encoding a ``Layout`` asks for.

Pair layout: [BOS if the tokenizer adds one] + prompt + [separator] + answer + [EOS unless disabled].
``separate`` tokenization (the default, as most SFT collators do) tokenizes prompt and answer on their
own and concatenates; ``joint`` tokenizes prompt + answer as one string and splits at the prompt's
token length, as lm-evaluation-harness does. Both splits are always computed, so that a difference at
the boundary can be reported whichever one is scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ce_inspect.errors import InputError, SequenceTooLongError
from ce_inspect.text.chat import encode_chat
from ce_inspect.text.encoded import (
    ANSWER,
    BOS,
    EOS,
    IGNORE_INDEX,
    PROMPT,
    SEP,
    SPECIAL_TOKENS,
    TOKENIZATIONS,
    Encoded,
    Layout,
)
from ce_inspect.text.tokens import decode_tokens, special_prefix, text_ids
from ce_inspect.text.trl import encode_trl
from ce_inspect.text.validate import check_answer, check_text, ignored_targets_note, text_notes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 1]) + "…"


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    layout: Layout,
    *,
    max_length: int | None = None,
) -> Encoded:
    """Encode one pair with ``layout`` (chat template or plain pair); ``max_length`` is the model's context."""
    if layout.chat:
        return encode_chat(tokenizer, prompt, answer, layout, max_length=max_length)
    if layout.tokenization == "trl":
        return encode_trl(
            tokenizer,
            prompt,
            answer,
            ignore_index=layout.ignore_index,
            add_eos=layout.add_eos,
            mask_prompt=layout.mask_prompt,
            max_length=max_length,
        )
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
        tokenization=layout.tokenization,
        special_tokens=layout.special_tokens,
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
    tokenization: str = "separate",
    special_tokens: str = "parse",
) -> Encoded:
    """Build the training layout for one prompt/answer pair, split by ``tokenization``."""
    if tokenization not in ("separate", "joint"):
        raise InputError(f"unknown `tokenization` {tokenization!r} for a pair split; use separate or joint")
    _check_pair(prompt, answer, sep, tokenization, special_tokens)
    plain = special_tokens == "text"
    bos = special_prefix(tokenizer)
    prompt_ids, sep_ids, answer_ids, boundary = _split_pair(tokenizer, prompt, sep, answer, tokenization, plain)
    eos_ids = _eos_ids(tokenizer) if add_eos else []
    total = len(bos) + len(prompt_ids) + len(sep_ids) + len(answer_ids) + len(eos_ids)
    truncated = _prompt_excess(
        total, max_length, truncate_prompt, bool(bos or sep_ids), prompt_ids, answer_ids, eos_ids
    )
    prompt_ids = prompt_ids[truncated:]

    parts = [(BOS, bos), (PROMPT, prompt_ids), (SEP, sep_ids), (ANSWER, answer_ids), (EOS, eos_ids)]
    input_ids = [tid for _, ids in parts for tid in ids]
    segments = [name for name, ids in parts for _ in ids]
    trained = [seg in ({ANSWER, EOS} if mask_prompt else {PROMPT, SEP, ANSWER, EOS}) for seg in segments]
    labels = [tid if t else ignore_index for tid, t in zip(input_ids, trained)]
    notes = [f"dropped {truncated} prompt tokens from the left to fit the context of {max_length}"] if truncated else []
    if boundary["differs"]:
        notes.append(boundary_note(boundary))
    notes += _pair_text_notes(tokenizer, prompt, sep, answer, tokenization, plain)
    notes += ignored_targets_note(tokenizer, input_ids, trained, ignore_index)
    return Encoded(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        truncated_prompt_tokens=truncated,
        notes=tuple(notes),
        layout={
            "kind": "pair",
            "bos": bool(bos),
            "sep": sep,
            "eos": add_eos,
            "mask_prompt": mask_prompt,
            "prompt_tokens": len(prompt_ids),
            "answer_tokens": len(answer_ids),
            "tokenization": tokenization,
            "special_tokens": special_tokens,
            "boundary": boundary,
        },
    )


def _pair_text_notes(
    tokenizer: PreTrainedTokenizerBase, prompt: str, sep: str | None, answer: str, tokenization: str, plain: bool
) -> list[str]:
    notes = _joint_text_note(tokenizer, prompt + (sep or ""), answer, plain) if tokenization == "joint" else []
    named = [("the prompt", prompt), ("the separator", sep or ""), ("the answer", answer)]
    return notes + text_notes(tokenizer, named, plain=plain)


def _check_pair(prompt: str, answer: str, sep: str | None, tokenization: str, special_tokens: str) -> None:
    if tokenization not in TOKENIZATIONS:
        raise InputError(f"unknown `tokenization` {tokenization!r}; use separate or joint")
    if special_tokens not in SPECIAL_TOKENS:
        raise InputError(f"unknown `special_tokens` {special_tokens!r}; use parse or text")
    check_text(prompt, "the prompt")
    check_answer(answer)
    if sep is not None:
        check_text(sep, "the separator")


def _eos_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise InputError("this tokenizer has no EOS token; score the answer without one (`add_eos`)")
    return [tokenizer.eos_token_id]


def _split_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, sep: str | None, answer: str, tokenization: str, plain: bool
) -> tuple[list[int], list[int], list[int], dict[str, Any]]:
    """(prompt ids, separator ids, answer ids) under ``tokenization``, and how the two tokenizations compare."""
    separate = (
        text_ids(tokenizer, prompt, plain),
        text_ids(tokenizer, sep, plain) if sep else [],
        text_ids(tokenizer, answer, plain),
    )
    joint = joint_split(tokenizer, prompt + (sep or ""), answer, plain=plain)
    boundary = _boundary(tokenizer, separate, joint, tokenization)
    if tokenization == "separate":
        if not separate[2]:
            raise InputError(f"the answer {answer!r} yields no tokens with this tokenizer")
        return separate[0], separate[1], separate[2], boundary
    # The separator is part of lm-evaluation-harness's context string, so it is tokenized with the prompt.
    if not joint[1]:
        raise InputError(
            f"with `tokenization` joint the answer {answer!r} yields no tokens of its own: the prompt's tokens "
            "absorb it; use `tokenization` separate"
        )
    return joint[0], [], joint[1], boundary


def _prompt_excess(
    total: int,
    max_length: int | None,
    truncate_prompt: bool,
    has_lead: bool,
    prompt_ids: list[int],
    answer_ids: list[int],
    eos_ids: list[int],
) -> int:
    """How many prompt tokens to drop from the left so that ``total`` fits ``max_length`` (0: it fits).

    ``has_lead``: a BOS or separator precedes the answer, so the prompt may be empty.
    """
    if not (has_lead or prompt_ids):
        raise InputError(
            "the prompt is empty and the tokenizer adds no BOS token, so the first answer token has "
            "nothing to be predicted from; give a prompt or a `sep`"
        )
    if max_length is None or total <= max_length:
        return 0
    excess = total - max_length
    if not truncate_prompt:
        raise SequenceTooLongError(
            f"the example is {total} tokens but the model's context is {max_length}; "
            "shorten it or pass `truncate_prompt` to drop prompt tokens from the left"
        )
    # Something must remain before the answer for its first token to be predicted from.
    if len(prompt_ids) - excess < (0 if has_lead else 1):
        raise SequenceTooLongError(
            f"the answer alone ({len(answer_ids) + len(eos_ids)} tokens with EOS) does not fit the "
            f"model's context of {max_length} tokens, even with the whole prompt dropped"
        )
    return excess


def joint_split(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, *, plain: bool = False
) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split of a (context, continuation) pair into (context ids, continuation ids).

    Trailing whitespace of the context moves to the continuation; the continuation's ids are the ids of
    the whole string after as many tokens as the context alone has (``_encode_pair`` in its HF model).
    """
    context, continuation = _move_spaces(context, continuation)
    whole = text_ids(tokenizer, context + continuation, plain)
    context_ids = text_ids(tokenizer, context, plain)
    return context_ids, whole[len(context_ids) :]


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def _joint_text_note(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, plain: bool) -> list[str]:
    """A note when the joint split falls inside a token, so the scored tokens spell other text than the answer.

    The split is at the context's token count; the text the answer's tokens cover starts where the first of
    them starts in the whole string (from the tokenizer's character offsets; a slow tokenizer has none).
    """
    if not getattr(tokenizer, "is_fast", False):
        return []
    context, continuation = _move_spaces(context, continuation)
    whole = context + continuation
    kwargs: dict[str, Any] = {"split_special_tokens": True} if plain else {}
    enc = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True, **kwargs)
    split = len(text_ids(tokenizer, context, plain))
    offsets = enc["offset_mapping"]
    start = int(offsets[split][0]) if split < len(offsets) else len(whole)
    if start == len(context):
        return []
    return [
        f"with --tokenization joint the split falls inside a token: the scored tokens spell {_short(whole[start:])}, "
        f"not the answer given ({_short(continuation)}); --tokenization separate scores the answer as given"
    ]


def _boundary(
    tokenizer: PreTrainedTokenizerBase,
    separate: tuple[list[int], list[int], list[int]],
    joint: tuple[list[int], list[int]],
    used: str,
) -> dict[str, Any]:
    """Whether separate and joint tokenization give different tokens, or a different split, for this pair.

    When they do: the tokens around the boundary under each, each marked ``prompt`` or ``answer``.
    """
    a, split_a = separate[0] + separate[1] + separate[2], len(separate[0]) + len(separate[1])
    b, split_b = joint[0] + joint[1], len(joint[0])
    info: dict[str, Any] = {
        "differs": a != b or split_a != split_b,
        "used": used,
        "answer_tokens": {"separate": len(a) - split_a, "joint": len(b) - split_b},
    }
    if not info["differs"]:
        return info
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    tail = 0
    while tail < min(len(a), len(b)) - common and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    start = max(0, min(common, split_a, split_b) - 1)  # one shared token of context on the left

    def window(ids: list[int], split: int) -> list[dict[str, Any]]:
        end = min(len(ids), max(len(ids) - tail, split) + 1)  # and one on the right
        texts = decode_tokens(tokenizer, ids[start:end])
        return [
            {"token_id": tid, "token": text, "part": PROMPT if start + j < split else ANSWER}
            for j, (tid, text) in enumerate(zip(ids[start:end], texts))
        ]

    info.update({"start": start, "separate": window(a, split_a), "joint": window(b, split_b)})
    return info


def boundary_note(boundary: dict[str, Any]) -> str:
    """One line for humans: how the two tokenizations split this pair, and that the scores depend on it."""

    def shown(window: list[dict[str, Any]]) -> str:
        out, previous = [], PROMPT
        for tok in window:
            if tok["part"] != previous:
                out.append("|")
                previous = tok["part"]
            out.append(repr(tok["token"]))
        if previous == PROMPT:
            out.append("|")
        return ("… " if boundary.get("start") else "") + " ".join(out)

    return (
        f"separate and joint tokenization differ at the prompt/answer boundary: separate {shown(boundary['separate'])}"
        f", joint {shown(boundary['joint'])} ('|' is the split; answer tokens are scored). The scores depend on this "
        f"choice; this run used {boundary['used']} (--tokenization)."
    )
