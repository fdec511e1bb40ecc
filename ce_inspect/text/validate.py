"""The validators of user input (text, a scored answer, a conversation and its scored turns) and the
notes on what encoding does to the text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import InputError
from ce_inspect.text.tokens import decode_tokens, special_ids, text_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# --- the user's text: one validator, and what encoding it does to it -------------------------------------


def check_text(text: Any, name: str) -> str:
    """The one validator of user text (prompts, answers, system prompts, message contents, separators).

    Text must be a string of Unicode characters: a lone surrogate (``"\\ud800"`` in JSON, or a byte that is
    not UTF-8, which Python's argv and stdin decoding turn into U+DC80..U+DCFF) cannot be encoded and
    would fail inside the tokenizer. ``name`` says which input it is, as the user gave it.
    """
    if not isinstance(text, str):
        raise InputError(f"{name} must be text, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        point = ord(text[exc.start])
        what = f"a lone surrogate U+{point:04X} at character {exc.start}"
        if 0xDC80 <= point <= 0xDCFF:
            what += f" (the byte 0x{point - 0xDC00:02X}, which is not UTF-8, passed on undecoded)"
        raise InputError(f"{name} is not valid Unicode text: it holds {what}; give it as UTF-8") from None
    return text


def check_answer(text: Any, name: str = "the answer") -> str:
    """The one rule for a scored answer (a pair's answer, a scored assistant message): valid text, not empty.

    An empty answer is an error everywhere, with or without a chat template: there is no text of the
    answer to score (a chat template would leave only its end-of-turn token).
    """
    check_text(text, name)
    if not text:
        raise InputError(f"{name} is empty: there is nothing to score")
    return text


def text_notes(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[tuple[str, str]], *, plain: bool = False, chat: bool = False
) -> list[str]:
    """Notes on what encoding does to each named text: a leading byte-order mark, and special-token strings
    that the tokenizer parses as control tokens (unless ``plain``)."""
    notes = []
    for name, text in texts:
        if text.startswith("\ufeff"):
            notes.append(
                f"{name} starts with a byte-order mark (U+FEFF); it is kept as text and becomes tokens of its own "
                "(remove it from the input if it came from a file's encoding)"
            )
    if plain:
        return notes
    special = special_ids(tokenizer)
    strings = {tid: tokenizer.convert_ids_to_tokens(tid) for tid in special}
    for name, text in texts:
        if not any(isinstance(s, str) and s and s in text for s in strings.values()):
            continue
        found: dict[str, int] = {}
        for tid in text_ids(tokenizer, text):
            if tid in special:
                found[str(strings[tid])] = found.get(str(strings[tid]), 0) + 1
        if not found:
            continue
        shown = ", ".join(repr(t) + (f" ×{n}" if n > 1 else "") for t, n in found.items())
        how = (
            "the chat template's rendering is tokenized as one string, so they act as the template's own markers "
            "(the turns may not be what the messages say); plain-text encoding is not possible inside a template"
            if chat
            else "--special-tokens text encodes them as plain text"
        )
        notes.append(f"{name} contains special-token text, parsed as control tokens: {shown}; {how}")
    return notes


def ignored_targets_note(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], trained: Sequence[bool], ignore_index: int
) -> list[str]:
    """A note when ``ignore_index`` is a real token id that occurs among the targets: training drops them too."""
    count = sum(1 for j, (tid, t) in enumerate(zip(ids, trained)) if t and j > 0 and tid == ignore_index)
    if not count:
        return []
    token = decode_tokens(tokenizer, [ignore_index])[0]
    return [
        f"the ignore index {ignore_index} is also the id of the token {token!r}: {count} target(s) with that id are "
        "not scored, as training with this ignore_index would drop them (--ignore-index)"
    ]


def parse_messages(data: Any, source: str = "messages") -> list[dict[str, Any]]:
    """Validate a conversation: a list of ``{"role", "content"}`` objects (OpenAI / HF chat data).

    Also takes ``{"messages": [...]}``, and OpenAI content parts when all of them are text. Every role and
    content passes ``check_text``. Tool use as OpenAI and TRL's data have it: an assistant message may carry
    ``tool_calls`` instead of content (its content, empty or null, becomes ""), a message's ``tool_call_id``
    and ``name`` are kept, and a ``tool`` message carries the tool's result as its content (``check_message``).
    ``source`` names the input in error messages.
    """
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise InputError(f'{source}: expected a non-empty JSON list of {{"role": ..., "content": ...}} messages')
    return [check_message(message, i, source) for i, message in enumerate(data)]


#: The keys of a message the chat template is given besides role and content (tool use), when they are strings.
MESSAGE_KEYS = ("tool_call_id", "name")


def check_message(message: Any, i: int, source: str = "messages") -> dict[str, Any]:
    """The one validator of a conversation's message ``i``: a role, and a content string, which an assistant
    message with ``tool_calls`` (``check_tool_calls``) may leave empty or null. Returns the message the template
    renders: role, content (text parts joined), and the tool-use keys it has."""
    if not isinstance(message, dict):
        raise InputError(f"{source}: message {i} is not an object with role and content")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not role:
        raise InputError(f'{source}: message {i} has no "role" string (system, user, assistant, ...)')
    check_text(role, f"{source}: the role of message {i}")
    where = f"{source}: message {i} ({role})"
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise InputError(f'{where} has "tool_calls": only an assistant message calls tools')
    if isinstance(content, list):
        texts = [
            part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None for part in content
        ]
        if any(not isinstance(t, str) for t in texts):
            raise InputError(f"{where} has a content part that is not text; only text is scored")
        content = "".join(texts)  # type: ignore[arg-type]
    if content is None and calls is not None:
        content = ""  # a tool call's message has no text of its own
    if not isinstance(content, str):
        result = " (a tool message carries the tool's result)" if role == "tool" else ""
        raise InputError(f'{where} has no "content" string{result}')
    out: dict[str, Any] = {"role": role, "content": check_text(content, where)}
    if calls is not None:
        out["tool_calls"] = check_tool_calls(calls, where)
    for key in MESSAGE_KEYS:
        if isinstance(message.get(key), str):
            out[key] = check_text(message[key], f"{where}: {key!r}")
    return out


def check_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, as OpenAI's and TRL's data have them: a non-empty list of calls,
    each ``{"type": "function", "function": {"name", "arguments"}}`` or ``{"name", "arguments"}``, the name a
    string, the arguments an object or its JSON text. Returned as given: the chat template renders them."""
    shape = '[{"type": "function", "function": {"name": ..., "arguments": {...}}}]'
    if not isinstance(calls, list) or not calls:
        raise InputError(f'{where}: "tool_calls" must be a non-empty list of calls, {shape}')
    for k, call in enumerate(calls):
        body = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise InputError(f'{where}: tool call {k} has no function "name" string; expected {shape}')
        check_text(body["name"], f"{where}: the name of tool call {k}")
        arguments = body.get("arguments")
        if arguments is not None and not isinstance(arguments, (dict, str)):
            raise InputError(f'{where}: tool call {k} has "arguments" that are neither an object nor JSON text')
        if isinstance(arguments, str):
            check_text(arguments, f"{where}: the arguments of tool call {k}")
    return calls


def parse_tools(value: Any, source: str = "field 'tools'") -> list[dict[str, Any]] | None:
    """A record's ``tools`` (the functions its conversation may call), given to the chat template as TRL gives
    them: a list of JSON-schema objects, or its JSON text (TRL ``json.loads`` a string); None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(check_text(value, source))
        except ValueError as exc:
            raise InputError(f"{source} is a string but not JSON ({exc.msg}); give a list of tool objects") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InputError(f"{source} must be a list of tool objects (JSON schemas of the functions)")
    return value


def scored_turns(msgs: Sequence[dict[str, Any]], last_turn: bool = False, source: str = "messages") -> list[int]:
    """The indices of the assistant messages a conversation scores (all, or the last with ``last_turn``).

    The rules on what can be scored, checked before any model or tokenizer is needed: there is an
    assistant message, the conversation does not open with one, and each scored one passes
    ``check_answer`` (the rule a pair's answer follows) unless it calls tools (its ``tool_calls`` are what it
    generates; the chat template renders them).
    """
    assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if not assistant:
        raise InputError("the conversation has no assistant message: there is nothing to score")
    if assistant[0] == 0:
        raise InputError(
            "the conversation opens with an assistant message, which nothing prompts; start with a user message"
        )
    targets = assistant[-1:] if last_turn else assistant
    for k in targets:
        if not msgs[k].get("tool_calls"):
            check_answer(msgs[k]["content"], f"{source}: assistant message {k}")
    return targets
