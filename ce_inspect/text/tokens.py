"""What a tokenizer does with text: the ids of a text alone, its special ids and prefix, each token
decoded on its own, and the bytes of a token that is part of a character."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ce_inspect.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before any text (BOS for Llama-style tokenizers, nothing for GPT-2)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, plain: bool = False) -> list[int]:
    """The ids of ``text`` alone; ``plain`` keeps special-token strings as plain text."""
    if plain:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The named special tokens and every added token marked special (chat markers like <|im_end|>)."""
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    return ids


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


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer is byte-level BPE (GPT-2's scheme: its decoder is ``ByteLevel``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


def token_bytes(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> dict[int, bytes]:
    """The UTF-8 bytes each distinct id stands for, as the tokenizer maps it.

    A byte-level BPE token: the bytes its stand-in characters map to (exact, a part of a character too; a
    special token, the bytes of its text). A SentencePiece ``<0xF0>`` byte-fallback token: that byte. Any
    other token: its vocabulary entry with SentencePiece's ``▁`` as a space, else the token decoded alone,
    in UTF-8.
    """
    byte_level = is_byte_level(tokenizer)
    distinct = sorted(set(ids))
    pieces = tokenizer.convert_ids_to_tokens(distinct)
    texts = dict(zip(distinct, decode_tokens(tokenizer, distinct)))
    out: dict[int, bytes] = {}
    for tid, piece in zip(distinct, pieces):
        piece = piece if isinstance(piece, str) else ""
        match = _BYTE_FALLBACK.fullmatch(piece)
        if byte_level and piece and all(ch in _BYTE_LEVEL for ch in piece):
            out[tid] = bytes(_BYTE_LEVEL[ch] for ch in piece)
        elif match:
            out[tid] = bytes([int(match[1], 16)])
        elif "\u2581" in piece:
            out[tid] = piece.replace("\u2581", " ").encode("utf-8")
        else:
            out[tid] = texts[tid].encode("utf-8")
    return out


def count_words(text: str) -> int:
    """Words as lm-evaluation-harness counts them for ``word_perplexity`` (``Task.count_words``):
    ``len(re.split(r"\\s+", text))``, so a leading or trailing space counts one more."""
    return len(re.split(r"\s+", text))


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """lm-eval HFLM's ``prefix_token_id``: what stands for an empty context (BOS, else EOS)."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise InputError("this tokenizer has neither a BOS nor an EOS token to stand for an empty context")
    return int(tid)


def lmeval_tok_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], int]:
    """HFLM's ``tok_encode(text)``: the tokenizer's special tokens unless ``text`` starts with the prefix
    token's text; and how many leading special tokens the tokenizer added."""
    starts_with_prefix = text.startswith(tokenizer.decode(prefix_token_id(tokenizer)))
    ids = list(tokenizer.encode(text, add_special_tokens=False if starts_with_prefix else True))
    added = 0 if starts_with_prefix else len(special_prefix(tokenizer))
    return ids, added
