"""A question -> one encoded example per choice: by default exactly the request lm-evaluation-harness's
``loglikelihood`` builds for (context, continuation); ``--tokenization`` and ``--chat`` as in ``run``.

lm-eval's rule (``TemplateLM.loglikelihood`` and ``_encode_pair`` in ``lm_eval/api/model.py``, ``HFLM.tok_encode``
in ``lm_eval/models/huggingface.py``):

- trailing whitespace of the context moves to the front of the continuation;
- context + continuation is encoded as one string, the context alone too, each with the tokenizer's own
  special tokens (so a BOS where the tokenizer adds one; none where the string already starts with the
  BOS text); the continuation is the joint encoding after as many tokens as the context alone has;
- an empty context becomes the prefix token (BOS, else EOS), unless the continuation starts with it;
- no EOS is appended; only the continuation is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ce_inspect.data import Record
from ce_inspect.errors import InputError, SequenceTooLongError, UsageError
from ce_inspect.text import (
    ANSWER,
    BOS,
    PROMPT,
    Encoded,
    Layout,
    encode,
    encode_messages,
    lmeval_tok_encode,
    prefix_token_id,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ce_inspect.model import LoadedModel

#: ``choices``'s default: the request lm-eval's ``loglikelihood`` builds (``None`` as ``tokenization``).
LM_EVAL = "lm-eval"


def lmeval_request(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int], int]:
    """(context ids, continuation ids, leading special tokens of the context) exactly as lm-eval's
    ``loglikelihood`` requests them for (``context``, ``continuation``)."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        if not cont:
            raise InputError(f"the choice {continuation!r} yields no tokens with this tokenizer")
        return ([prefix], cont, 1) if cont[0] != prefix else (cont[:1], cont[1:], 1)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, _ = lmeval_tok_encode(tokenizer, context + continuation)
    ctx, added = lmeval_tok_encode(tokenizer, context)
    return ctx, whole[len(ctx) :], added


def encode_lmeval(
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    continuation: str,
    *,
    max_length: int | None = None,
    truncate: bool = False,
    ignore_index: int = -100,
) -> Encoded:
    """lm-eval's request as a scored example: the continuation's tokens scored, nothing else."""
    ctx, cont, added = lmeval_request(tokenizer, context, continuation)
    if not cont:
        raise InputError(
            f"the choice {continuation!r} yields no tokens of its own: the context's tokens absorb it "
            "(lm-eval's split); use `tokenization` separate"
        )
    dropped = 0
    if max_length is not None and len(ctx) + len(cont) > max_length:
        excess = len(ctx) + len(cont) - max_length
        if not truncate or excess >= len(ctx):
            raise SequenceTooLongError(
                f"the context and choice are {len(ctx) + len(cont)} tokens but the model's context is {max_length}",
                "shorten it or pass `truncate_prompt` to drop context tokens from the left" if not truncate else None,
            )
        ctx, dropped, added = ctx[excess:], excess, max(0, added - excess)
    segments = [BOS] * added + [PROMPT] * (len(ctx) - added) + [ANSWER] * len(cont)
    ids = ctx + cont
    labels = [ignore_index] * len(ctx) + cont
    notes = (f"dropped {dropped} context tokens from the left to fit the context of {max_length}",) if dropped else ()
    return Encoded(
        input_ids=tuple(ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        truncated_prompt_tokens=dropped,
        notes=notes,
        layout={
            "kind": LM_EVAL,
            "prefix_tokens": added,
            "context_tokens": len(ctx),
            "answer_tokens": len(cont),
            "moved_spaces": len(context) - len(context.rstrip()) if context else 0,
            "empty_context": context == "",
        },
    )


@dataclass(frozen=True)
class Question:
    """A question's choices, each encoded with its context: the runner's one example per record.

    Its length and scored positions are those of the choices laid end to end, so that the runner's token
    budget counts every choice's tokens and resume fingerprints every choice's targets."""

    #: As ``Encoded.requires_targets``: a question with no scored target is an invalid record.
    requires_targets: ClassVar[bool] = True

    examples: tuple[Encoded, ...]
    texts: tuple[str, ...]
    label: int
    #: With ``mutual_info``: each choice after an empty context (lm-eval's ``("", choice)`` requests of
    #: ``acc_mutual_info``). Left out of the length and fingerprint: a line's resume check reads the choices.
    unconditional: tuple[Encoded, ...] = ()

    def __len__(self) -> int:
        return sum(len(e) for e in self.examples)

    @property
    def offsets(self) -> list[int]:
        out, at = [], 0
        for e in self.examples:
            out.append(at)
            at += len(e)
        return out

    @property
    def input_ids(self) -> tuple[int, ...]:
        return tuple(tid for e in self.examples for tid in e.input_ids)

    @property
    def scored_positions(self) -> list[int]:
        return [at + p for at, e in zip(self.offsets, self.examples) for p in e.scored_positions]


def choices_layout(layout: Layout, tokenization: str | None, *, mutual_info: bool = False) -> Layout:
    """The checked layout of a run: ``tokenization`` (None: lm-eval's request) applies to pairs only; the
    context is never scored. A pair's choice gets no EOS (lm-eval appends none); with the chat template the
    end-of-turn token is scored unless ``add_eos`` is off, as in ``run --chat``. ``mutual_info`` is lm-eval's
    metric of its own request."""
    if mutual_info and (layout.chat or tokenization is not None):
        raise UsageError("`mutual_info` is lm-eval's acc_mutual_info of its own request; drop `tokenization`/`chat`")
    if layout.chat and tokenization is not None:
        raise UsageError("`tokenization` applies to prompt/choice pairs, not with `chat`; drop one")
    if not layout.mask_prompt:
        raise UsageError("`mask_prompt` off would score the context too; choices compare the choices only")
    if tokenization is None and layout.special_tokens != "parse":
        raise UsageError(
            "`special_tokens` text is not lm-eval's request (its tokenizer parses special-token text); "
            "give a `tokenization` with it"
        )
    return layout if layout.chat else replace(layout, tokenization=tokenization or "separate")


def encode_question(
    lm: LoadedModel, record: Record, layout: Layout, tokenization: str | None, *, mutual_info: bool = False
) -> Question:
    """Every choice of ``record`` with its context: lm-eval's request (``tokenization`` None), ``run``'s
    pair layouts, or the chat template (``layout.chat``, or a ``messages`` context) with the choice as the
    assistant's answer, scored as ``run --chat`` scores it. ``mutual_info`` (lm-eval's request only): each
    choice after an empty context too."""
    if record.error is not None:
        raise InputError(record.error)
    question = _encode_choices(lm, record, layout, tokenization)
    if not mutual_info:
        return question
    if record.messages is not None:
        raise InputError(
            "`mutual_info` is lm-eval's unconditional request of a text context, not of a conversation "
            "(the record's messages)"
        )
    unconditional = tuple(
        encode_lmeval(lm.tokenizer, "", choice, max_length=lm.context_length, ignore_index=layout.ignore_index)
        for choice in question.texts
    )
    return replace(question, unconditional=unconditional)


def _encode_choices(lm: LoadedModel, record: Record, layout: Layout, tokenization: str | None) -> Question:
    assert record.choices is not None and record.label is not None
    tokenizer, context_length = lm.tokenizer, lm.context_length
    examples: list[Encoded] = []
    for choice in record.choices:
        if record.messages is not None:
            messages: Sequence[dict[str, Any]] = [*record.messages, {"role": "assistant", "content": choice}]
            chat = replace(layout, chat=True, tokenization="separate")
            examples.append(encode_messages(tokenizer, messages, chat, max_length=context_length, last_turn=True))
        elif layout.chat:
            examples.append(encode(tokenizer, record.prompt or "", choice, layout, max_length=context_length))
        elif tokenization is not None:
            pair = replace(layout, add_eos=False)
            examples.append(encode(tokenizer, record.prompt or "", choice, pair, max_length=context_length))
        else:
            prompt = (record.prompt or "") + (layout.sep or "")
            examples.append(
                encode_lmeval(
                    tokenizer,
                    prompt,
                    choice,
                    max_length=context_length,
                    truncate=layout.truncate_prompt,
                    ignore_index=layout.ignore_index,
                )
            )
    return Question(tuple(examples), record.choices, record.label)


__all__ = [
    "LM_EVAL",
    "Question",
    "choices_layout",
    "encode_lmeval",
    "encode_question",
    "lmeval_request",
    "prefix_token_id",
]
