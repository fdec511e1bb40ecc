"""Records -> training examples: ``encode_record``, the one dispatch from a ``Record`` of any format to ``Encoded``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ce_inspect.data.formats import Record
from ce_inspect.errors import WINDOWS_REMEDY, InputError, SequenceTooLongError
from ce_inspect.text import (
    ANSWER,
    BOS,
    EOS,
    IGNORE_INDEX,
    LMEVAL_MAX_LENGTH,
    PROMPT,
    Encoded,
    Layout,
    PreferenceExample,
    encode,
    encode_messages,
    encode_preference,
    encode_rolling,
    encode_trl,
    encode_trl_language_modeling,
    special_prefix,
    window_plan,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ce_inspect.model import LoadedModel


def encode_record(lm: LoadedModel, record: Record, layout: Layout) -> Encoded:
    """The one dispatch from a record to a training example, for every format.

    Pairs go through ``encoding.encode``, the function ``run`` uses, so every layout option means the same;
    conversations through ``encoding.encode_messages``; ``layout.tokenization == "trl"`` applies TRL's rule to
    every text format; tokenized records are scored exactly as given.
    """
    if record.error is not None:
        raise InputError(record.error)
    if record.chosen is not None or record.rejected is not None:
        raise InputError("a preference pair (chosen/rejected): `ce-inspect prefs` scores it")
    if layout.rolling and record.text is None:
        raise InputError("`rolling` scores text records only (lm-eval's loglikelihood_rolling takes a text)")
    tokenizer, context = lm.tokenizer, lm.context_length
    trl = layout.tokenization == "trl"
    if record.input_ids is not None:
        assert record.labels is not None
        return encode_tokenized(
            record.input_ids,
            record.labels,
            vocab_size=vocab_size(lm),
            ignore_index=layout.ignore_index,
            max_length=context,
            attention_mask=record.attention_mask,
            labels_from=record.labels_from or "labels",
        )
    if record.text is not None:
        encoded = _encode_text_record(lm, record.text, layout)
        windows = encoded.layout.get("windows")
        if windows:
            window_plan(len(encoded), windows["window"], windows["stride"])  # a stride the window cannot take fails now
        return encoded
    if record.prompt_messages is not None:
        assert record.completion_messages is not None
        if trl:
            return encode_trl(
                tokenizer,
                record.prompt_messages,
                record.completion_messages,
                ignore_index=layout.ignore_index,
                add_eos=layout.add_eos,
                mask_prompt=layout.mask_prompt,
                max_length=context,
                tools=record.tools,
            )
        return _encode_chat_completion(lm, record, layout)
    if record.messages is not None:
        if trl:
            return encode_trl_language_modeling(
                tokenizer, record.messages, ignore_index=layout.ignore_index, max_length=context, tools=record.tools
            )
        return encode_messages(tokenizer, record.messages, _chat_layout(layout), max_length=context, tools=record.tools)
    assert record.prompt is not None and record.answer is not None
    encoded = encode(tokenizer, record.prompt, record.answer, _pair_layout(record, layout), max_length=context)
    return replace(encoded, notes=(*record.notes, *encoded.notes)) if record.notes else encoded


def _pair_layout(record: Record, layout: Layout) -> Layout:
    """The layout of a pair with its own system prompt (alpaca's `system`): the record's replaces `system`. Only
    a chat template renders a system prompt, so without `chat` the record is refused rather than its system
    prompt dropped."""
    if record.system is None:
        return layout
    if not layout.chat:
        raise InputError(
            "field 'system' is a system prompt, which only a chat template renders: pass `chat`, or drop the field"
        )
    return replace(layout, system=record.system)


def encode_whole(lm: LoadedModel, record: Record, layout: Layout, command: str) -> Encoded:
    """``encode_record`` for a command that scores whole examples only, never windows (``diff``; ``audit``'s
    command line, which has no `stride`): a text longer than the context is an error whose advice is the
    command's own, not `stride`, which ``command`` does not have."""
    try:
        return encode_record(lm, record, replace(layout, stride=None) if layout.stride is not None else layout)
    except SequenceTooLongError as exc:
        if exc.remedy != WINDOWS_REMEDY:
            raise
        raise SequenceTooLongError(exc.problem, f"{command} scores whole examples only, not windows") from None


def _encode_text_record(lm: LoadedModel, text: str, layout: Layout) -> Encoded:
    if layout.rolling:
        if layout.chat or layout.sep:
            raise InputError("a `text` record has no prompt and answer: `chat` and `sep` do not apply")
        window = layout.rolling_window or lm.context_length or LMEVAL_MAX_LENGTH
        return encode_rolling(
            lm.tokenizer, text, window=window, ignore_index=layout.ignore_index, context=lm.context_length
        )
    if layout.tokenization == "trl":
        return encode_trl_language_modeling(
            lm.tokenizer,
            text,
            ignore_index=layout.ignore_index,
            add_eos=layout.add_eos,
            max_length=lm.context_length,
            stride=layout.stride,
        )
    return encode_text(lm.tokenizer, text, layout, max_length=lm.context_length)


def _chat_layout(layout: Layout) -> Layout:
    return replace(layout, chat=True) if not layout.chat else layout


def _encode_chat_completion(lm: LoadedModel, record: Record, layout: Layout) -> Encoded:
    """Conversational prompt-completion without TRL's rule: the chat layout, scoring the completion's turn."""
    completion = record.completion_messages or []
    if [m["role"] for m in completion] != ["assistant"]:
        raise InputError(
            "a conversational completion of several messages (or not one assistant message) is scored only with "
            "`tokenization` trl, which trains everything after the prompt"
        )
    messages = [*(record.prompt_messages or []), *completion]
    return encode_messages(
        lm.tokenizer, messages, _chat_layout(layout), max_length=lm.context_length, last_turn=True, tools=record.tools
    )


def check_pair_record(record: Record) -> None:
    """Refuse a record that is not a preference pair (or that could not be read)."""
    if record.error is not None:
        raise InputError(record.error)
    if record.chosen is None or record.rejected is None:
        raise InputError(
            f"not a preference pair (format {record.format}): prefs reads prompt, chosen and rejected, or "
            "chosen and rejected alone"
        )


def encode_pair_record(
    tokenizer: PreTrainedTokenizerBase,
    record: Record,
    *,
    tokenization: str = "trl",
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> PreferenceExample:
    """A preference record (prompt, chosen, rejected; or chosen and rejected alone) -> its two sequences and
    the pair's checks (``text.encode_preference``): what ``prefs`` scores and ``audit`` checks."""
    check_pair_record(record)
    prompt = record.prompt if record.prompt is not None else record.prompt_messages
    return encode_preference(
        tokenizer,
        None if record.implicit_prompt else prompt,
        record.chosen,
        record.rejected,
        tokenization=tokenization,
        max_length=max_length,
        truncation_mode=truncation_mode,
    )


def vocab_size(lm: LoadedModel) -> int:
    """How many token ids the model's embedding takes (ids at or past it would index out of range)."""
    embeddings = lm.model.get_input_embeddings()
    return int(embeddings.weight.shape[0])


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, layout: Layout, *, max_length: int | None) -> Encoded:
    """Language modelling: [BOS] + the text + [EOS unless `add_eos` is off], every token scored but the first."""
    if layout.chat or layout.sep:
        raise InputError("a `text` record has no prompt and answer: `chat` and `sep` do not apply")
    bos = special_prefix(tokenizer)
    body = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos: list[int] = []
    if layout.add_eos:
        if tokenizer.eos_token_id is None:
            raise InputError("this tokenizer has no EOS token; pass `add_eos` False to score the text without one")
        eos = [tokenizer.eos_token_id]
    ids = bos + body + eos
    if len(ids) < 2:
        raise InputError("the text is a single token with nothing before it: nothing predicts anything")
    windows = None
    if max_length is not None and len(ids) > max_length:
        if layout.stride is None:
            raise SequenceTooLongError(
                f"the text is {len(ids)} tokens but the model's context is {max_length}", WINDOWS_REMEDY
            )
        windows = {"window": max_length, "stride": layout.stride}
    segments = [BOS] * len(bos) + [ANSWER] * len(body) + [EOS] * len(eos)
    labels = [tid if j > 0 else layout.ignore_index for j, tid in enumerate(ids)]
    return Encoded(
        input_ids=tuple(ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=layout.ignore_index,
        layout={
            "kind": "text",
            "bos": bool(bos),
            "eos": layout.add_eos,
            "text_tokens": len(body),
            **({"windows": windows} if windows else {}),
        },
    )


def encode_tokenized(
    input_ids: tuple[int, ...] | list[int],
    labels: tuple[int, ...] | list[int],
    *,
    vocab_size: int,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    attention_mask: tuple[int, ...] | list[int] | None = None,
    labels_from: str = "labels",
) -> Encoded:
    """Pre-tokenized ids and labels as a training example, exactly as given: the model shifts them.

    Every id must be in the vocabulary; every label an id or ``ignore_index``. A label that differs from the
    id at its position is the target there, as in training (the note counts them: labels shifted by hand are
    shifted again by the model).
    """
    if len(labels) != len(input_ids):
        raise InputError(f"{labels_from!r} has {len(labels)} items but 'input_ids' has {len(input_ids)}")
    for k, tid in enumerate(input_ids):
        if not 0 <= tid < vocab_size:
            raise InputError(f"'input_ids' item {k} is {tid}, outside the model's vocabulary of {vocab_size} ids")
    for k, label in enumerate(labels):
        if label != ignore_index and not 0 <= label < vocab_size:
            raise InputError(
                f"{labels_from!r} item {k} is {label}: neither a token id of the model's vocabulary of {vocab_size} "
                f"nor the ignore index {ignore_index} (`ignore_index`)"
            )
    if attention_mask is not None and 0 in attention_mask:
        raise InputError(
            f"'attention_mask' is 0 at {attention_mask.count(0)} positions: the record is padded; give unpadded records"
        )
    if max_length is not None and len(input_ids) > max_length:
        raise SequenceTooLongError(f"the record is {len(input_ids)} tokens but the model's context is {max_length}")
    notes: list[str] = []
    trained = [k for k in range(1, len(labels)) if labels[k] != ignore_index]
    differ = [k for k in trained if labels[k] != input_ids[k]]
    if differ:
        notes.append(
            f"{len(differ)} of {len(trained)} trained labels differ from the input id at their position (first at "
            f"{differ[0]}); they are the targets, as in training. Labels already shifted by one are shifted again by "
            "the model"
        )
    if labels and labels[0] != ignore_index:
        notes.append("the label at position 0 is not ignored, but nothing predicts the first token; the shift drops it")
    segments = [ANSWER if label != ignore_index else PROMPT for label in labels]
    return Encoded(
        input_ids=tuple(input_ids),
        labels=tuple(labels),
        segments=tuple(segments),
        ignore_index=ignore_index,
        notes=tuple(notes),
        layout={"kind": "tokenized", "labels_from": labels_from, "trained": len(trained)},
    )


__all__ = [
    "check_pair_record",
    "encode_pair_record",
    "encode_record",
    "encode_text",
    "encode_tokenized",
    "encode_whole",
    "vocab_size",
]
