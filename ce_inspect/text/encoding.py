"""Prompt/answer (or a chat conversation) -> the exact (input_ids, labels) a causal-LM training step would see.

Pair layout: [BOS if the tokenizer adds one] + prompt + [separator] + answer + [EOS unless disabled].
``separate`` tokenization (the default, as most SFT collators do) tokenizes prompt and answer on their
own and concatenates; ``joint`` tokenizes prompt + answer as one string and splits at the prompt's
token length, as lm-evaluation-harness does. Both splits are always computed, so that a difference at
the boundary can be reported whichever one is scored.

Chat layout: the tokenizer's own chat template renders the conversation; each scored assistant turn
is located by rendering the conversation before it with the generation prompt and checking that this
is a token prefix of the full rendering. What follows the generation prompt, up to and including the
end-of-turn token, is what the model has to generate, so it is what assistant-only training scores.

Labels are the input ids with every position that is not trained set to ``ignore_index``; the shift
by one happens in scoring, exactly where the model's own loss does it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import WINDOWS_REMEDY, InputError, SequenceTooLongError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

#: Segment names used in ``Encoded.segments``; scored positions are those whose label is not ignored.
BOS, PROMPT, SEP, ANSWER, EOS = "bos", "prompt", "sep", "answer", "eos"
#: Chat segments: each message's content is named by its role (system, user, assistant, tool, ...);
#: text the template adds around it is ``template``; the token that closes an assistant turn is ``eot``.
TEMPLATE, EOT = "template", "eot"
#: How a prompt/answer pair is split into tokens (see the module docstring).
TOKENIZATIONS = ("separate", "joint", "trl")
#: What special-token text inside the user's text becomes: ``parse`` (the tokenizer's default, what a
#: training pipeline's tokenizer call does) makes ``<|im_end|>`` one control token; ``text`` encodes it
#: as the plain characters it is made of (``split_special_tokens=True``). Pairs only: a chat template's
#: rendering is one string, where the template's own markers and the messages' text cannot be told apart.
SPECIAL_TOKENS = ("parse", "text")


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
    #: Chat only: per position, the index of the message whose rendering holds it (None: template text
    #: outside every message, such as an injected default system prompt). Empty for pairs.
    turns: tuple[int | None, ...] = ()
    #: Chat only: the role of each message, indexed like ``turns``.
    turn_roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.input_ids) == len(self.labels) == len(self.segments)):
            raise ValueError("input_ids, labels and segments must have the same length")
        if self.turns and len(self.turns) != len(self.input_ids):
            raise ValueError("turns must be empty or have one entry per position")

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


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str, plain: bool = False) -> list[int]:
    """The ids of ``text`` alone; ``plain`` keeps special-token strings as plain text."""
    if plain:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 1]) + "…"


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
        for tid in _tokens(tokenizer, text):
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


def _ignored_targets_note(
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


@dataclass(frozen=True)
class Layout:
    """How a prompt/answer pair becomes a training example (the options `run` and `batch` share).

    ``chat`` renders the pair with the tokenizer's chat template (user = prompt, assistant = answer,
    ``system`` as a system message); ``tokenization`` picks the pair split, ``separate`` or ``joint``.
    With ``chat``, ``add_eos`` decides whether the template's end-of-turn token is scored.
    ``special_tokens`` (pairs only) is ``parse`` or ``text``, see ``SPECIAL_TOKENS``. ``system`` and ``sep``
    pass ``check_text``.
    """

    sep: str | None = None
    add_eos: bool = True
    ignore_index: int = IGNORE_INDEX
    mask_prompt: bool = True
    truncate_prompt: bool = False
    chat: bool = False
    system: str | None = None
    tokenization: str = "separate"
    special_tokens: str = "parse"
    #: ``text`` records longer than the context: scored in windows that advance by this many tokens.
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.stride is not None and self.stride < 1:
            raise InputError(f"`stride` must be at least 1 token, got {self.stride}")
        if self.tokenization not in TOKENIZATIONS:
            raise InputError(f"unknown `tokenization` {self.tokenization!r}; use separate, joint or trl")
        if self.tokenization == "trl" and (self.sep or self.truncate_prompt):
            raise InputError(
                "`tokenization` trl reproduces TRL, which has no `sep` and no `truncate_prompt`; drop them"
            )
        if self.special_tokens not in SPECIAL_TOKENS:
            raise InputError(f"unknown `special_tokens` {self.special_tokens!r}; use parse or text")
        if self.tokenization == "trl" and self.special_tokens != "parse":
            raise InputError(
                "`tokenization` trl reproduces TRL, whose tokenizer call parses special-token text; "
                "drop `special_tokens`"
            )
        if self.system is not None:
            check_text(self.system, "the system prompt")
        if self.sep is not None:
            check_text(self.sep, "the separator")
        if self.chat:
            _check_chat_layout(self)
        elif self.system is not None:
            raise InputError("`system` needs `chat`: the chat template is what places a system prompt")


def _check_chat_layout(layout: Layout) -> None:
    """Options that only make sense for a prompt/answer pair, rejected for a chat rendering."""
    if layout.sep:
        raise InputError("`sep` does not apply with a chat template, which places its own separators; drop `sep`")
    if layout.tokenization != "separate":
        raise InputError(
            f"`tokenization` {layout.tokenization} applies to prompt/answer pairs; a chat template is rendered and "
            "tokenized as one string (its answer boundary is checked instead); drop `tokenization`"
        )
    if layout.special_tokens != "parse":
        raise InputError(
            f"`special_tokens` {layout.special_tokens} applies to prompt/answer pairs: a chat template's rendering is "
            "tokenized as one string, where special-token text in a message cannot be told from the template's own "
            "markers; drop `special_tokens` (a note names any special-token text the messages contain)"
        )
    if layout.truncate_prompt:
        raise InputError(
            "`truncate_prompt` cannot cut a chat conversation without breaking its template; shorten the conversation"
        )


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
    notes += _ignored_targets_note(tokenizer, input_ids, trained, ignore_index)
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
        _tokens(tokenizer, prompt, plain),
        _tokens(tokenizer, sep, plain) if sep else [],
        _tokens(tokenizer, answer, plain),
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
    whole = _tokens(tokenizer, context + continuation, plain)
    context_ids = _tokens(tokenizer, context, plain)
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
    split = len(_tokens(tokenizer, context, plain))
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


def decode_tokens(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own, special tokens kept, so that the text is what the token adds."""
    return [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's stand-in characters (GPT-2's scheme) -> the bytes they stand for.

    Printable Latin-1 bytes stand for themselves; every other byte, in order, for chr(256 + n).
    """
    own = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out: dict[str, int] = {}
    moved = 0
    for b in range(256):
        if b in own:
            out[chr(b)] = b
        else:
            out[chr(256 + moved)] = b
            moved += 1
    return out


_BYTE_LEVEL = _byte_level_alphabet()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_hex(tokenizer: PreTrainedTokenizerBase, token_id: int, text: str) -> str | None:
    """The bytes of a token that does not decode to text on its own, in hex (``"F0 9F"``); else None.

    ``text`` is the token decoded alone (``decode_tokens``). A byte-level token holding part of a character
    (emoji, CJK, combining marks) decodes to U+FFFD, whatever its bytes; its vocabulary entry still says
    which bytes it is: byte-level BPE's stand-in characters, or SentencePiece's ``<0xF0>`` byte fallback.
    """
    if "\ufffd" not in text:
        return None
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    match = _BYTE_FALLBACK.fullmatch(piece)
    if match:
        raw = bytes([int(match[1], 16)])
    elif all(ch in _BYTE_LEVEL for ch in piece):
        raw = bytes(_BYTE_LEVEL[ch] for ch in piece)
    else:
        return None
    try:
        if "\ufffd" in raw.decode("utf-8"):
            return None  # the token really is U+FFFD
    except UnicodeDecodeError:
        return raw.hex(" ").upper()
    return None


# --- chat templates ------------------------------------------------------------------------------------

#: Stand-ins for message contents when locating where a template puts them (private-use code points,
#: which no template strips and no real message contains).
_CONTENT_MARK, _SYSTEM_MARK = "\ue000", "\ue001"
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def parse_messages(data: Any, source: str = "messages") -> list[dict[str, str]]:
    """Validate a conversation: a list of ``{"role", "content"}`` objects (OpenAI / HF chat data).

    Also takes ``{"messages": [...]}``, and OpenAI content parts when all of them are text. Every role and
    content passes ``check_text``. ``source`` names the input in error messages.
    """
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise InputError(f'{source}: expected a non-empty JSON list of {{"role": ..., "content": ...}} messages')
    messages = []
    for i, message in enumerate(data):
        if not isinstance(message, dict):
            raise InputError(f"{source}: message {i} is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InputError(f'{source}: message {i} has no "role" string (system, user, assistant, ...)')
        check_text(role, f"{source}: the role of message {i}")
        if isinstance(content, list):
            texts = [
                part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None for part in content
            ]
            if any(not isinstance(t, str) for t in texts):
                raise InputError(
                    f"{source}: message {i} ({role}) has a content part that is not text; only text is scored"
                )
            content = "".join(texts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise InputError(f'{source}: message {i} ({role}) has no "content" string')
        check_text(content, f"{source}: message {i} ({role})")
        messages.append({"role": role, "content": content})
    return messages


def scored_turns(msgs: Sequence[dict[str, str]], last_turn: bool = False, source: str = "messages") -> list[int]:
    """The indices of the assistant messages a conversation scores (all, or the last with ``last_turn``).

    The rules on what can be scored, checked before any model or tokenizer is needed: there is an
    assistant message, the conversation does not open with one, and each scored one passes
    ``check_answer`` (the rule a pair's answer follows).
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
        check_answer(msgs[k]["content"], f"{source}: assistant message {k}")
    return targets


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
) -> Encoded:
    """A conversation, rendered with the tokenizer's chat template; every assistant turn is scored.

    ``last_turn`` scores only the last assistant turn. ``layout.system`` adds a system message (an error
    when the conversation has one). Pair-only options of ``layout`` (sep, joint tokenization,
    truncation, plain-text special tokens) are rejected; ``layout.chat`` need not be set.
    """
    msgs = parse_messages(messages)
    _check_chat_layout(layout)
    if last_turn and not layout.mask_prompt:
        raise InputError(
            "`last_turn` scores one assistant turn, and scoring the prompt too (`mask_prompt`) every token; "
            "use one of them"
        )
    if layout.system is not None:
        if msgs[0]["role"] == "system":
            raise InputError("the conversation already starts with a system message; drop `system` or that message")
        msgs.insert(0, {"role": "system", "content": layout.system})
    return _encode_conversation(tokenizer, msgs, layout, max_length=max_length, last_turn=last_turn, source="messages")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
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
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], generation_prompt: bool = False
) -> str:
    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - a template raising on this conversation is an input problem
        raise InputError(f"the chat template failed on this conversation: {_one_line(exc)}") from exc


def _try_render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], generation_prompt: bool = False
) -> str | None:
    try:
        return render_template(tokenizer, messages, generation_prompt)
    except InputError:
        return None


def _parting(a: str, b: str) -> int:
    """The first index where two strings differ."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def _injected_prefix(
    tokenizer: PreTrainedTokenizerBase, first: dict[str, str], text: str
) -> tuple[int, tuple[int, int] | None] | None:
    """Text the template puts before the first message's own block when no system message is given.

    Returns (its length, the span of its system-prompt content if it has the shape of a system block), or
    None when the template injects nothing (or its structure cannot be told apart).
    """
    own = _try_render(tokenizer, [{"role": first["role"], "content": _CONTENT_MARK}])
    system_only = _try_render(tokenizer, [{"role": "system", "content": _SYSTEM_MARK}])
    with_system = _try_render(
        tokenizer, [{"role": "system", "content": _SYSTEM_MARK}, {"role": first["role"], "content": _CONTENT_MARK}]
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


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The named special tokens and every added token marked special (chat markers like <|im_end|>)."""
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    return ids


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


def _encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, str]],
    layout: Layout,
    *,
    max_length: int | None,
    last_turn: bool,
    source: str,
) -> Encoded:
    template = _check_chat_tokenizer(tokenizer)
    targets = scored_turns(msgs, last_turn, source)
    notes: list[str] = []
    r = _render_conversation(tokenizer, msgs)
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
    notes += _ignored_targets_note(tokenizer, r.ids, trained, layout.ignore_index)
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


def _check_fits(length: int, max_length: int | None) -> None:
    if max_length is not None and length > max_length:
        raise SequenceTooLongError(
            f"the conversation is {length} tokens but the model's context is {max_length}; shorten it "
            "(`truncate_prompt` cannot cut a chat)"
        )


def _check_chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template, once it is known to be usable for locating turns."""
    template = _chat_template(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            "the chat layout needs a fast (Rust-backed) tokenizer, for the character offsets of its tokens; "
            "this model only has a slow one"
        )
    return template


def _render_conversation(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]]) -> _Rendering:
    """The whole conversation's rendering and tokens, every character still template text."""
    text = render_template(tokenizer, msgs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _Rendering(
        text=text,
        ids=list(enc["input_ids"]),
        offsets=[(int(s), int(e)) for s, e in enc["offset_mapping"]],
        char_seg=[TEMPLATE] * len(text),
        char_turn=[None] * len(text),
    )


def _mark_default_system(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], r: _Rendering, layout: Layout, notes: list[str]
) -> int:
    """Mark a system prompt the template injects when none is given; returns where the injected text ends."""
    injected = _injected_prefix(tokenizer, msgs[0], r.text) if msgs[0]["role"] != "system" else None
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
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], r: _Rendering, injected_end: int
) -> None:
    """Find each message's content and the end of its rendering; mark characters with their role and turn.

    A message's rendering ends where the conversation rendered up to it ends, when that is a prefix of the
    whole; else (a template that renders a message differently when it is last) at the end of its content.
    """
    for i in range(len(msgs)):
        upto = r.text if i == len(msgs) - 1 else _try_render(tokenizer, msgs[: i + 1])
        r.ends.append(len(upto) if upto is not None and r.text.startswith(upto) else None)
    cursor = injected_end
    for i, message in enumerate(msgs):
        span = _content_span(tokenizer, msgs, i, r.text, cursor)
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
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], i: int, text: str, cursor: int
) -> tuple[int, int] | None:
    """Where the template puts message ``i``'s content in ``text``: render it with a marker in its place."""
    message = msgs[i]
    marked = _try_render(tokenizer, [*msgs[:i], {"role": message["role"], "content": _CONTENT_MARK}])
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
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], r: _Rendering, targets: list[int], notes: list[str]
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
        eot = next((j for j in range(last + 1, stop) if r.ids[j] in special), None)
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


def _answer_start(
    tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], k: int, r: _Rendering, where: str
) -> int:
    """The first token after turn ``k``'s generation prompt, which must be a text and a token prefix."""
    prompt_text = render_template(tokenizer, msgs[:k], generation_prompt=True)
    if not r.text.startswith(prompt_text):
        at = _parting(prompt_text, r.text)
        raise InputError(
            f"the chat template is not prefix-consistent: the conversation before {where}, rendered with the "
            f"generation prompt, is not a prefix of the full rendering (they part at character {at}: "
            f"{prompt_text[at : at + 30]!r} vs {r.text[at : at + 30]!r}), so the answer span cannot be located"
        )
    prompt_ids = _tokens(tokenizer, prompt_text)
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


def _conversation_text_notes(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]], source: str) -> list[str]:
    if source == "pair":
        names = {"user": "the prompt", "assistant": "the answer", "system": "the system prompt"}
        named = [(names.get(m["role"], m["role"]), m["content"]) for m in msgs]
    else:
        named = [(f"message {i} ({m['role']})", m["content"]) for i, m in enumerate(msgs)]
    return text_notes(tokenizer, named, chat=True)


def _apply_generation_mask(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, str]],
    r: _Rendering,
    targets: list[int],
    scored: set[int],
    notes: list[str],
) -> tuple[dict[str, Any], set[int]]:
    """The template's own mask, where it marks the scored turns, replaces the prefix method's positions."""
    report, marked = _generation_mask(tokenizer, msgs, r.ids, r.turns, set(targets), scored)
    if report.get("agrees") is False:
        notes.append(_mask_note(tokenizer, r.ids, report))
    return report, marked or scored


def _generation_mask(
    tokenizer: PreTrainedTokenizerBase,
    msgs: list[dict[str, str]],
    ids: list[int],
    turns: list[int | None],
    targets: set[int],
    prefix_scored: set[int],
) -> tuple[dict[str, Any], set[int]]:
    """The template's own ``{% generation %}`` mask over the scored turns, cross-checked with the prefix method.

    Returns the report for the JSON layout and the positions to score (empty: keep the prefix method's).
    """
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in msgs], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        mask, mask_ids = list(out["assistant_masks"]), list(out["input_ids"])
    except Exception as exc:  # noqa: BLE001 - the prefix method still stands without it
        return {"used": False, "reason": f"the template's generation mask failed: {_one_line(exc)}"}, set()
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


# --- TRL's rule (--tokenization trl) -------------------------------------------------------------------


def encode_trl(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[dict[str, str]],
    completion: str | Sequence[dict[str, str]],
    *,
    ignore_index: int = IGNORE_INDEX,
    add_eos: bool = True,
    mask_prompt: bool = True,
    max_length: int | None = None,
) -> Encoded:
    """A prompt-completion pair exactly as TRL's ``SFTTrainer`` prepares it (TRL 1.x, ``completion_only_loss``).

    Plain (two strings): the EOS token's text is appended to the completion unless it already ends with it,
    then the prompt alone and prompt + completion are each tokenized as one string, special tokens added
    (BOS). Conversational (two message lists): the prompt is rendered with the generation prompt, prompt +
    completion without, both tokenized by the chat template. Either way the completion starts where the two
    token sequences diverge (their common prefix), and every token after it is trained: for a chat template
    that ends a turn with ``<|im_end|>\\n``, the newline too. When the prompt alone has tokens past that point
    (a word merged across the boundary, a template that renders the prompt differently when it is last),
    they are not in the sequence; a note says which. ``add_eos=False`` (TRL always appends it) and
    ``mask_prompt=False`` (TRL's ``completion_only_loss=False``) are stated in the notes.
    """
    conversational = not isinstance(prompt, str)
    if conversational != (not isinstance(completion, str)):
        raise InputError("prompt and completion must both be strings or both be message lists")
    notes: list[str] = []
    prompt_ids, full_ids = _trl_pair_ids(tokenizer, prompt, completion, add_eos, notes)
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
    prompt: str | Sequence[dict[str, str]],
    completion: str | Sequence[dict[str, str]],
    add_eos: bool,
    notes: list[str],
) -> tuple[list[int], list[int]]:
    """TRL's two tokenizations: the prompt alone (with the generation prompt) and prompt + completion."""
    if not isinstance(prompt, str):
        prompt_ids = _trl_chat_ids(tokenizer, list(prompt), generation_prompt=True)
        return prompt_ids, _trl_chat_ids(tokenizer, [*prompt, *completion])  # type: ignore[list-item]
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
    data: str | Sequence[dict[str, str]],
    *,
    ignore_index: int = IGNORE_INDEX,
    add_eos: bool = True,
    max_length: int | None = None,
    stride: int | None = None,
) -> Encoded:
    """TRL's language-modelling types: ``text`` (EOS text appended, special tokens added) or ``messages``
    (rendered by the chat template); every token trained, as TRL does without ``assistant_only_loss``."""
    notes: list[str] = []
    if isinstance(data, str):
        text = data
        if add_eos and tokenizer.eos_token is not None and not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        ids = list(tokenizer(text)["input_ids"])
        kind = "text"
    else:
        ids = _trl_chat_ids(tokenizer, list(data))
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
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool = False
) -> list[int]:
    _chat_template(tokenizer)
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - a template raising on this conversation is an input problem
        raise InputError(f"the chat template failed on this conversation: {_one_line(exc)}") from exc
    return list(out["input_ids"])
