"""Record formats: one decoded object (a JSON line, an array element, a dataset row) -> one ``Record``.

Formats (detected per record from its fields, or forced with ``format``):

- ``prompt-answer``: ce-inspect's own ``{"prompt", "answer"}`` (field names set by ``Fields``);
- ``prompt-completion``: TRL's prompt-completion type, plain (two strings) or conversational (two message
  lists);
- ``messages``: a chat conversation (TRL's conversational language-modelling type);
- ``conversations``: ShareGPT, messages with ``from``/``value`` (human, gpt, system mapped to user,
  assistant, system);
- ``alpaca``: Alpaca's ``{"instruction", "input", "output"}`` with an optional ``system``, read as a pair
  (``alpaca_pair``: the instruction, then a newline and the input when it is not empty, is the prompt; the
  output is the answer; the system prompt goes to the chat template, so it needs ``chat``);
- ``text``: TRL's language-modelling type, every token scored;
- ``preference``: TRL's preference type, ``{"prompt", "chosen", "rejected"}`` (plain or conversational), or
  ``{"chosen", "rejected"}`` alone (the implicit-prompt form); read by ``prefs``, no other command scores it;
- ``tokenized``: ``input_ids`` with ``labels``, or with TRL's ``completion_mask`` and/or ``assistant_masks``
  (or neither: every token trained, as TRL does), scored exactly as given.

A record that cannot become an example carries ``error`` instead of raising, so that the caller decides
whether to stop or skip. Messages of every format are validated by ``encoding.parse_messages``, the same
function ``run --messages`` uses, so both accept exactly the same conversations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ce_inspect.errors import InputError
from ce_inspect.text import check_text, parse_messages, parse_tools

#: Record formats, in the order detection tries them.
FORMATS = (
    "tokenized",
    "preference",
    "conversations",
    "messages",
    "prompt-completion",
    "prompt-answer",
    "alpaca",
    "text",
)
#: ``ce-inspect choices``'s format (a question, its choices and the gold label): never detected, always forced
#: by that command, so a data set of questions is never read as pairs nor a pair file as questions.
CHOICES = "choices"
#: Where a choices record's context and label may be, ce-inspect's names first, then lm-evaluation-harness's.
CONTEXT_FIELDS = ("prompt", "query", "context", "messages")
LABEL_FIELDS = ("label", "gold")
#: Alpaca's fields (fixed names, as Alpaca's data and LLaMA-Factory's `alpaca` format have them).
ALPACA_FIELDS = ("instruction", "input", "output", "system")
#: What every line of an Alpaca record says of how it was read (``alpaca_pair``'s rule).
ALPACA_NOTE = (
    "alpaca record: the prompt is 'instruction', then a newline and 'input' when it is not empty (LLaMA-Factory's "
    "join); the answer is 'output'; 'system', when given, is the chat template's system prompt"
)
#: ShareGPT speakers -> chat roles. Other speakers (tool, function_call, ...) keep their name as the role.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
#: TRL's mask columns: 1 marks a trained token; TRL trains a token only where every mask present says 1.
MASK_FIELDS = ("completion_mask", "assistant_masks")


@dataclass(frozen=True)
class Fields:
    """Names of the record fields (``--prompt-field`` and friends); TRL's names are fixed."""

    prompt: str = "prompt"
    answer: str = "answer"
    messages: str = "messages"
    id: str = "id"
    completion: str = "completion"
    text: str = "text"
    conversations: str = "conversations"


@dataclass(frozen=True)
class Record:
    """One example of the input, in one of ``FORMATS``, or the reason it is none.

    Exactly one group of fields is set: ``prompt``/``answer`` (prompt-answer, plain prompt-completion),
    ``prompt_messages``/``completion_messages`` (conversational prompt-completion), ``messages`` (messages,
    conversations), ``text``, or ``input_ids``/``labels`` (tokenized). ``labels`` are as given, or built from
    the masks as TRL builds them (the id where every mask is 1, else -100); ``labels_from`` says which.
    """

    line: int  # 1-based: the line of a JSONL file, else the record's position in the data set
    id: str | int | None = None
    prompt: str | None = None
    answer: str | None = None
    messages: list[dict[str, str]] | None = None
    error: str | None = None
    format: str | None = field(default=None, compare=False)
    text: str | None = None
    prompt_messages: list[dict[str, str]] | None = None
    completion_messages: list[dict[str, str]] | None = None
    input_ids: tuple[int, ...] | None = None
    labels: tuple[int, ...] | None = None
    labels_from: str | None = (
        None  # "labels", "completion_mask", "assistant_masks", both masks joined by "+", "input_ids"
    )
    attention_mask: tuple[int, ...] | None = None
    #: preference: each side a string or a message list; the prompt in ``prompt`` or ``prompt_messages``,
    #: or neither (the implicit-prompt form, ``implicit_prompt``).
    chosen: str | list[dict[str, str]] | None = None
    rejected: str | list[dict[str, str]] | None = None
    implicit_prompt: bool = False
    #: ``choices`` records: the continuations to compare and the index of the right one (the context is
    #: ``prompt``, or ``messages`` for a conversation).
    choices: tuple[str, ...] | None = None
    label: int | None = None
    system: str | None = None  # a pair's own system prompt (alpaca's `system`): replaces `system`, needs `chat`
    #: a conversation's ``tools`` (``text.parse_tools``): given to the chat template, as TRL gives them
    tools: list[dict[str, Any]] | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # how the record was read, for its line's notes


# --- one object -> one record ---------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def detect_format(obj: dict[str, Any], fields: Fields | None = None) -> str | None:
    """The format a record's fields say it is in, or None. The first match of ``FORMATS`` wins."""
    f = fields or Fields()
    if "input_ids" in obj:
        return "tokenized"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if f.conversations in obj and f.messages not in obj:
        return "conversations"
    if f.messages in obj:
        return "messages"
    if f.completion in obj and f.answer not in obj:
        return "prompt-completion"
    if f.prompt in obj or f.answer in obj:
        return "prompt-answer"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if f.text in obj:
        return "text"
    return None


def parse_record(line: int, obj: Any, fields: Fields | None = None, format: str | None = None) -> Record:
    """One decoded object (a JSON line, an array element, a dataset row) as a ``Record`` of ``format``.

    ``format`` None detects it from the fields. Never raises for bad data: the reason goes in ``error``.
    """
    f = fields or Fields()
    if not isinstance(obj, dict):
        return Record(line, error=f"not a JSON object but a JSON {_type_name(obj)}")
    rid = obj.get(f.id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int, type(None))):
        return Record(line, error=f"field {f.id!r} must be a string or an integer, not {_type_name(rid)}")
    fmt = format or detect_format(obj, f)
    if fmt is None:
        found = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        return Record(
            line,
            rid,
            error=f"no known format (fields: {found}); expected prompt/answer, prompt/completion, messages, "
            "conversations, instruction/output (Alpaca), text, input_ids or chosen/rejected (`format` and the field "
            "options pick others)",
        )
    try:
        return _PARSERS[fmt](line, rid, obj, f)
    except InputError as exc:
        return Record(line, rid, error=str(exc), format=fmt)


def _string(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise InputError(f"missing field {name!r}")
    if not isinstance(obj[name], str):
        raise InputError(f"field {name!r} must be a string, not {_type_name(obj[name])}")
    return _text(obj[name], name)


def _text(value: str, name: str) -> str:
    """The core's text rule (no lone surrogates, ...), so that a bad record is an invalid line, not a crash."""
    check_text(value, f"field {name!r}")
    return value


def _parse_prompt_answer(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if f.messages in obj:
        raise InputError(f"has both {f.messages!r} and {f.prompt!r}/{f.answer!r}; keep one")
    prompt, answer = _string(obj, f.prompt), _string(obj, f.answer)
    return Record(line, rid, prompt=prompt, answer=answer, format="prompt-answer")


def _parse_prompt_completion(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    for name in (f.prompt, f.completion):
        if name not in obj:
            raise InputError(f"missing field {name!r}")
    prompt, completion = obj[f.prompt], obj[f.completion]
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt, completion = _text(prompt, f.prompt), _text(completion, f.completion)
        return Record(line, rid, prompt=prompt, answer=completion, format="prompt-completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return Record(
            line,
            rid,
            prompt_messages=parse_messages(prompt, f"field {f.prompt!r}"),
            completion_messages=parse_messages(completion, f"field {f.completion!r}"),
            format="prompt-completion",
            tools=parse_tools(obj.get("tools")),
        )
    raise InputError(
        f"fields {f.prompt!r} and {f.completion!r} must both be strings or both be message lists, not "
        f"{_type_name(prompt)} and {_type_name(completion)}"
    )


def _side(obj: dict[str, Any], name: str) -> str | list[dict[str, str]]:
    if name not in obj:
        raise InputError(f"missing field {name!r}: a preference pair needs chosen and rejected")
    value = obj[name]
    if isinstance(value, str):
        if not value:
            raise InputError(f"field {name!r} is empty: there is nothing to score")
        return _text(value, name)
    if isinstance(value, list):
        if not value:
            raise InputError(f"field {name!r} is an empty message list: there is nothing to score")
        return parse_messages(value, f"field {name!r}")
    raise InputError(f"field {name!r} must be a string or a message list, not {_type_name(value)}")


def _parse_preference(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    """TRL's preference type: a prompt (or none: the implicit-prompt form) and the two sides."""
    chosen, rejected = _side(obj, "chosen"), _side(obj, "rejected")
    kinds = {"chosen": isinstance(chosen, str), "rejected": isinstance(rejected, str)}
    prompt = obj.get(f.prompt)
    if prompt is not None:
        if not isinstance(prompt, (str, list)):
            raise InputError(f"field {f.prompt!r} must be a string or a message list, not {_type_name(prompt)}")
        kinds[f.prompt] = isinstance(prompt, str)
    if len(set(kinds.values())) > 1:
        found = ", ".join(f"{k!r} is {'a string' if v else 'a message list'}" for k, v in kinds.items())
        raise InputError(f"mixes plain text and messages ({found}); give all strings or all message lists")
    if prompt is None:
        return Record(line, rid, chosen=chosen, rejected=rejected, implicit_prompt=True, format="preference")
    if isinstance(prompt, str):
        return Record(line, rid, prompt=_text(prompt, f.prompt), chosen=chosen, rejected=rejected, format="preference")
    messages = parse_messages(prompt, f"field {f.prompt!r}")
    return Record(line, rid, prompt_messages=messages, chosen=chosen, rejected=rejected, format="preference")


def alpaca_pair(instruction: str, input: str = "", output: str = "") -> tuple[str, str]:
    """Alpaca's fields as (prompt, answer): the instruction, then a newline and the input when there is one, as
    LLaMA-Factory joins them into the user's turn; the output as it is. (Stanford Alpaca's own training wraps
    them in its "Below is an instruction ..." template: render that into prompt/answer records to score it.)"""
    return (f"{instruction}\n{input}" if input else instruction), output


def _parse_alpaca(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    instruction, output = _string(obj, "instruction"), _string(obj, "output")
    optional = {}
    for name in ("input", "system"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"field {name!r} must be a string, not {_type_name(value)}")
        optional[name] = _text(value, name) if value else ""
    prompt, answer = alpaca_pair(instruction, optional["input"], output)
    system = optional["system"] or None
    return Record(line, rid, prompt=prompt, answer=answer, system=system, format="alpaca", notes=(ALPACA_NOTE,))


def _parse_messages(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if f.prompt in obj or f.answer in obj:
        raise InputError(f"has both {f.messages!r} and {f.prompt!r}/{f.answer!r}; keep one")
    if f.messages not in obj:
        raise InputError(f"missing field {f.messages!r}")
    messages = parse_messages(obj[f.messages], f"field {f.messages!r}")
    return Record(line, rid, messages=messages, format="messages", tools=parse_tools(obj.get("tools")))


def sharegpt_messages(data: Any, source: str = "conversations") -> list[dict[str, Any]]:
    """ShareGPT ``[{"from", "value"}]`` as ``[{"role", "content"}]``: human -> user, gpt -> assistant.

    Messages already in role/content form pass through; ``parse_messages`` validates the result. A ShareGPT
    message without a ``from`` or a ``value`` string is an InputError naming ShareGPT's field.
    """
    if not isinstance(data, list):
        return data  # parse_messages names the problem
    out: list[Any] = []
    for i, message in enumerate(data):
        if isinstance(message, dict) and "role" not in message:
            speaker, value = message.get("from"), message.get("value")
            if not isinstance(speaker, str) or not speaker:
                raise InputError(
                    f'{source}: message {i} has no "from" string (ShareGPT\'s speaker: human, gpt, system, ...)'
                )
            role = SHAREGPT_ROLES.get(speaker, speaker)
            if not isinstance(value, (str, list)):
                raise InputError(f'{source}: message {i} ({speaker}) has no "value" string (ShareGPT\'s text)')
            out.append({"role": role, "content": value})
        else:
            out.append(message)
    return out


def _parse_conversations(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if f.conversations not in obj:
        raise InputError(f"missing field {f.conversations!r}")
    source = f"field {f.conversations!r}"
    messages = parse_messages(sharegpt_messages(obj[f.conversations], source), source)
    return Record(line, rid, messages=messages, format="conversations")


def _parse_text(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    text = _string(obj, f.text)
    if not text:
        raise InputError(f"field {f.text!r} is empty: there is nothing to score")
    return Record(line, rid, text=text, format="text")


def _int_list(obj: dict[str, Any], name: str, *, bits: bool = False) -> tuple[int, ...]:
    value = obj[name]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"field {name!r} must be a non-empty array of integers, not {_type_name(value)}")
    for k, item in enumerate(value):
        ok = isinstance(item, int) and (not isinstance(item, bool) or bits)
        if not ok or (bits and item not in (0, 1)):
            want = "0 or 1" if bits else "an integer"
            raise InputError(f"field {name!r}: item {k} is {item!r}, not {want}")
    return tuple(int(x) for x in value)


def _parse_tokenized(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    if "input_ids" not in obj:
        raise InputError("missing field 'input_ids'")
    ids = _int_list(obj, "input_ids")
    for name in ("labels", *MASK_FIELDS):
        if name in obj and obj[name] is None:  # absent would train every token: say so, do not guess
            raise InputError(
                f"field {name!r} is null; give it as an array, or drop the field (with no labels and no masks every "
                "token is trained, as TRL does)"
            )
    attention = None
    if obj.get("attention_mask") is not None:
        attention = _int_list(obj, "attention_mask", bits=True)
    masks = [name for name in MASK_FIELDS if obj.get(name) is not None]
    given = (["labels"] if obj.get("labels") is not None else []) + masks + (["attention_mask"] if attention else [])
    lengths = {name: len(obj[name]) for name in given if isinstance(obj[name], (list, tuple))}
    for name, n in lengths.items():
        if n != len(ids):
            raise InputError(f"field {name!r} has {n} items but 'input_ids' has {len(ids)}; they must match")
    if obj.get("labels") is not None:
        labels, source = _int_list(obj, "labels"), "labels"
    elif masks:
        values = [_int_list(obj, name, bits=True) for name in masks]
        labels = tuple(tid if all(bits) else -100 for tid, *bits in zip(ids, *values))
        source = "+".join(masks)
    else:
        labels, source = ids, "input_ids"
    return Record(
        line, rid, input_ids=ids, labels=labels, labels_from=source, attention_mask=attention, format="tokenized"
    )


def _one_of(obj: dict[str, Any], names: tuple[str, ...], what: str) -> str:
    given = [name for name in names if name in obj]
    if not given:
        raise InputError(f"missing field {what}: give one of {', '.join(repr(n) for n in names)}")
    if len(given) > 1:
        raise InputError(f"mixed fields {' and '.join(repr(n) for n in given)}: give one {what}")
    return given[0]


def _parse_choices(line: int, rid: Any, obj: dict[str, Any], f: Fields) -> Record:
    """A multiple-choice question: a context (``prompt``, lm-eval's ``query`` or ``context``, or chat
    ``messages``), at least two non-empty ``choices`` and the index of the right one (``label`` or ``gold``)."""
    context = _one_of(obj, CONTEXT_FIELDS, "for the context")
    label_name = _one_of(obj, LABEL_FIELDS, "for the right choice's index")
    if "choices" not in obj:
        raise InputError("missing field 'choices'")
    choices = obj["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise InputError(f"field 'choices' must be an array of strings, not {_type_name(choices)}")
    if len(choices) < 2:
        raise InputError(f"field 'choices' has {len(choices)} choice(s); a question needs at least two")
    for k, choice in enumerate(choices):
        if not choice:
            raise InputError(f"choice {k} is empty: there is nothing to score")
        _text(choice, f"choices[{k}]")
    label = obj[label_name]
    if isinstance(label, bool) or not isinstance(label, int):
        raise InputError(f"field {label_name!r} must be an integer (the right choice's index), not {_type_name(label)}")
    if not 0 <= label < len(choices):
        raise InputError(
            f"field {label_name!r} is {label}, out of range for {len(choices)} choices (0 to {len(choices) - 1})"
        )
    common = {"choices": tuple(choices), "label": label, "format": CHOICES}
    if context == "messages":
        return Record(line, rid, messages=parse_messages(obj[context], "field 'messages'"), **common)
    if not isinstance(obj[context], str):
        raise InputError(f"field {context!r} must be a string, not {_type_name(obj[context])}")
    return Record(line, rid, prompt=_text(obj[context], context), **common)


_PARSERS = {
    "prompt-answer": _parse_prompt_answer,
    "alpaca": _parse_alpaca,
    "prompt-completion": _parse_prompt_completion,
    "messages": _parse_messages,
    "conversations": _parse_conversations,
    "text": _parse_text,
    "tokenized": _parse_tokenized,
    "preference": _parse_preference,
    CHOICES: _parse_choices,
}


__all__ = [
    "ALPACA_FIELDS",
    "ALPACA_NOTE",
    "CHOICES",
    "CONTEXT_FIELDS",
    "FORMATS",
    "LABEL_FIELDS",
    "MASK_FIELDS",
    "SHAREGPT_ROLES",
    "Fields",
    "Record",
    "alpaca_pair",
    "detect_format",
    "parse_record",
    "sharegpt_messages",
]
