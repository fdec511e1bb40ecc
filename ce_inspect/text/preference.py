"""A preference pair (prompt, chosen, rejected) -> the two training sequences TRL's ``DPOTrainer`` scores.

TRL 1.x's rule (``DPOTrainer._prepare_dataset`` and ``DataCollatorForPreference``), the default
(``tokenization="trl"``):

1. No prompt given (the implicit-prompt form): ``extract_prompt`` takes the longest common prefix of chosen
   and rejected as the prompt (characters for strings, whole messages for conversations).
2. Plain text: the EOS token's text is appended to each side that does not already end with it.
3. The prompt alone (conversations: with the generation prompt) and prompt + each side are tokenized as one
   string each (conversations: through the chat template). The completion starts where the prompt's tokens
   and each side's stop agreeing; TRL takes the smaller of the two points for both sides.
4. ``max_length``: each sequence prompt + side is cut to ``max_length`` tokens, keeping its start
   (``keep_start``) or its end (``keep_end``); the completion mask is cut with it.

``separate`` and ``joint`` (plain pairs only) lay each side out as ``run`` lays out a prompt/answer pair
(``text.encode_pair``), then cut it as above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ce_inspect.errors import InputError
from ce_inspect.text.chat import chat_template, one_line
from ce_inspect.text.encoded import ANSWER, EOS, EOT, IGNORE_INDEX, PROMPT, Encoded
from ce_inspect.text.pair import encode_pair
from ce_inspect.text.tokens import decode_tokens, special_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: How a pair's sides are tokenized: TRL's DPO rule, or as ``run`` lays out a prompt/answer pair.
PREFERENCE_TOKENIZATIONS = ("trl", "separate", "joint")
#: TRL's ``truncation_mode``: which end of a sequence longer than ``max_length`` is kept.
TRUNCATION_MODES = ("keep_start", "keep_end")
#: The checks of a pair (its text and tokens alone, no model), in the order findings are listed.
PAIR_CHECKS = ("identical", "no-trained-tokens", "prompt-differs", "side-is-prompt")
#: The check of a whole preference data set (no model): one side longer than the other in most pairs.
LENGTH_BIAS = "length-bias"
#: length-bias fires when one side has more trained tokens than the other in at least this share of the pairs
#: (chosen longer, or rejected longer), over at least ``LENGTH_BIAS_MIN_PAIRS`` pairs. With 20 pairs of
#: random lengths, 15 or more one way happens about 4% of the time (two-sided binomial); real preference sets
#: with a verbosity bias reach it (a DPO run then learns length as much as quality).
LENGTH_BIAS_SHARE = 0.75
LENGTH_BIAS_MIN_PAIRS = 20
#: What each check of a pair, and of a preference data set, finds (``audit`` lists them with its own checks).
PAIR_CHECK_INFO = {
    "identical": "chosen and rejected are the same tokens (also after truncation to `max_length`): no gradient",
    "no-trained-tokens": "a side has no trained token (after truncation to `max_length`)",
    "prompt-differs": "the prompts of the two sides differ (implicit-prompt pairs that differ before their answers)",
    "side-is-prompt": "a side's text is the prompt's (whitespace aside): an answer that echoes the question",
    "length-bias": f"one side has more trained tokens than the other in at least {LENGTH_BIAS_SHARE:.0%} of the pairs "
    f"({LENGTH_BIAS_MIN_PAIRS} pairs or more)",
}
SIDES = ("chosen", "rejected")

Text = str | Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Finding:
    """One failed check of a pair: its name (one of ``PAIR_CHECKS``), what was found, and the side it concerns
    (None: both)."""

    check: str
    message: str
    side: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message}


@dataclass(frozen=True)
class PreferenceExample(Encoded):
    """A pair as the data-set runner holds it: ``input_ids``/``labels``/``segments`` are the chosen sequence
    followed by the rejected one (their lengths and targets are what batching and ``--resume`` compare; the
    rejected sequence's first position is not a target), ``chosen``/``rejected`` the two sequences scored."""

    requires_targets: ClassVar[bool] = False

    chosen: Encoded | None = None
    rejected: Encoded | None = None
    #: First position where the two sequences differ; None when they are identical.
    divergence: int | None = None
    findings: tuple[Finding, ...] = ()
    #: What the two sides are: the format, the prompt's and each side's token counts, the truncation.
    pair_layout: dict[str, Any] = field(default_factory=dict)

    def side(self, name: str) -> Encoded:
        encoded = self.chosen if name == "chosen" else self.rejected
        assert encoded is not None
        return encoded


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """TRL's ``extract_prompt``: the longest common prefix of the two sides as the prompt, the rest as the sides.

    TRL's rule exactly, quirks included: for strings, a space just before the first differing character goes
    to the completions; when one side is a prefix of the other (no differing element), the prefix minus its
    last element is the prompt (TRL's loop index stops one short).
    """
    if not len(chosen) or not len(rejected):
        raise InputError("a side is empty: there is nothing to compare")
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":  # TRL: the space before the first difference goes with the completion
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


def encode_preference(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Text | None,
    chosen: Text,
    rejected: Text,
    *,
    tokenization: str = "trl",
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    ignore_index: int = IGNORE_INDEX,
) -> PreferenceExample:
    """One preference pair as TRL's ``DPOTrainer`` prepares it (``tokenization`` trl), or with ``run``'s pair
    split (``separate``, ``joint``); ``prompt`` None is the implicit-prompt form. The pair's checks are run on
    the result (``PreferenceExample.findings``)."""
    check_preference_options(tokenization, max_length, truncation_mode)
    implicit = prompt is None
    conversational = _check_kinds(prompt, chosen, rejected)
    if implicit:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if conversational and not len(prompt):
            raise InputError(
                "chosen and rejected share no message, so TRL's extract_prompt finds an empty prompt, which the "
                "chat template cannot render: the two conversations have different prompts"
            )
    assert prompt is not None
    if not len(chosen) or not len(rejected):
        raise InputError(f"the {'chosen' if not len(chosen) else 'rejected'} side is empty: there is nothing to score")
    notes: list[str] = []
    if tokenization == "trl":
        prompt_ids, sides, starts = _trl_ids(tokenizer, prompt, chosen, rejected, conversational, notes)
    else:
        if conversational:
            raise InputError(
                f"`tokenization` {tokenization} applies to plain pairs; a conversation is rendered by the chat "
                "template: use trl"
            )
        prompt_ids, sides, starts = _pair_ids(tokenizer, prompt, chosen, rejected, tokenization)  # type: ignore[arg-type]
    special = special_ids(tokenizer)
    encoded = [
        _side(tokenizer, ids, start, max_length, truncation_mode, ignore_index, special)
        for ids, start in zip(sides, starts)
    ]
    layout = {
        "tokenization": tokenization,
        "conversational": conversational,
        "implicit_prompt": implicit,
        "prompt_tokens": min(starts),
        "prompt_tokens_alone": len(prompt_ids),
        "chosen_tokens": len(sides[0]) - starts[0],
        "rejected_tokens": len(sides[1]) - starts[1],
        "max_length": max_length,
        "truncation_mode": truncation_mode,
        "chosen_truncated": len(sides[0]) - len(encoded[0][0]),
        "rejected_truncated": len(sides[1]) - len(encoded[1][0]),
    }
    return _assemble(encoded, layout, tuple(notes), ignore_index, implicit, conversational, prompt, chosen, rejected)


def check_preference_options(tokenization: str, max_length: int | None, truncation_mode: str) -> None:
    if tokenization not in PREFERENCE_TOKENIZATIONS:
        raise InputError(f"unknown `tokenization` {tokenization!r} for a preference pair; use trl, separate or joint")
    if truncation_mode not in TRUNCATION_MODES:
        raise InputError(f"unknown `truncation_mode` {truncation_mode!r}; use keep_start or keep_end")
    if max_length is not None and max_length < 1:
        raise InputError(f"`max_length` must be at least 1 token, got {max_length}")


def _check_kinds(prompt: Text | None, chosen: Text, rejected: Text) -> bool:
    """Whether the pair is conversational; a pair mixing strings and message lists is bad input."""
    kinds = {name: isinstance(value, str) for name, value in (("chosen", chosen), ("rejected", rejected))}
    if prompt is not None:
        kinds["prompt"] = isinstance(prompt, str)
    if len(set(kinds.values())) > 1:
        found = ", ".join(f"{k} is {'a string' if v else 'a message list'}" for k, v in kinds.items())
        raise InputError(f"the pair mixes plain text and messages ({found}); give all strings or all message lists")
    return not kinds["chosen"]


def _trl_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Text, chosen: Text, rejected: Text, conversational: bool, notes: list
) -> tuple[list[int], list[list[int]], list[int]]:
    """TRL's three tokenizations and the completion start (the shorter common prefix) of both sides."""
    if conversational:
        prompt_ids = _chat_ids(tokenizer, list(prompt), generation_prompt=True)  # type: ignore[arg-type]
        sides = [_chat_ids(tokenizer, [*prompt, *side]) for side in (chosen, rejected)]  # type: ignore[list-item]
    else:
        eos = tokenizer.eos_token
        if eos is None:
            raise InputError("this tokenizer has no EOS token, which TRL appends to each side")
        texts = [side if side.endswith(eos) else side + eos for side in (chosen, rejected)]  # type: ignore[union-attr]
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        sides = [list(tokenizer(prompt + text)["input_ids"]) for text in texts]  # type: ignore[operator]
    start = min(common_prefix_length(prompt_ids, ids) for ids in sides)
    if start < len(prompt_ids):
        notes.append(
            f"TRL's rule: the prompt tokenized alone ends in {decode_tokens(tokenizer, prompt_ids[start:])}, which "
            f"prompt + completion does not have; both completions start where they diverge (token {start}), as "
            "in TRL's training"
        )
    return prompt_ids, sides, [start, start]


def _pair_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str, tokenization: str
) -> tuple[list[int], list[list[int]], list[int]]:
    """Each side laid out as ``run`` lays out a prompt/answer pair (BOS, prompt, answer, EOS)."""
    sides, starts = [], []
    for side in (chosen, rejected):
        encoded = encode_pair(tokenizer, prompt, side, tokenization=tokenization)
        sides.append(list(encoded.input_ids))
        starts.append(next(i for i, label in enumerate(encoded.labels) if label != encoded.ignore_index))
    return sides[0][: starts[0]], sides, starts


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool = False):
    chat_template(tokenizer)
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - a template raising on this conversation is an input problem
        raise InputError(f"the chat template failed on this conversation: {one_line(exc)}") from exc
    return list(out["input_ids"])


def _side(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    start: int,
    max_length: int | None,
    truncation_mode: str,
    ignore_index: int,
    special: set[int],
) -> tuple[list[int], list[int], list[str]]:
    """TRL's collator for one side: prompt + completion, the completion mask, both cut to ``max_length``."""
    mask = [0] * start + [1] * (len(ids) - start)
    if max_length is not None and len(ids) > max_length:
        cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
        ids, mask = ids[cut], mask[cut]
    labels = [tid if m else ignore_index for tid, m in zip(ids, mask)]
    segments = [
        PROMPT if not m else ((EOS if tid == tokenizer.eos_token_id else EOT) if tid in special else ANSWER)
        for tid, m in zip(ids, mask)
    ]
    return ids, labels, segments


def _assemble(
    encoded: list[tuple[list[int], list[int], list[str]]],
    layout: dict[str, Any],
    notes: tuple[str, ...],
    ignore_index: int,
    implicit: bool,
    conversational: bool,
    prompt: Text,
    chosen: Text,
    rejected: Text,
) -> PreferenceExample:
    sides = [
        Encoded(
            input_ids=tuple(ids), labels=tuple(labels), segments=tuple(segs), ignore_index=ignore_index, notes=notes
        )
        for ids, labels, segs in encoded
    ]
    (c_ids, c_labels, c_segs), (r_ids, r_labels, r_segs) = encoded
    divergence = common_prefix_length(c_ids, r_ids)
    same = c_ids == r_ids and c_labels == r_labels
    layout = {**layout, "divergence": None if same else divergence}
    findings = pair_findings(sides, layout, implicit, conversational, prompt, chosen, rejected)
    rejected_labels = [ignore_index, *r_labels[1:]] if r_labels else []  # the join is no target
    return PreferenceExample(
        input_ids=tuple(c_ids + r_ids),
        labels=tuple(c_labels + rejected_labels),
        segments=tuple(c_segs + r_segs),
        ignore_index=ignore_index,
        notes=notes,
        chosen=sides[0],
        rejected=sides[1],
        divergence=None if same else divergence,
        findings=findings,
        pair_layout=layout,
    )


def pair_findings(
    sides: list[Encoded],
    layout: dict[str, Any],
    implicit: bool,
    conversational: bool,
    prompt: Text,
    chosen: Text,
    rejected: Text,
) -> tuple[Finding, ...]:
    """The pair's checks on its tokens: the sides identical, a side with nothing trained, prompts that differ, a
    side that repeats the prompt."""
    found: list[Finding] = []
    chosen_enc, rejected_enc = sides
    if chosen_enc.input_ids == rejected_enc.input_ids and chosen_enc.labels == rejected_enc.labels:
        why = "the same text" if chosen == rejected else "the same tokens after truncation to max_length"
        found.append(Finding("identical", f"chosen and rejected are {why}: the pair has no gradient"))
    for name, enc in zip(SIDES, sides):
        if not enc.scored_positions:
            cut = layout[f"{name}_truncated"]
            why = f" (truncation to max_length cut {cut} tokens)" if cut else ""
            drop = (
                " (TRL's DPOTrainer drops such a pair)"
                if not chosen_enc.scored_positions and not rejected_enc.scored_positions
                else ""
            )
            found.append(Finding("no-trained-tokens", f"the {name} side has no trained token{why}{drop}", name))
    differs = _prompt_difference(implicit, conversational, prompt, chosen, rejected)
    if differs:
        found.append(Finding("prompt-differs", differs))
    for name, side in zip(SIDES, (chosen, rejected)):
        if _side_is_prompt(prompt, side):
            found.append(
                Finding("side-is-prompt", f"the {name} side repeats the prompt: its text is the prompt's", name)
            )
    return tuple(found)


def _plain(text: Text) -> str:
    """A side's or prompt's text with its whitespace runs made one space: a string as it is, a conversation
    its messages' contents."""
    if not isinstance(text, str):
        text = " ".join(str(m.get("content", "")) for m in text)
    return " ".join(text.split())


def _side_is_prompt(prompt: Text, side: Text) -> bool:
    """The side's text is the prompt's (whitespace aside), or, for a conversation, the last prompt message's:
    an answer that echoes the question (a copy error, or a generation that repeated its input)."""
    text = _plain(side)
    if not text:
        return False
    if text == _plain(prompt):
        return True
    return not isinstance(prompt, str) and len(prompt) > 0 and text == _plain([prompt[-1]])


@dataclass
class LengthCounts:
    """length-bias over a data set: in how many pairs the chosen side has more trained tokens than the rejected,
    fewer, or as many (``add`` each pair's two counts)."""

    chosen_longer: int = 0
    rejected_longer: int = 0
    same_length: int = 0
    chosen_tokens: int = 0
    rejected_tokens: int = 0

    def add(self, chosen: int, rejected: int) -> None:
        self.chosen_longer += chosen > rejected
        self.rejected_longer += rejected > chosen
        self.same_length += chosen == rejected
        self.chosen_tokens += chosen
        self.rejected_tokens += rejected

    @property
    def pairs(self) -> int:
        return self.chosen_longer + self.rejected_longer + self.same_length

    @property
    def longer(self) -> str | None:
        """The side longer in at least ``LENGTH_BIAS_SHARE`` of the pairs (over enough pairs), else None."""
        if self.pairs < LENGTH_BIAS_MIN_PAIRS:
            return None
        for name, count in (("chosen", self.chosen_longer), ("rejected", self.rejected_longer)):
            if count >= LENGTH_BIAS_SHARE * self.pairs:
                return name
        return None

    @property
    def biased(self) -> int:
        """The pairs on the biased side: the pairs where ``longer`` is longer (0 when it is None)."""
        return {"chosen": self.chosen_longer, "rejected": self.rejected_longer}.get(self.longer or "", 0)

    def finding(self) -> Finding | None:
        if self.longer is None:
            return None
        other = "rejected" if self.longer == "chosen" else "chosen"
        mean = {n: t / self.pairs for n, t in (("chosen", self.chosen_tokens), ("rejected", self.rejected_tokens))}
        return Finding(
            LENGTH_BIAS,
            f"the {self.longer} side is longer than the {other} in {self.biased} of {self.pairs} pairs "
            f"({self.biased / self.pairs:.0%}; mean {mean['chosen']:.1f} chosen vs {mean['rejected']:.1f} rejected "
            f"trained tokens): a preference run can learn length instead of quality",
        )

    def to_dict(self) -> dict[str, Any]:
        finding = self.finding()
        return {
            "pairs": self.pairs,
            "chosen_longer": self.chosen_longer,
            "rejected_longer": self.rejected_longer,
            "same_length": self.same_length,
            "share": LENGTH_BIAS_SHARE,
            "min_pairs": LENGTH_BIAS_MIN_PAIRS,
            "finding": finding.to_dict() if finding is not None else None,
        }


def _prompt_difference(implicit: bool, conversational: bool, prompt: Text, chosen: Text, rejected: Text) -> str | None:
    """Implicit-prompt pairs whose sides do not share their prompt: the conversations differ before their
    answers (a user or system turn in a completion), or two strings share no prefix at all."""
    if not implicit:
        return None
    if conversational:
        for name, side in (("chosen", chosen), ("rejected", rejected)):
            roles = [m.get("role") for m in side]  # type: ignore[union-attr]
            if any(role != "assistant" for role in roles):
                return (
                    f"the two conversations differ before their answers: the {name} completion holds "
                    f"{', '.join(str(r) for r in roles)} turns, so the prompts of the two sides differ"
                )
        return None
    if not len(prompt):
        return "chosen and rejected share no prefix: the implicit prompt is empty, so the prompts differ"
    return None


__all__ = [
    "LENGTH_BIAS",
    "LENGTH_BIAS_MIN_PAIRS",
    "LENGTH_BIAS_SHARE",
    "PAIR_CHECKS",
    "PAIR_CHECK_INFO",
    "PREFERENCE_TOKENIZATIONS",
    "SIDES",
    "TRUNCATION_MODES",
    "Finding",
    "LengthCounts",
    "PreferenceExample",
    "check_preference_options",
    "common_prefix_length",
    "encode_preference",
    "extract_prompt",
    "pair_findings",
]
