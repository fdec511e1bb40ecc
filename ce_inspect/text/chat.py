"""A chat conversation (or a pair as one exchange) -> (input_ids, labels) through the tokenizer's chat template.

Chat layout: the tokenizer's own chat template renders the conversation; each scored assistant turn
is located by rendering the conversation before it with the generation prompt and checking that this
is a token prefix of the full rendering. What follows the generation prompt, up to and including the
end-of-turn token, is what the model has to generate, so it is what assistant-only training scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import InputError, SequenceTooLongError
from ce_inspect.text.encoded import EOT, TEMPLATE, Encoded, Layout, check_chat_layout
from ce_inspect.text.tokens import decode_tokens, special_ids, text_ids
from ce_inspect.text.validate import (
    check_answer,
    check_text,
    ignored_targets_note,
    parse_messages,
    scored_turns,
    text_notes,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# --- chat templates ------------------------------------------------------------------------------------

#: Stand-ins for message contents when locating where a template puts them (private-use code points,
#: which no template strips and no real message contains).
_CONTENT_MARK, _SYSTEM_MARK = "\ue000", "\ue001"
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    layout: Layout,
    *,
    max_length: int | None = None,
) -> Encoded:
    """The pair as one chat exchange (``layout.system`` if set, user = prompt, assistant = answer)."""
    check_text(prompt, "the prompt")
    check_answer(answer)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if layout.system is not None:
        messages.insert(0, {"role": "system", "content": layout.system})
    return _encode_conversation(tokenizer, messages, layout, max_length=max_length, last_turn=True, source="pair")


def encode_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]] | dict[str, Any],
    layout: Layout,
    *,
    max_length: int | None = None,
    last_turn: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Encoded:
    """A conversation, rendered with the tokenizer's chat template; every assistant turn is scored.

    ``last_turn`` scores only the last assistant turn. ``layout.system`` adds a system message (an error
    when the conversation has one). Pair-only options of ``layout`` (sep, joint tokenization,
    truncation, plain-text special tokens) are rejected; ``layout.chat`` need not be set. ``tools`` (the
    record's functions) go to the template with every rendering, as TRL passes them; an assistant turn that
    calls tools is scored as the template renders its calls, from its generation prompt to its end of turn.
    """
    msgs = parse_messages(messages)
    check_chat_layout(layout)
    if last_turn and not layout.mask_prompt:
        raise InputError(
            "`last_turn` scores one assistant turn, and scoring the prompt too (`mask_prompt`) every token; "
            "use one of them"
        )
    if layout.system is not None:
        if msgs[0]["role"] == "system":
            raise InputError("the conversation already starts with a system message; drop `system` or that message")
        msgs.insert(0, {"role": "system", "content": layout.system})
    return _encode_conversation(
        tokenizer, msgs, layout, max_length=max_length, last_turn=last_turn, source="messages", tools=tools
    )


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    try:
        template = tokenizer.get_chat_template()
    except (ValueError, AttributeError):
        template = None
    if not template:
        raise InputError(
            "this model's tokenizer has no chat template, so `chat`/`messages` cannot render a conversation; "
            "score a plain prompt/answer pair instead, or use a model whose tokenizer defines one"
        )
    return template


def render_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    generation_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str:
    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(tools) if tools is not None else None,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    except Exception as exc:  # noqa: BLE001 - a template raising on this conversation is an input problem
        raise InputError(f"the chat template failed on this conversation: {one_line(exc)}") from exc


def _try_render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    generation_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> str | None:
    try:
        return render_template(tokenizer, messages, generation_prompt, tools)
    except InputError:
        return None


def _parting(a: str, b: str) -> int:
    """The first index where two strings differ."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def _injected_prefix(
    tokenizer: PreTrainedTokenizerBase, first: dict[str, Any], text: str, tools: Sequence[dict[str, Any]] | None
) -> tuple[int, tuple[int, int] | None] | None:
    """Text the template puts before the first message's own block when no system message is given.

    Returns (its length, the span of its system-prompt content if it has the shape of a system block), or
    None when the template injects nothing (or its structure cannot be told apart).
    """
    own = _try_render(tokenizer, [{"role": first["role"], "content": _CONTENT_MARK}], tools=tools)
    system_only = _try_render(tokenizer, [{"role": "system", "content": _SYSTEM_MARK}], tools=tools)
    with_system = _try_render(
        tokenizer,
        [{"role": "system", "content": _SYSTEM_MARK}, {"role": first["role"], "content": _CONTENT_MARK}],
        tools=tools,
    )
    if own is None or system_only is None or with_system is None:
        return None
    if own.count(_CONTENT_MARK) != 1 or system_only.count(_SYSTEM_MARK) != 1 or not with_system.startswith(system_only):
        return None
    mark = own.index(_CONTENT_MARK)
    opener = with_system[len(system_only) : with_system.find(_CONTENT_MARK)]
    if not own[:mark].endswith(opener):
        return None
    injected = own[: mark - len(opener)]
    if not injected or not text.startswith(injected):
        return None
    before, after = system_only.split(_SYSTEM_MARK)
    if injected.startswith(before) and injected.endswith(after) and len(injected) >= len(before) + len(after):
        return len(injected), (len(before), len(injected) - len(after))
    return len(injected), None


@dataclass
class _Rendering:
    """A conversation rendered by its template and tokenized, with what each character and token belongs to."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    #: Per character: the segment (a role for message content, else template) and the message it belongs to.
    char_seg: list[str]
    char_turn: list[int | None]
    #: Per message: the span of its content in ``text``, and where its rendering ends (None: not found).
    contents: list[tuple[int, int] | None] = field(default_factory=list)
    ends: list[int | None] = field(default_factory=list)
    #: Per token: its segment and turn (see ``Encoded``).
    segments: list[str] = field(default_factory=list)
    turns: list[int | None] = field(default_factory=list)
    default_system: str | None = None
    tools: Sequence[dict[str, Any]] | None = None  # the record's tools, given to every rendering


def _encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    layout: Layout,
    *,
    max_length: int | None,
    last_turn: bool,
    source: str,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Encoded:
    template = _check_chat_tokenizer(tokenizer)
    targets = scored_turns(msgs, last_turn, source)
    notes: list[str] = _tool_notes(msgs, targets, tools)
    r = _render_conversation(tokenizer, msgs, tools)
    injected_end = _mark_default_system(tokenizer, msgs, r, layout, notes)
    _mark_messages(tokenizer, msgs, r, injected_end)
    _mark_tokens(r)
    scored, eot_positions, inside_turn = _locate_turns(tokenizer, msgs, r, targets, notes)
    template_mask = None
    if _GENERATION_TAG.search(template):
        template_mask, scored = _apply_generation_mask(tokenizer, msgs, r, targets, scored, notes)
    if inside_turn:
        added = decode_tokens(tokenizer, [r.ids[j] for j in inside_turn])
        notes.append(
            "scored because the model must generate them after the generation prompt, though the template adds "
            f"them: {added}"
        )
    if not layout.add_eos:
        scored -= set(eot_positions)
        notes.append("the end-of-turn token is not scored (--no-eos)")

    _check_fits(len(r.ids), max_length)
    trained = [(j in scored if layout.mask_prompt else True) and j > 0 for j in range(len(r.ids))]
    notes += _conversation_text_notes(tokenizer, msgs, source)
    notes += ignored_targets_note(tokenizer, r.ids, trained, layout.ignore_index)
    return Encoded(
        input_ids=tuple(r.ids),
        labels=tuple(tid if t else layout.ignore_index for tid, t in zip(r.ids, trained)),
        segments=tuple(r.segments),
        ignore_index=layout.ignore_index,
        notes=tuple(notes),
        turns=tuple(r.turns),
        turn_roles=tuple(m["role"] for m in msgs),
        layout={
            "kind": "chat",
            "source": source,
            "eos": layout.add_eos,
            "mask_prompt": layout.mask_prompt,
            "system": layout.system,
            "default_system_prompt": r.default_system,
            "messages": len(msgs),
            "roles": [m["role"] for m in msgs],
            "scored_turns": list(targets),
            "last_turn": last_turn,
            "end_of_turn": decode_tokens(tokenizer, [r.ids[eot_positions[0]]])[0] if eot_positions else None,
            "answer_tokens": sum(1 for j in scored if r.segments[j] == "assistant"),
            "template_mask": template_mask,
            "special_tokens": layout.special_tokens,
        },
    )


def _tool_notes(msgs: list[dict[str, Any]], targets: list[int], tools: Sequence[dict[str, Any]] | None) -> list[str]:
    """What the notes say of tool use: the record's tools given to the template, the turns scored by their calls."""
    notes = [f"the record's {len(tools)} tool(s) are given to the chat template, as TRL gives them"] if tools else []
    calling = [k for k in targets if msgs[k].get("tool_calls")]
    if calling:
        notes.append(
            f"assistant message(s) {', '.join(map(str, calling))} call tools: scored as the chat template renders "
            "their calls, from the generation prompt to the end of the turn"
        )
    return notes


def _check_fits(length: int, max_length: int | None) -> None:
    if max_length is not None and length > max_length:
        raise SequenceTooLongError(
            f"the conversation is {length} tokens but the model's context is {max_length}; shorten it "
            "(`truncate_prompt` cannot cut a chat)"
        )


def _check_chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template, once it is known to be usable for locating turns."""
    template = chat_template(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            "the chat layout needs a fast (Rust-backed) tokenizer, for the character offsets of its tokens; "
            "this model only has a slow one"
        )
    return template


def _render_conversation(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> _Rendering:
    """The whole conversation's rendering and tokens, every character still template text."""
    text = render_template(tokenizer, msgs, tools=tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _Rendering(
        text=text,
        ids=list(enc["input_ids"]),
        offsets=[(int(s), int(e)) for s, e in enc["offset_mapping"]],
        char_seg=[TEMPLATE] * len(text),
        char_turn=[None] * len(text),
        tools=tools,
    )


def _mark_default_system(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], r: _Rendering, layout: Layout, notes: list[str]
) -> int:
    """Mark a system prompt the template injects when none is given; returns where the injected text ends."""
    injected = _injected_prefix(tokenizer, msgs[0], r.text, r.tools) if msgs[0]["role"] != "system" else None
    if not injected:
        return 0
    end, span = injected
    if span is not None:
        r.default_system = r.text[span[0] : span[1]]
        r.char_seg[span[0] : span[1]] = ["system"] * (span[1] - span[0])
    notes.append(
        "the chat template injected a default system prompt you did not give: "
        + (repr(r.default_system) if span is not None else repr(r.text[:end]))
        + (" (masked; --system sets your own)" if layout.mask_prompt else " (--system sets your own)")
    )
    return end


def _mark_messages(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], r: _Rendering, injected_end: int
) -> None:
    """Find each message's content and the end of its rendering; mark characters with their role and turn.

    A message's rendering ends where the conversation rendered up to it ends, when that is a prefix of the
    whole; else (a template that renders a message differently when it is last) at the end of its content.
    """
    for i in range(len(msgs)):
        upto = r.text if i == len(msgs) - 1 else _try_render(tokenizer, msgs[: i + 1], tools=r.tools)
        r.ends.append(len(upto) if upto is not None and r.text.startswith(upto) else None)
    cursor = injected_end
    for i, message in enumerate(msgs):
        span = _content_span(tokenizer, msgs, i, r.text, cursor, r.tools)
        r.contents.append(span)
        if span is not None:
            r.char_seg[span[0] : span[1]] = [message["role"]] * (span[1] - span[0])
            cursor = span[1]
        if r.ends[i] is None:
            r.ends[i] = span[1] if span is not None else None
    begin = injected_end
    for i, end in enumerate(r.ends):
        if end is None:
            continue
        r.char_turn[begin:end] = [i] * max(0, end - begin)
        begin = max(begin, end)


def _content_span(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    i: int,
    text: str,
    cursor: int,
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[int, int] | None:
    """Where the template puts message ``i``'s content in ``text``: render it with a marker in its place."""
    message = msgs[i]
    marked = _try_render(tokenizer, [*msgs[:i], {"role": message["role"], "content": _CONTENT_MARK}], tools=tools)
    if marked is None or _CONTENT_MARK not in marked:
        return None
    at = marked.index(_CONTENT_MARK)
    if at < cursor or text[:at] != marked[:at]:
        return None
    for content in (message["content"], message["content"].strip()):
        if text.startswith(content, at):
            return at, at + len(content)
    return None


def _mark_tokens(r: _Rendering) -> None:
    """Per token: the segment of the content it overlaps (else template), and the turn of its first character."""
    for s, e in r.offsets:
        roles = [seg for seg in r.char_seg[s:e] if seg != TEMPLATE]
        r.segments.append("assistant" if "assistant" in roles else (roles[0] if roles else TEMPLATE))
        r.turns.append(r.char_turn[s] if s < len(r.text) else (r.turns[-1] if r.turns else None))


def _locate_turns(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], r: _Rendering, targets: list[int], notes: list[str]
) -> tuple[set[int], list[int], list[int]]:
    """The positions each scored turn trains on: from the end of its generation prompt to its end-of-turn token.

    Returns (scored positions, end-of-turn positions, template positions inside a scored turn).
    """
    special = special_ids(tokenizer)
    scored: set[int] = set()
    eot_positions: list[int] = []
    inside_turn: list[int] = []
    for k in targets:
        where = f"assistant message {k}"
        start = _answer_start(tokenizer, msgs, k, r, where)
        span, end_k = r.contents[k], r.ends[k]
        if span is None or end_k is None:
            raise InputError(
                f"the chat template changes the text of {where} (or renders it differently inside the whole "
                "conversation), so its tokens cannot be located; check the template"
            )
        stop = next((j for j in range(start, len(r.ids)) if r.offsets[j][0] >= end_k), len(r.ids))
        content = [j for j in range(start, stop) if r.segments[j] == "assistant" and r.turns[j] == k]
        last = content[-1] if content else start - 1
        closers = [j for j in range(last + 1, stop) if r.ids[j] in special]
        if msgs[k].get("tool_calls"):
            _check_calls_rendered(tokenizer, msgs, k, r.tools)
            eot, end = _tool_call_turn(r, start, stop, closers)
        else:
            eot = closers[0] if closers else None
            end = eot if eot is not None else last
        if end < start:
            raise InputError(f"{where} renders to no tokens after the generation prompt; nothing to score")
        if eot is not None:
            r.segments[eot] = EOT
            eot_positions.append(eot)
        else:
            notes.append(
                f"the template closes {where} with no special token, so nothing after the answer is scored there"
            )
        # What follows the generation prompt is what the model must generate, template text included.
        inside_turn += [j for j in range(start, end + 1) if r.segments[j] == TEMPLATE]
        scored.update(range(start, end + 1))
    return scored, eot_positions, inside_turn


def _check_calls_rendered(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], k: int, tools: Sequence[dict[str, Any]] | None
) -> None:
    """Refuse a template that renders assistant message ``k`` the same without its ``tool_calls``: the calls
    would be missing from the text, and the turn scored as if it said nothing."""
    without = {key: value for key, value in msgs[k].items() if key != "tool_calls"}
    if render_template(tokenizer, [*msgs[:k], without], tools=tools) == render_template(
        tokenizer, msgs[: k + 1], tools=tools
    ):
        raise InputError(
            f"assistant message {k} calls tools, but this chat template does not render `tool_calls` (it shows "
            "only the content), so the calls would not be scored; use a model whose template renders tool calls"
        )


def _tool_call_turn(r: _Rendering, start: int, stop: int, closers: list[int]) -> tuple[int | None, int]:
    """(end-of-turn position, last scored position) of a turn that calls tools: the template renders the calls
    after the content and closes the turn with its last special token. The calls' tokens are what the
    assistant generates, so they take its segment rather than the template's."""
    eot = closers[-1] if closers else None
    end = eot if eot is not None else stop - 1
    for j in range(start, eot if eot is not None else stop):
        if r.segments[j] == TEMPLATE:
            r.segments[j] = "assistant"
    return eot, end


def _answer_start(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], k: int, r: _Rendering, where: str
) -> int:
    """The first token after turn ``k``'s generation prompt, which must be a text and a token prefix."""
    prompt_text = render_template(tokenizer, msgs[:k], generation_prompt=True, tools=r.tools)
    if not r.text.startswith(prompt_text):
        at = _parting(prompt_text, r.text)
        raise InputError(
            f"the chat template is not prefix-consistent: the conversation before {where}, rendered with the "
            f"generation prompt, is not a prefix of the full rendering (they part at character {at}: "
            f"{prompt_text[at : at + 30]!r} vs {r.text[at : at + 30]!r}), so the answer span cannot be located"
        )
    prompt_ids = text_ids(tokenizer, prompt_text)
    start = len(prompt_ids)
    if r.ids[:start] != prompt_ids:
        at = _parting(prompt_ids, r.ids)  # type: ignore[arg-type]
        alone = decode_tokens(tokenizer, prompt_ids[at : at + 2])
        inside = decode_tokens(tokenizer, r.ids[at : at + 2])
        raise InputError(
            f"the chat template is not prefix-consistent at the token level: before {where}, the generation "
            f"prompt tokenizes as {alone} alone but as {inside} in the full conversation (the prompt's last "
            "token merges with the answer's first), so no token boundary separates prompt and answer"
        )
    span = r.contents[k]
    if span is not None and span[0] < len(prompt_text):
        raise InputError(f"the chat template's generation prompt overlaps the content of {where}")
    return start


def _conversation_text_notes(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, Any]], source: str) -> list[str]:
    if source == "pair":
        names = {"user": "the prompt", "assistant": "the answer", "system": "the system prompt"}
        named = [(names.get(m["role"], m["role"]), m["content"]) for m in msgs]
    else:
        named = [(f"message {i} ({m['role']})", m["content"]) for i, m in enumerate(msgs)]
    return text_notes(tokenizer, named, chat=True)


def _apply_generation_mask(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    r: _Rendering,
    targets: list[int],
    scored: set[int],
    notes: list[str],
) -> tuple[dict[str, Any], set[int]]:
    """The template's own mask, where it marks the scored turns, replaces the prefix method's positions."""
    report, marked = _generation_mask(tokenizer, msgs, r.ids, r.turns, set(targets), scored, r.tools)
    if report.get("agrees") is False:
        notes.append(_mask_note(tokenizer, r.ids, report))
    return report, marked or scored


def _generation_mask(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, Any]],
    ids: list[int],
    turns: list[int | None],
    targets: set[int],
    prefix_scored: set[int],
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], set[int]]:
    """The template's own ``{% generation %}`` mask over the scored turns, cross-checked with the prefix method.

    Returns the report for the JSON layout and the positions to score (empty: keep the prefix method's).
    """
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in msgs],
            tools=list(tools) if tools is not None else None,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        mask, mask_ids = list(out["assistant_masks"]), list(out["input_ids"])
    except Exception as exc:  # noqa: BLE001 - the prefix method still stands without it
        return {"used": False, "reason": f"the template's generation mask failed: {one_line(exc)}"}, set()
    if mask_ids != ids:
        return {"used": False, "reason": "the template's tokenization differs from the rendering's"}, set()
    marked = {j for j, m in enumerate(mask) if m and j > 0 and turns[j] in targets}
    if not marked:
        return {"used": False, "reason": "the template marks no token of the scored turns"}, set()
    return {
        "used": True,
        "agrees": marked == prefix_scored,
        "only_template": sorted(marked - prefix_scored),
        "only_prefix": sorted(prefix_scored - marked),
    }, marked


def _mask_note(tokenizer: PreTrainedTokenizerBase, ids: list[int], report: dict[str, Any]) -> str:
    def shown(positions: list[int]) -> str:
        return ", ".join(f"{j}:{t!r}" for j, t in zip(positions, decode_tokens(tokenizer, [ids[j] for j in positions])))

    return (
        "the template's {% generation %} mask and the generation-prompt prefix disagree; scoring the template's "
        "mask (what return_assistant_tokens_mask trains). Only the template marks: ["
        + shown(report["only_template"])
        + "]; only the prefix marks: ["
        + shown(report["only_prefix"])
        + "]"
    )
