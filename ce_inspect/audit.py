"""Checks of a training data set as a trainer would consume it: tokens, labels, and their mask.

Every record becomes an ``AuditExample``: its ``input_ids`` and ``labels`` (as given, for pre-tokenized
records; as ce-inspect's layout builds them, for text records), cut to ``max_length`` when one is given
(the trainer's truncation keeps the start), plus the text it came from when it has any (messages, or a
prompt and a completion). Each check is a named function over one example that returns a ``Finding``
(the offending token positions and a sentence) or None; ``Audit`` runs them all over a data set and
aggregates per check: how many records fail, which, and the first few with their tokens.

Labels follow the model's convention: ``labels[p]`` is the target of the logits at ``p - 1`` (the model
shifts); position 0 is never a target. A label is *trained* when it is not ``ignore_index``.

The reference mask is what ce-inspect itself builds from the record's text: for a conversation, the
chat template rendered and every assistant turn trained with its end-of-turn token (``encoding``); for
a prompt/completion pair, the completion and EOS trained, the prompt split either separately or as
one string with the completion starting where the prompt's own tokens end (the two ways trainers do
it). A pre-tokenized record is compared with it when its tokens are those of its own text.

``loss-outlier`` needs the forward pass; the others need the tokenizer only (``--no-model``).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .batch import (
    BatchReport,
    BatchSettings,
    ExampleStats,
    SummaryBuilder,
    check_resume_settings,
    encode_record,
    fingerprint_targets,
    run_scan,
)
from .encoding import IGNORE_INDEX, Layout, decode_tokens, encode_messages, encode_pair, special_ids, special_prefix
from .errors import InputError
from .result import (
    SCHEMA_VERSION,
    AuditCheckDict,
    AuditDict,
    AuditExampleDict,
    AuditFindingDict,
    AuditRecordLineDict,
    AuditRecordRefDict,
    AuditTokenDict,
    as_read_back,
    dumps,
)
from .scoring import ScoreOptions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .job import Job
    from .loading import LoadedModel
    from .result import ScoreResult

#: Findings shown in full (tokens and positions) per check; the others are counted and listed by id.
DEFAULT_EXAMPLES = 3
#: Tokens of context shown on each side of an offending position.
WINDOW = 6
#: loss-outlier: a record is an outlier when the modified z-score of its mean loss (Iglewicz and Hoaglin:
#: 0.6745 x (loss - median) / MAD, MAD the median absolute deviation) exceeds ``OUTLIER_K``, i.e. its loss
#: is more than 3.5 robust standard deviations (1.4826 x MAD) above the median, *and* it is at least
#: ``OUTLIER_MIN_GAP`` nats above the median (so a data set of near-identical losses flags nothing). The median
#: and MAD are those of the records that pass every other check (``Audit._loss_outliers``).
OUTLIER_K = 3.5
OUTLIER_MIN_GAP = 1.0
OUTLIER_MIN_RECORDS = 5


@dataclass(frozen=True)
class CheckInfo:
    name: str
    description: str


CHECKS: tuple[CheckInfo, ...] = (
    CheckInfo("no-trained-tokens", "no label is trained (after truncation to `max_length`): the record adds nothing"),
    CheckInfo(
        "eot-not-trained",
        "an assistant span ends without a trained end-of-turn/EOS token: the model never learns to stop",
    ),
    CheckInfo(
        "template-trained", "trained tokens that belong to the template or the prompt, not to the assistant's text"
    ),
    CheckInfo("answer-partly-trained", "tokens of a trained answer left untrained (a mask cut short or off by one)"),
    CheckInfo("bos", "BOS missing or doubled against what the tokenizer or chat template adds"),
    CheckInfo("boundary", "the prompt's tokens differ from the first tokens of prompt+completion tokenized together"),
    CheckInfo("pre-shifted-labels", "labels are input_ids shifted by one already: the model shifts them again"),
    CheckInfo("label-mismatch", "trained labels differ from the input token at their position"),
    CheckInfo("padding-trained", "padding positions (pad, or EOS used as pad, in the padded tail) are trained"),
    CheckInfo("tokens-mismatch", "the record's input_ids are not what this tokenizer makes of the record's own text"),
    CheckInfo(
        "loss-outlier",
        f"mean loss more than {OUTLIER_K:g} robust standard deviations and {OUTLIER_MIN_GAP:g} nat above the "
        "median of the records that pass every other check, or not finite",
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
#: The checks that mean a broken training run: the default of ``fail_on``.
DEFAULT_FAIL_ON = ("no-trained-tokens", "eot-not-trained", "pre-shifted-labels", "label-mismatch", "padding-trained")


def parse_checks(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``a,b`` (or a list) -> the check names, validated; ``none`` -> no check."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:  # `--fail-on ""` (an unset variable in a script) must not turn the gate off unnoticed
        raise InputError("`fail_on` names no check; give 'none' to turn the gate off, or the checks to gate on")
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown:
        raise InputError(f"unknown check {unknown[0]!r} in `fail_on`; the checks are: {', '.join(CHECK_NAMES)}")
    return tuple(dict.fromkeys(names))


# --- one record ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditExample:
    """One record's tokens and labels as the trainer sees them, and the text they came from if any."""

    line: int
    id: str | int | None
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    ignore_index: int = IGNORE_INDEX
    attention_mask: tuple[int, ...] | None = None
    #: The text the tokens came from: a conversation, or a prompt and a completion (strings, or
    #: message lists for TRL's conversational prompt/completion form).
    messages: tuple[dict[str, Any], ...] | None = None
    prompt: str | tuple[dict[str, Any], ...] | None = None
    completion: str | tuple[dict[str, Any], ...] | None = None
    #: True when input_ids/labels are the record's own (pre-tokenized); False when ce-inspect encoded its text.
    pretokenized: bool = True
    #: Trained labels that truncation to ``max_length`` removed.
    cut_trained: int = 0
    max_length: int | None = None
    #: ce-inspect's own encoding of the text, when it made input_ids/labels from it (reused as the reference).
    encoded: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise InputError(
                f"input_ids has {len(self.input_ids)} tokens but labels has {len(self.labels)}; they must match"
            )
        if self.attention_mask is not None and len(self.attention_mask) != len(self.input_ids):
            raise InputError(
                f"attention_mask has {len(self.attention_mask)} entries but input_ids has {len(self.input_ids)}"
            )

    @property
    def trained(self) -> list[int]:
        """Positions whose label is a target (position 0 never is: no logits predict it)."""
        return [p for p in range(1, len(self.labels)) if self.labels[p] != self.ignore_index]

    def truncated(self, max_length: int | None) -> AuditExample:
        """The example cut to its first ``max_length`` tokens, as the trainer's truncation does."""
        if max_length is None or len(self.input_ids) <= max_length:
            return replace(self, max_length=max_length)
        cut = sum(1 for p in range(max(1, max_length), len(self.labels)) if self.labels[p] != self.ignore_index)
        return replace(
            self,
            input_ids=self.input_ids[:max_length],
            labels=self.labels[:max_length],
            attention_mask=None if self.attention_mask is None else self.attention_mask[:max_length],
            cut_trained=cut,
            max_length=max_length,
        )


@dataclass(frozen=True)
class Finding:
    """What one check found in one record: the offending positions and what is wrong there."""

    check: str
    positions: tuple[int, ...]
    message: str
    #: Check-specific detail (``boundary``: the two splits of the prompt/completion boundary).
    detail: dict[str, Any] | None = None

    def to_dict(self) -> AuditFindingDict:
        d: AuditFindingDict = {"check": self.check, "positions": list(self.positions), "message": self.message}
        if self.detail is not None:
            d["detail"] = self.detail
        return d


def spans(positions: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive positions."""
    out: list[list[int]] = []
    for p in positions:
        if out and p == out[-1][-1] + 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


# --- what the tokenizer and its template add ------------------------------------------------------------


@dataclass
class Reference:
    """ce-inspect's own layout of a record's text, aligned with the record's tokens.

    ``offset``: record position = reference position + offset (leading BOS tokens may differ in number).
    """

    input_ids: tuple[int, ...]
    trained: frozenset[int]
    segments: tuple[str, ...]
    turns: tuple[int | None, ...]
    offset: int = 0

    def at(self, position: int) -> int | None:
        """The reference position of a record position, or None where the record goes past the reference."""
        q = position - self.offset
        return q if 0 <= q < len(self.input_ids) else None


class AuditContext:
    """What the checks need to know about the tokenizer, computed once per data set."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, layout: Layout | None = None) -> None:
        self.tokenizer = tokenizer
        self.layout = layout or Layout()
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int | None = tokenizer.eos_token_id
        self.pad_id: int | None = tokenizer.pad_token_id
        self.prefix = special_prefix(tokenizer)
        self.special = special_ids(tokenizer)
        self.chat_opener, self.chat_lead, chat_eot = self._probe_chat()
        self.eot_ids = frozenset(i for i in (self.eos_id, chat_eot) if i is not None)

    def _probe_chat(self) -> tuple[int | None, int, int | None]:
        """The chat template's first non-BOS token, its number of leading BOS tokens, and its end-of-turn id."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None, 0, None
        try:
            enc = encode_messages(
                self.tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}], Layout()
            )
        except InputError:
            return None, 0, None
        lead = self.leading_bos(enc.input_ids)
        eot = next((enc.input_ids[p] for p, s in enumerate(enc.segments) if s == "eot"), None)
        return (enc.input_ids[lead] if lead < len(enc) else None), lead, eot

    def leading_bos(self, ids: Sequence[int]) -> int:
        n = 0
        while self.bos_id is not None and n < len(ids) and ids[n] == self.bos_id:
            n += 1
        return n

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> list[str]:
        return decode_tokens(self.tokenizer, ids)

    # --- the reference layout of a record's text ---------------------------------------------------------

    def conversation(self, ex: AuditExample) -> list[dict[str, Any]] | None:
        if ex.messages is not None:
            return [dict(m) for m in ex.messages]
        if isinstance(ex.prompt, tuple) and isinstance(ex.completion, tuple):
            return [dict(m) for m in (*ex.prompt, *ex.completion)]
        return None

    def candidates(self, ex: AuditExample) -> list[Any]:
        """ce-inspect's encodings of the record's text (one for a conversation, two splits for a pair)."""
        if ex.encoded is not None:
            return [ex.encoded]
        conversation = self.conversation(ex)
        try:
            if conversation is not None:
                return [encode_messages(self.tokenizer, conversation, Layout(ignore_index=ex.ignore_index))]
            if isinstance(ex.prompt, str) and isinstance(ex.completion, str) and ex.completion:
                return [
                    encode_pair(self.tokenizer, ex.prompt, ex.completion, ignore_index=ex.ignore_index),
                    self._prefix_split(ex.prompt, ex.completion, ex.ignore_index),
                ]
        except InputError:
            return []
        return []

    def _prefix_split(self, prompt: str, completion: str, ignore_index: int) -> Any:
        """Prompt+completion tokenized as one string; the completion starts where the prompt's own tokens
        stop matching (TRL's rule), EOS appended."""
        from .encoding import Encoded

        alone, whole = self.tokens(prompt), self.tokens(prompt + completion)
        start = _common_prefix(alone, whole)
        ids = [*self.prefix, *whole, *([self.eos_id] if self.eos_id is not None else [])]
        first = len(self.prefix) + start
        eos = ["eos"] if self.eos_id is not None else []
        segments = ["bos"] * len(self.prefix) + ["prompt"] * start + ["answer"] * (len(whole) - start) + eos
        labels = [t if p >= first else ignore_index for p, t in enumerate(ids)]
        return Encoded(tuple(ids), tuple(labels), tuple(segments), ignore_index=ignore_index)

    def reference(self, ex: AuditExample) -> tuple[Reference | None, int | None]:
        """(the reference aligned with the record, None) or (None, the first position where the record's
        tokens part from every encoding of its text); (None, None) when the record has no text."""
        candidates = self.candidates(ex)
        if not candidates:
            return None, None
        lead = self.leading_bos(ex.input_ids)
        parting = 0
        for enc in candidates:
            ref_lead = self.leading_bos(enc.input_ids)
            mine, theirs = ex.input_ids[lead:], enc.input_ids[ref_lead:]
            common = _common_prefix(mine, theirs)
            # Equal, or one a prefix of the other: the record may be cut short (truncation) or carry
            # trailing padding; those are other checks' business.
            if common == min(len(mine), len(theirs)):
                trained = frozenset(p for p in enc.scored_positions)
                return Reference(enc.input_ids, trained, enc.segments, enc.turns, offset=lead - ref_lead), None
            parting = max(parting, lead + common)
        return None, parting


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# --- the checks: one record each -------------------------------------------------------------------------


class RecordChecks:
    """The per-record checks over one example; the reference is computed once and shared."""

    def __init__(self, ctx: AuditContext, ex: AuditExample) -> None:
        self.ctx = ctx
        self.ex = ex
        self.trained = ex.trained
        #: Labels shifted by hand: the mask-against-reference checks would only echo that finding.
        self.shifted = bool(self.trained) and is_pre_shifted(ex, self.trained)
        self._reference: tuple[Reference | None, int | None] | None = None
        self.padding = set(_padding(self))

    @property
    def reference(self) -> tuple[Reference | None, int | None]:
        if self._reference is None:
            self._reference = self.ctx.reference(self.ex)
        return self._reference

    def token(self, position: int) -> str:
        return self.ctx.decode([self.ex.input_ids[position]])[0]

    def run(self) -> list[Finding]:
        findings = []
        for name, check in PER_RECORD.items():
            finding = check(self)
            if finding is not None:
                assert finding.check == name
                findings.append(finding)
        return findings


def check_no_trained_tokens(rc: RecordChecks) -> Finding | None:
    if rc.trained:
        return None
    ex = rc.ex
    if ex.cut_trained:
        return Finding(
            "no-trained-tokens",
            (),
            f"all {ex.cut_trained} trained tokens lie beyond the first {ex.max_length} (`max_length`): "
            "truncation leaves nothing to train",
        )
    return Finding("no-trained-tokens", (), f"every label is {ex.ignore_index}: the record trains nothing")


def check_eot_not_trained(rc: RecordChecks) -> Finding | None:
    ex, eot = rc.ex, rc.ctx.eot_ids
    if not rc.trained or not eot:
        return None
    offending: list[int] = []
    # Trained padding is its own finding (padding-trained), not a turn that lacks its end.
    text_spans = spans([p for p in rc.trained if p not in rc.padding])
    for span in text_spans:
        if any(ex.labels[p] in eot for p in span):
            continue
        after = span[-1] + 1
        # Point at the end-of-turn token left untrained right after the span, else at the span's end.
        offending.append(after if after < len(ex.input_ids) and ex.input_ids[after] in eot else span[-1])
    if not offending:
        return None
    names = "/".join(repr(t) for t in rc.ctx.decode(sorted(eot)))
    untrained = [p for p in offending if ex.input_ids[p] in eot and ex.labels[p] == ex.ignore_index]
    if untrained:
        what = f"the end-of-turn token at position {untrained[0]} is not trained"
    elif ex.cut_trained:
        what = f"truncation to {ex.max_length} tokens cut off the end-of-turn token"
    else:
        what = f"the trained span ending at position {offending[0]} has no end-of-turn token"
    spans_note = f" ({len(offending)} of {len(text_spans)} trained spans)" if len(offending) > 1 else ""
    return Finding("eot-not-trained", tuple(offending), f"{what}{spans_note}; expected one of {names}")


def _after_trained_eot(rc: RecordChecks, p: int) -> bool:
    """Whitespace right after a trained end-of-turn token: TRL trains the template's newline there."""
    ex = rc.ex
    return (
        p > 0 and ex.labels[p - 1] in rc.ctx.eot_ids and ex.labels[p - 1] != ex.ignore_index and not rc.token(p).strip()
    )


def check_template_trained(rc: RecordChecks) -> Finding | None:
    ref, _ = rc.reference
    if ref is None or rc.shifted:
        return None
    offending = []
    kinds: dict[str, int] = {}
    for p in rc.trained:
        q = ref.at(p)
        if q is None or q in ref.trained or _after_trained_eot(rc, p):
            continue
        offending.append(p)
        kinds[ref.segments[q]] = kinds.get(ref.segments[q], 0) + 1
    if not offending:
        return None
    what = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    return Finding(
        "template-trained",
        tuple(offending),
        f"{len(offending)} trained tokens are not the assistant's text ({what} tokens), starting at position "
        f"{offending[0]} {rc.token(offending[0])!r}",
    )


def check_answer_partly_trained(rc: RecordChecks) -> Finding | None:
    ref, _ = rc.reference
    if ref is None or not rc.trained or rc.shifted:
        return None
    ex = rc.ex
    by_turn: dict[int | None, list[int]] = {}
    for q in sorted(ref.trained):
        p = q + ref.offset
        if p < len(ex.input_ids) and ref.segments[q] not in ("eot", "eos"):  # eot-not-trained covers those
            by_turn.setdefault(ref.turns[q] if ref.turns else None, []).append(p)
    offending: list[int] = []
    for positions in by_turn.values():
        done = [p for p in positions if ex.labels[p] != ex.ignore_index]
        if done and len(done) < len(positions):
            offending += [p for p in positions if ex.labels[p] == ex.ignore_index]
    if not offending:
        return None
    return Finding(
        "answer-partly-trained",
        tuple(offending),
        f"{len(offending)} tokens of a trained answer are not trained, first at position {offending[0]} "
        f"{rc.token(offending[0])!r}",
    )


def check_bos(rc: RecordChecks) -> Finding | None:
    ex, ctx = rc.ex, rc.ctx
    if ctx.bos_id is None or not ex.input_ids:
        return None
    have = ctx.leading_bos(ex.input_ids)
    ref, _ = rc.reference
    if ref is not None:
        allowed, source = {ctx.leading_bos(ref.input_ids)}, "its text's encoding"
    elif ctx.chat_opener is not None and ex.input_ids[have : have + 1] == (ctx.chat_opener,):
        allowed, source = {ctx.chat_lead}, "the chat template"
    else:
        # Tokens alone: flag only what neither the tokenizer nor the chat template would produce.
        allowed, source = {ctx.leading_bos(ctx.prefix)}, "the tokenizer"
        if ctx.chat_opener is not None:
            allowed, source = allowed | {ctx.chat_lead}, "the tokenizer or the chat template"
    want = min(allowed) if have < min(allowed) else max(allowed)
    if min(allowed) <= have <= max(allowed):
        return None
    bos = ctx.decode([ctx.bos_id])[0]
    if have < want:
        return Finding("bos", (0,), f"starts without the BOS token {bos!r} that {source} puts first")
    return Finding(
        "bos", tuple(range(have)), f"starts with {have} BOS tokens {bos!r} where {source} puts {want}: doubled BOS"
    )


def check_boundary(rc: RecordChecks) -> Finding | None:
    ex, ctx = rc.ex, rc.ctx
    if isinstance(ex.prompt, str) and isinstance(ex.completion, str):
        prompt_text, whole_text = ex.prompt, ex.prompt + ex.completion
    elif isinstance(ex.prompt, tuple) and isinstance(ex.completion, tuple):
        from .encoding import render_template  # the one renderer of chat templates

        try:
            prompt_text = render_template(ctx.tokenizer, [dict(m) for m in ex.prompt], generation_prompt=True)
            whole_text = render_template(ctx.tokenizer, [dict(m) for m in (*ex.prompt, *ex.completion)])
        except InputError:
            return None
    else:
        return None
    alone, whole = ctx.tokens(prompt_text), ctx.tokens(whole_text)
    common = _common_prefix(alone, whole)
    if common == len(alone):
        return None
    # Where the prompt's text ends inside the joint tokens: the tokens that cover its last characters.
    tail, covered, end = "".join(ctx.decode(alone[common:])), "", common
    while end < len(whole) and len(covered) < len(tail):
        covered += ctx.decode([whole[end]])[0]
        end += 1
    start = max(0, common - 2)
    separately = alone + ctx.tokens(whole_text[len(prompt_text) :])
    detail = {
        "alone": _split_view(ctx, separately, start, len(alone)),
        "together": _split_view(ctx, whole, start, common),
        "prompt_tokens": len(alone),
        "common_prefix": common,
    }
    lead = len(ctx.prefix) if not ex.pretokenized or ctx.leading_bos(ex.input_ids) else 0
    positions = tuple(range(lead + common, lead + len(alone)))
    return Finding(
        "boundary",
        positions,
        f"the prompt's last tokens {ctx.decode(alone[common:])} become {ctx.decode(whole[common:end])} inside "
        "prompt+completion: the prompt's text ends inside a token, so the split (and what is trained) depends on "
        "how the trainer tokenizes",
        detail,
    )


def _split_view(ctx: AuditContext, ids: list[int], start: int, split: int) -> list[dict[str, Any]]:
    end = min(len(ids), split + 3)
    return [
        {"token_id": t, "token": s, "part": "prompt" if start + j < split else "completion"}
        for j, (t, s) in enumerate(zip(ids[start:end], ctx.decode(ids[start:end])))
    ]


def _shift_counts(ex: AuditExample, trained: list[int]) -> tuple[int, int, int]:
    same = sum(1 for p in trained if ex.labels[p] == ex.input_ids[p])
    comparable = [p for p in trained if p + 1 < len(ex.input_ids)]
    nxt = sum(1 for p in comparable if ex.labels[p] == ex.input_ids[p + 1])
    return same, nxt, len(comparable)


def is_pre_shifted(ex: AuditExample, trained: list[int]) -> bool:
    """Most trained labels equal the *next* input token and fewer than half equal their own."""
    same, nxt, comparable = _shift_counts(ex, trained)
    return comparable > 0 and nxt >= 0.9 * comparable and same < 0.5 * len(trained)


def check_pre_shifted_labels(rc: RecordChecks) -> Finding | None:
    ex = rc.ex
    if not rc.shifted:
        return None
    offending = tuple(p for p in rc.trained if ex.labels[p] != ex.input_ids[p])
    _, nxt, comparable = _shift_counts(ex, rc.trained)
    return Finding(
        "pre-shifted-labels",
        offending,
        f"{nxt} of {comparable} trained labels equal the next input token: the labels are shifted already, "
        "and the model shifts them again (it is trained to predict the token after next)",
    )


def check_label_mismatch(rc: RecordChecks) -> Finding | None:
    ex = rc.ex
    if not rc.trained or rc.shifted:
        return None
    offending = tuple(p for p in rc.trained if ex.labels[p] != ex.input_ids[p])
    if not offending:
        return None
    p = offending[0]
    target = rc.ctx.decode([ex.labels[p]])[0] if ex.labels[p] >= 0 else str(ex.labels[p])
    return Finding(
        "label-mismatch",
        offending,
        f"{len(offending)} trained labels differ from their input token, first at position {p}: label "
        f"{ex.labels[p]} {target!r}, input {ex.input_ids[p]} {rc.token(p)!r}",
    )


def _padding(rc: RecordChecks) -> list[int]:
    """Positions that are padding: attention mask 0, else a run of pad tokens (or of EOS past the first)."""
    ex, ctx = rc.ex, rc.ctx
    ids = ex.input_ids
    if ex.attention_mask is not None:
        return [p for p, m in enumerate(ex.attention_mask) if not m]
    if not ids:
        return []
    end = ids[-1]
    if end not in (ctx.pad_id, ctx.eos_id):
        return []
    run = len(ids)
    while run > 0 and ids[run - 1] == end:
        run -= 1
    ref = rc.reference[0] if end == ctx.eos_id else None
    if ref is not None:
        # The record's own text says where it ends: every EOS past that is padding (a chat template's text ends
        # "<|im_end|>\n", and an EOS used as pad after it opens no turn of its own).
        return list(range(max(run, ref.offset + len(ref.input_ids)), len(ids)))
    tail = list(range(run, len(ids)))
    if end == ctx.eos_id:
        tail = tail[1:]  # no text to say otherwise: the first EOS closes the text; the ones after it are padding
    return tail


def check_padding_trained(rc: RecordChecks) -> Finding | None:
    ex = rc.ex
    offending = tuple(p for p in rc.trained if p in rc.padding)
    if not offending:
        return None
    return Finding(
        "padding-trained",
        offending,
        f"{len(offending)} padding positions are trained (label {ex.labels[offending[0]]} "
        f"{rc.ctx.decode([ex.labels[offending[0]]])[0]!r}), first at position {offending[0]}: "
        "set the labels of padding to the ignore index",
    )


def check_tokens_mismatch(rc: RecordChecks) -> Finding | None:
    if not rc.ex.pretokenized:
        return None
    ref, parting = rc.reference
    if ref is not None or parting is None:
        return None
    ex = rc.ex
    shown = repr(rc.token(parting)) if parting < len(ex.input_ids) else "the end"
    return Finding(
        "tokens-mismatch",
        (parting,) if parting < len(ex.input_ids) else (),
        f"from position {parting} ({shown}) the input_ids are not this tokenizer's encoding of the record's "
        "text: tokenized with another tokenizer or template? (template checks skipped for it)",
    )


PER_RECORD: dict[str, Callable[[RecordChecks], Finding | None]] = {
    "no-trained-tokens": check_no_trained_tokens,
    "eot-not-trained": check_eot_not_trained,
    "template-trained": check_template_trained,
    "answer-partly-trained": check_answer_partly_trained,
    "bos": check_bos,
    "boundary": check_boundary,
    "pre-shifted-labels": check_pre_shifted_labels,
    "label-mismatch": check_label_mismatch,
    "padding-trained": check_padding_trained,
    "tokens-mismatch": check_tokens_mismatch,
}


def audit_example(ctx: AuditContext, ex: AuditExample) -> list[Finding]:
    """Every per-record check over one example (already truncated to ``max_length``)."""
    return RecordChecks(ctx, ex).run()


# --- the data set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenView:
    """One token of a shown finding: its text, whether it is trained, its loss when a model ran."""

    index: int
    token_id: int
    token: str
    label: int
    trained: bool
    offending: bool
    special: bool
    loss: float | None = None

    def to_dict(self) -> AuditTokenDict:
        return {
            "index": self.index,
            "token_id": self.token_id,
            "token": self.token,
            "label": self.label,
            "trained": self.trained,
            "offending": self.offending,
            "special": self.special,
            "loss": self.loss,
        }


@dataclass(frozen=True)
class ShownFinding:
    """A finding shown in full: the record, the positions, and the tokens around them."""

    line: int
    id: str | int | None
    finding: Finding
    tokens: tuple[TokenView, ...]
    mean_loss: float | None = None

    def to_dict(self) -> AuditExampleDict:
        f = self.finding
        d: AuditExampleDict = {
            "line": self.line,
            "id": self.id,
            "positions": list(f.positions),
            "message": f.message,
            "tokens": [t.to_dict() for t in self.tokens],
        }
        if f.detail is not None:
            d["detail"] = f.detail
        if self.mean_loss is not None:
            d["mean_loss"] = self.mean_loss
        return d


def token_window(ctx: AuditContext, ex: AuditExample, positions: Sequence[int], width: int = WINDOW) -> list[int]:
    """The positions shown for a finding: ``width`` tokens around each offending one (all if none)."""
    n = len(ex.input_ids)
    if not positions:
        return list(range(min(n, 4 * width)))
    keep: set[int] = set()
    for p in positions[:8]:
        keep.update(range(max(0, p - width), min(n, p + width + 1)))
    return sorted(keep)


def show(ctx: AuditContext, ex: AuditExample, finding: Finding) -> ShownFinding:
    window = token_window(ctx, ex, finding.positions)
    texts = ctx.decode([ex.input_ids[p] for p in window])
    offending = set(finding.positions)
    views = tuple(
        TokenView(
            index=p,
            token_id=ex.input_ids[p],
            token=text,
            label=ex.labels[p],
            trained=p > 0 and ex.labels[p] != ex.ignore_index,
            offending=p in offending,
            special=ex.input_ids[p] in ctx.special,
        )
        for p, text in zip(window, texts)
    )
    return ShownFinding(ex.line, ex.id, finding, views)


@dataclass(frozen=True)
class RecordRef:
    line: int
    id: str | int | None

    def to_dict(self) -> AuditRecordRefDict:
        return {"line": self.line, "id": self.id}


@dataclass(frozen=True)
class CheckResult:
    """One check over the data set."""

    name: str
    description: str
    ran: bool  # False: it needs the model and none was run
    checked: int  # records it could examine
    records: tuple[RecordRef, ...]  # the failing records, in input order
    examples: tuple[ShownFinding, ...]
    note: str | None = None

    @property
    def failed(self) -> int:
        return len(self.records)

    def to_dict(self) -> AuditCheckDict:
        d: AuditCheckDict = {
            "name": self.name,
            "description": self.description,
            "ran": self.ran,
            "checked": self.checked,
            "failed": self.failed,
            "records": [r.to_dict() for r in self.records],
            "examples": [e.to_dict() for e in self.examples],
        }
        if self.note is not None:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class AuditReport:
    """The audit of a data set: every check's result, and what the gate (``fail_on``) makes of them."""

    input: str
    model: str | None
    tokenizer: str
    records: int
    max_length: int | None
    checks: tuple[CheckResult, ...]
    fail_on: tuple[str, ...]
    skipped: tuple[dict[str, Any], ...] = ()
    output: str | None = None
    loss: dict[str, Any] | None = None

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.failed]

    @property
    def gate_failed(self) -> list[str]:
        return [c.name for c in self.checks if c.failed and c.name in self.fail_on]

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> AuditDict:
        d: AuditDict = {
            "schema_version": SCHEMA_VERSION,
            "kind": "audit",
            "input": self.input,
            "output": self.output,
            "model": self.model,
            "tokenizer": self.tokenizer,
            "records": self.records,
            "max_length": self.max_length,
            "skipped": list(self.skipped),
            "checks": [c.to_dict() for c in self.checks],
            "failed_checks": self.failed_checks,
            "fail_on": list(self.fail_on),
            "gate_failed": self.gate_failed,
        }
        if self.loss is not None:
            d["loss"] = self.loss  # type: ignore[typeddict-item]
        return d


class Audit:
    """Runs the per-record checks over a stream of examples and aggregates them per check.

    Memory holds the failing records' ids, the first ``examples`` findings per check in full, and (with
    a model) one float per record: nothing grows with a clean data set but the loss list.

    With a model, only each record's mean loss is kept (``add_loss``, from the forward pass or read back
    from an output line); the records shown in full (``to_show``) are scored again, each alone, and their
    results handed to ``finish``. So the report is the same whether the losses came from this process,
    from a resumed file or from the merged parts of a torchrun run.
    """

    def __init__(self, ctx: AuditContext, *, max_length: int | None = None, examples: int = DEFAULT_EXAMPLES) -> None:
        self.ctx = ctx
        self.max_length = max_length
        self.examples = examples
        self.records = 0
        self._failing: dict[str, list[RecordRef]] = {name: [] for name in CHECK_NAMES}
        self._shown: dict[str, list[ShownFinding]] = {name: [] for name in CHECK_NAMES}
        self._checked: dict[str, int] = {name: 0 for name in CHECK_NAMES}
        self._eot_trained = 0  # records that train an end-of-turn token
        self._losses: dict[int, tuple[float, RecordRef]] = {}
        self.skipped: list[dict[str, Any]] = []
        #: Failing records' findings by line, kept between the checks and the forward pass.
        self.findings: dict[int, list[Finding]] = {}
        self._unscored: dict[int, dict[str, Any]] = {}

    @property
    def unscored(self) -> list[dict[str, Any]]:
        """Records the forward pass could not score (too long for the model, no trained token, ...)."""
        return [self._unscored[line] for line in sorted(self._unscored)]

    def add(self, ex: AuditExample) -> list[Finding]:
        """Check one record; returns its findings (for the per-record output)."""
        ex = ex.truncated(self.max_length)
        self.records += 1
        rc = RecordChecks(self.ctx, ex)
        findings = rc.run()
        self._count_checked(rc)
        ref = RecordRef(ex.line, ex.id)
        for finding in findings:
            self._failing[finding.check].append(ref)
            if len(self._shown[finding.check]) < self.examples:
                self._shown[finding.check].append(show(self.ctx, ex, finding))
        return findings

    def _count_checked(self, rc: RecordChecks) -> None:
        ex = rc.ex
        for name in ("no-trained-tokens", "bos", "pre-shifted-labels", "label-mismatch", "padding-trained"):
            self._checked[name] += 1
        if rc.trained and self.ctx.eot_ids:
            self._checked["eot-not-trained"] += 1
            self._eot_trained += any(ex.labels[p] in self.ctx.eot_ids for p in rc.trained)
        has_text = ex.messages is not None or ex.prompt is not None
        if has_text and rc._reference is not None:
            ref, parting = rc._reference
            self._checked["tokens-mismatch"] += ex.pretokenized and (ref is not None or parting is not None)
            if ref is not None:
                self._checked["template-trained"] += 1
                self._checked["answer-partly-trained"] += bool(rc.trained)
        if ex.prompt is not None and ex.completion is not None:
            self._checked["boundary"] += 1

    def skip(self, line: int, rid: str | int | None, reason: str) -> None:
        self.skipped.append({"line": line, "id": rid, "reason": reason})

    @property
    def skipped_lines(self) -> set[int]:
        """The records the checks skipped (``skip_invalid``): no output line, not counted as unscored."""
        return {s["line"] for s in self.skipped}

    def add_loss(self, line: int, rid: str | int | None, mean: float) -> None:
        """Take one record's mean loss (from the forward pass, or read back from its output line)."""
        self._losses[line] = (mean, RecordRef(line, rid))

    def add_result(self, line: int, rid: str | int | None, result: ScoreResult) -> None:
        self.add_loss(line, rid, result.summary.mean)

    def add_unscored(self, line: int, rid: str | int | None, reason: str) -> None:
        self._unscored[line] = {"line": line, "id": rid, "reason": reason}

    def _top_losses(self, flagged: Sequence[RecordRef]) -> list[RecordRef]:
        """The ``examples`` highest means of the ``flagged`` records (non-finite first, then ties by input line):
        the outliers shown."""
        key = {ref.line: self._losses[ref.line][0] for ref in flagged}
        ranked = sorted(flagged, key=lambda r: (-(key[r.line] if math.isfinite(key[r.line]) else math.inf), r.line))
        return ranked[: self.examples]

    def to_show(self) -> list[int]:
        """The scored records ``finish`` shows in full, whose token losses it needs (``score_shown``)."""
        lines = {s.line for shown in self._shown.values() for s in shown if s.line in self._losses}
        if self._losses:
            lines.update(r.line for r in self._top_losses(self._loss_outliers()[0]))
        return sorted(lines)

    def _eot_note(self) -> str | None:
        checked = self._checked["eot-not-trained"]
        if not self.ctx.eot_ids:
            return "the tokenizer has no EOS or end-of-turn token: not checked"
        if checked and self._eot_trained == 0:
            return f"no record trains an end-of-turn token ({self.ctx.decode(sorted(self.ctx.eot_ids))})"
        if self._failing["eot-not-trained"]:
            return f"{self._eot_trained} of {checked} records train an end-of-turn token and the others do not"
        return None

    def _other_failing(self) -> set[int]:
        """The lines of the records that fail a check other than loss-outlier."""
        return {r.line for name, refs in self._failing.items() if name != "loss-outlier" for r in refs}

    def _loss_outliers(self) -> tuple[list[RecordRef], str | None, dict[str, Any] | None]:
        """The records whose mean loss is an outlier. The median and MAD are taken over the records that pass
        every other check (``OUTLIER_BASIS``): a broken record's loss (pre-shifted labels, trained padding, ...)
        says how it is broken, not what the data is like, and a few of them widen the spread enough to hide an
        off-topic answer. Every scored record above the threshold is flagged, whatever else it fails. With fewer
        than ``OUTLIER_MIN_RECORDS`` such records the statistics are over every finite loss, and the note says so."""
        values = sorted(self._losses.items())
        finite = [m for _, (m, _) in values if math.isfinite(m)]
        bad = [ref for _, (m, ref) in values if not math.isfinite(m)]
        failing = self._other_failing()
        clean = [m for line, (m, _) in values if math.isfinite(m) and line not in failing]
        basis, sample, over = "passing", clean, "the records that pass every other check"
        if len(clean) < OUTLIER_MIN_RECORDS:
            basis, sample = "all", finite
            over = f"all records (fewer than {OUTLIER_MIN_RECORDS} pass every other check)"
        if len(sample) < OUTLIER_MIN_RECORDS:
            note = f"fewer than {OUTLIER_MIN_RECORDS} records with a finite loss: only non-finite losses are flagged"
            return bad, note, None
        median = statistics.median(sample)
        mad = statistics.median(abs(m - median) for m in sample)
        threshold = max(median + OUTLIER_K * 1.4826 * mad, median + OUTLIER_MIN_GAP)
        flagged = [ref for _, (m, ref) in values if not math.isfinite(m) or m > threshold]
        stats = {"median": median, "mad": mad, "threshold": threshold, "records": len(sample), "basis": basis}
        note = f"median {median:.4f}, MAD {mad:.4f} over {over}: outliers above {threshold:.4f} nats"
        return flagged, note, stats

    def outlier_findings(self) -> dict[int, Finding]:
        """The loss-outlier finding of every record the rule flags, by input line: what its per-record line
        carries once the losses of the whole data set are known (``mark_outliers``)."""
        if not self._losses:
            return {}
        records, _, stats = self._loss_outliers()
        out: dict[int, Finding] = {}
        for ref in records:
            mean = self._losses[ref.line][0]
            if not math.isfinite(mean):
                out[ref.line] = Finding("loss-outlier", (), f"its mean loss is {mean}: not a finite number")
            elif stats is not None:
                out[ref.line] = Finding(
                    "loss-outlier",
                    (),
                    f"mean loss {mean:.4f} nats, above the outlier threshold {stats['threshold']:.4f} "
                    f"(median {stats['median']:.4f}, MAD {stats['mad']:.4f})",
                    {"mean": mean, "threshold": stats["threshold"]},
                )
        return out

    def finish(
        self,
        *,
        input: str,
        model: str | None,
        tokenizer: str,
        fail_on: Sequence[str],
        output: str | None = None,
        loss: dict[str, Any] | None = None,
        scored: dict[int, ScoreResult] | None = None,
    ) -> AuditReport:
        """The report. ``scored``: the results of the records ``to_show`` names, which the shown
        findings and outliers display token by token (a record missing from it is shown without losses)."""
        scored = scored or {}
        results = []
        loss_stats = None
        for info in CHECKS:
            records, shown, note, ran = self._failing[info.name], self._shown[info.name], None, True
            checked = self._checked[info.name]
            if info.name == "eot-not-trained":
                note = self._eot_note()
            elif info.name == "loss-outlier":
                ran = model is not None
                if ran:
                    records, note, loss_stats = self._loss_outliers()
                    checked = len(self._losses)
                    shown = [
                        show_scored(self.ctx, r.line, r.id, scored[r.line], self._losses[r.line][0])
                        for r in self._top_losses(records)
                        if r.line in scored
                    ]
                else:
                    note = "needs a forward pass: not run (no model)"
            if info.name != "loss-outlier":
                shown = [_with_losses(s, scored.get(s.line), self._losses.get(s.line)) for s in shown]
            results.append(CheckResult(info.name, info.description, ran, checked, tuple(records), tuple(shown), note))
        if loss is not None and loss_stats is not None:
            loss = {**loss, "outlier_rule": loss_stats}
        return AuditReport(
            input=input,
            model=model,
            tokenizer=tokenizer,
            records=self.records,
            max_length=self.max_length,
            checks=tuple(results),
            fail_on=tuple(fail_on),
            skipped=tuple(self.skipped),
            output=output,
            loss=loss,
        )


def _with_losses(shown: ShownFinding, result: ScoreResult | None, loss: tuple[float, RecordRef] | None) -> ShownFinding:
    if result is None or loss is None:
        return shown
    losses = {t.index: t.loss for t in result.tokens}
    tokens = tuple(replace(t, loss=losses.get(t.index)) for t in shown.tokens)
    return replace(shown, tokens=tokens, mean_loss=loss[0])


def show_scored(
    ctx: AuditContext, line: int, rid: str | int | None, result: ScoreResult, mean: float | None = None
) -> ShownFinding:
    """A loss-outlier view of a scored record: its highest-loss tokens with their context. ``mean``: the
    record's mean loss as its output line has it (default: the result's)."""
    seq = result.sequence
    worst = sorted(
        heapq.nlargest(3, result.tokens, key=lambda t: t.loss if math.isfinite(t.loss) else math.inf),
        key=lambda t: t.index,
    )
    positions = tuple(t.index for t in worst)
    mean = result.summary.mean if mean is None else mean
    finding = Finding(
        "loss-outlier",
        positions,
        f"mean loss {mean:.4f} over {result.summary.count} trained tokens"
        + ("" if math.isfinite(mean) else ": not finite"),
    )
    keep: set[int] = set()
    for p in positions:
        keep.update(range(max(0, p - WINDOW), min(len(seq), p + WINDOW + 1)))
    views = tuple(
        TokenView(
            index=s.index,
            token_id=s.token_id,
            token=s.token,
            label=s.token_id if s.scored else IGNORE_INDEX,
            trained=s.scored,
            offending=s.index in positions,
            special=s.special or s.token_id in ctx.special,
            loss=s.loss,
        )
        for s in seq
        if s.index in keep
    )
    return ShownFinding(line, rid, finding, views, mean_loss=mean)


def record_line(
    ex_line: int,
    rid: str | int | None,
    findings: Sequence[Finding],
    loss: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> AuditRecordLineDict:
    """The per-record output line: which checks the record fails, and where; with a model, its loss and
    the settings it was written with (``audit_line_settings``), which ``--resume`` compares."""
    d: AuditRecordLineDict = {
        "schema_version": SCHEMA_VERSION,
        "kind": "audit_record",
        "line": ex_line,
        "id": rid,
        "failed": [f.check for f in findings],
        "findings": [f.to_dict() for f in findings],
    }
    if loss is not None:
        d["loss"] = loss
    if settings is not None:
        d["settings"] = settings
    return d


def with_outlier(line: dict[str, Any], finding: Finding | None) -> dict[str, Any]:
    """A per-record line with its loss-outlier finding as the whole data set's losses give it: any earlier one
    (a resumed or merged file's) dropped, ``finding`` (None: not an outlier) added last."""
    findings = [f for f in line["findings"] if f.get("check") != "loss-outlier"]
    failed = [name for name in line["failed"] if name != "loss-outlier"]
    if finding is not None:
        findings.append(finding.to_dict())
        failed.append("loss-outlier")
    return {**line, "failed": failed, "findings": findings}


#: The loss-outlier check's note when the per-record lines went to a stream and could not be marked.
STREAMED_NOTE = (
    "the per-record lines went to a stream (not a regular file) as the records were scored, before the loss "
    "statistics existed: they do not carry loss-outlier; the report's records are the outliers"
)


def mark_outliers(path: str | os.PathLike[str], audit: Audit, *, label: str = "`output`") -> int:
    """Carry loss-outlier into the per-record lines of the regular file ``path`` (written by the forward pass,
    which could not know the outliers yet): the file is rewritten atomically (``files.atomic_stream``; on an
    error it stays as it was), a changed line re-serialized, every other line kept byte for byte. The caller
    holds ``path``'s lock. Returns how many lines carry loss-outlier."""
    from .files import atomic_stream

    flagged = audit.outlier_findings()
    marked = 0
    try:
        source = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{label} {path}: cannot read it back ({exc.strerror})") from None
    with source, atomic_stream(path, label=label) as out:
        for raw in source:
            obj = json.loads(raw)
            if obj.get("kind") == "audit_record":
                finding = flagged.get(obj["line"])
                marked += finding is not None
                new = with_outlier(obj, finding)
                if new != obj:
                    raw = (dumps(new) + "\n").encode("utf-8")
            view = memoryview(raw)
            while view:
                view = view[out.write(view) or 0 :]
    return marked


def outliers_in_lines(report: AuditReport, audit: Audit, path: str | os.PathLike[str]) -> tuple[AuditReport, bool]:
    """After the forward pass into ``path``: a regular file's lines get their loss-outlier findings
    (``mark_outliers``); a stream's are gone by now, so when there are outliers the loss-outlier check's note
    says the lines lack them. Returns (the report, whether that note was added)."""
    from .files import writes_through

    if not writes_through(path):
        mark_outliers(path, audit)
        return report, False
    check = report.check("loss-outlier")
    if not check.failed:
        return report, False
    note = f"{check.note}; {STREAMED_NOTE}" if check.note else STREAMED_NOTE
    checks = tuple(replace(c, note=note) if c.name == "loss-outlier" else c for c in report.checks)
    return replace(report, checks=checks), True


# --- reading a data set ----------------------------------------------------------------------------------

#: Fields of a pre-tokenized record; what else it carries (messages, prompt/completion) is its text.
TOKEN_FIELDS = ("input_ids", "labels", "attention_mask", "completion_mask", "assistant_masks")


def read_audit_records(
    path: str | os.PathLike[str], fields: Any = None, *, format: str | None = None, split: str | None = None
) -> Iterator[tuple[Any, Any | None]]:
    """Every record of the data set through ``data``'s reader, streamed: (record, its text as a second record
    when it is pre-tokenized and also carries the text it was made from, e.g. ``messages``; else None)."""
    from .data import FORMATS, Fields, Record, detect_format, file_kind, parse_record, read_objects

    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    fields = fields or Fields()
    for number, obj, error in read_objects(path, file_kind(path), split):
        if error is not None:
            yield Record(number, error=error), None
            continue
        record = parse_record(number, obj, fields, format)
        text = None
        if record.input_ids is not None and isinstance(obj, dict):
            rest = {k: v for k, v in obj.items() if k not in TOKEN_FIELDS}
            if detect_format(rest, fields) not in (None, "text"):
                text = parse_record(number, rest, fields)
                text = None if text.error is not None else text
        yield record, text


def _text_of(record: Any) -> dict[str, Any]:
    """The record's text as AuditExample fields (messages, or prompt and completion)."""
    if record is None:
        return {}
    if record.prompt_messages is not None:
        return {"prompt": tuple(record.prompt_messages), "completion": tuple(record.completion_messages)}
    if record.messages is not None:
        return {"messages": tuple(record.messages)}
    if record.prompt is not None and record.answer is not None:
        return {"prompt": record.prompt, "completion": record.answer}
    return {}


def tokenizer_only(tokenizer: Any, name: str) -> LoadedModel:
    """A ``LoadedModel`` with no model: what the encoders need (the tokenizer), without a context limit."""
    from .loading import LoadedModel

    return LoadedModel(
        model=None, tokenizer=tokenizer, name=name, source="tokenizer", device="none", dtype="none", context_length=None
    )


def example_from_record(lm: LoadedModel, record: Any, text: Any, layout: Layout) -> AuditExample:
    """One record as the trainer sees it: pre-tokenized ids and labels as given, or the layout's encoding of
    its text (``lm`` may be ``tokenizer_only``: no context limit applies to the checks)."""
    if record.error is not None:
        raise InputError(record.error)
    if record.input_ids is not None:
        from .data import encode_tokenized

        # The reader's one validator (ids in the vocabulary, labels ids or the ignore index); the padding it
        # refuses for scoring is what padding-trained looks at, so the mask is checked here, not there.
        encode_tokenized(
            record.input_ids,
            record.labels,
            vocab_size=len(lm.tokenizer),
            ignore_index=layout.ignore_index,
            labels_from=record.labels_from or "labels",
        )
        return AuditExample(
            record.line,
            record.id,
            tuple(record.input_ids),
            tuple(record.labels),
            ignore_index=layout.ignore_index,
            attention_mask=record.attention_mask,
            pretokenized=True,
            **_text_of(text),
        )
    from .data import encode_record

    encoded = encode_record(lm, record, layout)
    own = layout.tokenization != "trl"  # ce-inspect's own layout is the reference; TRL's is checked against it
    return AuditExample(
        record.line,
        record.id,
        encoded.input_ids,
        encoded.labels,
        ignore_index=encoded.ignore_index,
        pretokenized=False,
        encoded=encoded if own else None,
        **_text_of(record),
    )


def check_dataset(
    lm: LoadedModel,
    path: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    fields: Any = None,
    max_length: int | None = None,
    skip_invalid: bool = False,
    examples: int = DEFAULT_EXAMPLES,
    sink: Any = None,
    keep_findings: bool = False,
    format: str | None = None,
    split: str | None = None,
    info: Any = None,
) -> Audit:
    """The checks that need no forward pass, over every record, streamed.

    ``lm`` may be ``tokenizer_only``. ``sink`` (a ``batch.JsonlSink``) receives one line per record as it is
    checked; ``keep_findings`` keeps each failing record's findings for a later pass (the model's) instead.
    A record that is not an example stops the run, naming it, unless ``skip_invalid``.
    """
    from .data import open_data
    from .errors import InvalidRecordError

    info = info or open_data(path, fields, format=format, split=split)
    layout = layout or Layout()
    ctx = AuditContext(lm.tokenizer, layout=layout)
    audit = Audit(ctx, max_length=max_length, examples=examples)
    for record, text in read_audit_records(path, fields, format=format, split=split):
        try:
            ex = example_from_record(lm, record, text, layout)
        except InputError as exc:
            if not skip_invalid:
                raise InvalidRecordError(
                    f"{info.where(record)}: {exc} (fix the {info.unit}, or pass --skip-invalid)"
                ) from None
            audit.skip(record.line, record.id, str(exc))
            continue
        findings = audit.add(ex)
        if keep_findings and findings:
            audit.findings[ex.line] = findings
        if sink is not None:
            sink.write(record_line(ex.line, ex.id, findings))
    if not audit.records and not audit.skipped:
        raise InputError(f"{info.path} holds no records")
    return audit


class _Discard:
    """A sink for when no per-record output was asked for."""

    name = None

    def write(self, obj: Any) -> None:
        pass


# --- with a model: the forward pass through batch's one runner ---------------------------------------------


def audit_line_settings(lm: LoadedModel, scan: Any, options: Any, max_length: int | None) -> dict[str, Any]:
    """What an audit line depends on besides its record: ``batch.line_settings`` and ``max_length``."""
    from .batch import line_settings

    return {**line_settings(lm, scan.layout, options, scan.fields), "max_length": max_length}


def line_emitter(audit: Audit, settings: dict[str, Any]) -> Callable[[Any, Any], AuditRecordLineDict | None]:
    """``run_scan``'s ``emit`` for audit: every record the checks took gets one line (its findings, its loss or
    why the model could not score it); records the checks skipped (``--skip-invalid``) get none."""
    skipped = audit.skipped_lines

    def emit(entry: Any, result: Any) -> AuditRecordLineDict | None:
        if entry.line in skipped:
            return None
        findings = audit.findings.get(entry.line, [])
        if result is None:
            loss: dict[str, Any] = {"scored": False, "reason": entry.error}
        else:
            s = result.summary
            loss = {"scored": True, "mean": s.mean, "sum": s.sum, "count": s.count}
            loss["sequence_tokens"] = result.layout["sequence_tokens"]
            loss["targets"] = fingerprint_targets([(t.index, t.token_id) for t in result.tokens])
        return record_line(entry.line, entry.id, findings, loss, settings)

    return emit


def audit_line_stats(obj: Any, worst: int) -> tuple[Any, list[Any]]:
    """``batch.read_resume``'s parser for audit lines (written with a model): the line, checked key for key
    against ``AuditRecordLineDict``, as ``ExampleStats`` carrying its findings; a record the model could not
    score gives stats with no scored token (its line is kept, ``ResumeState.others``)."""
    from .result import conform

    if not isinstance(obj, dict) or obj.get("schema_version") != SCHEMA_VERSION or obj.get("kind") != "audit_record":
        raise ValueError(f"not a schema_version {SCHEMA_VERSION} audit record")
    conform(AuditRecordLineDict, obj)
    line, loss = obj["line"], obj.get("loss")
    if line < 1:
        raise ValueError("no input line number")
    if not isinstance(loss, dict):
        raise ValueError("it holds no loss: an audit without a model wrote it")
    if not loss["scored"]:  # a line that records no score
        return ExampleStats(line, obj["id"], 0, 0.0, math.nan, 0.0, 0, 0, "", payload=_checked_findings(obj)), []
    if not (isinstance(loss["count"], int) and loss["count"] > 0):
        raise ValueError("a scored record with no scored token")
    stats = ExampleStats(
        line=line,
        id=obj["id"],
        count=loss["count"],
        loss_sum=loss["sum"],
        mean=loss["mean"],
        nll_sum=loss["sum"],  # audit scores without label smoothing
        greedy_hits=0,
        sequence_tokens=loss["sequence_tokens"],
        fingerprint=loss["targets"],
        payload=_checked_findings(obj),
    )
    return stats, []


def _checked_findings(line: dict[str, Any]) -> list[Any]:
    """A line's findings that the checks give again on resume: loss-outlier depends on every record's loss,
    not on this record alone, and is marked again when the run ends (``mark_outliers``)."""
    return [f for f in line["findings"] if f.get("check") != "loss-outlier"]


class AuditLosses(BatchReport):
    """``run_scan``'s report for audit's forward pass: batch's loss summary (audit writes its own lines, with
    ``line_emitter``), and each record's mean loss to ``audit``; a resumed line must hold the findings the
    checks find now."""

    def __init__(self, lm: LoadedModel, scan: Any, audit: Audit, options: Any, settings: Any) -> None:
        self.lm, self.scan, self.options, self.settings = lm, scan, options or ScoreOptions(), settings
        self.builder = SummaryBuilder(0)  # no worst tokens: audit shows its outliers itself
        self.audit = audit
        self.written = audit_line_settings(lm, scan, self.options, audit.max_length)
        if scan.resume is not None:
            check_resume_settings(scan.resume, self.written)
        self._skipped = audit.skipped_lines

    def add(self, entry: Any, result: ScoreResult) -> None:
        self.builder.add(ExampleStats.from_result(entry.line, entry.id, result))
        self.audit.add_result(entry.line, entry.id, result)

    def resumed(self, entry: Any) -> None:
        from .errors import ResumeError

        now = [f.to_dict() for f in self.audit.findings.get(entry.line, [])]
        if entry.done.payload != as_read_back(now):
            raise ResumeError(
                f"`resume`: input line {entry.line} fails other checks now than the output's line for it says; "
                "the input or the options changed since, start over with `force`"
            )
        super().resumed(entry)
        self.audit.add_loss(entry.line, entry.id, entry.done.mean)

    def skip(self, skipped: Any) -> None:
        super().skip(skipped)
        if skipped.line not in self._skipped:
            self.audit.add_unscored(skipped.line, skipped.id, skipped.reason)


def score_shown(lm: LoadedModel, scan: Any, audit: Audit, options: Any = None) -> dict[int, ScoreResult]:
    """The records the report shows in full (``Audit.to_show``), scored again, each alone (one row, no padding:
    what ``run`` gives for it), so that the report does not depend on which process scored which record."""
    from .windows import score_examples

    wanted, results = set(audit.to_show()), {}
    if not wanted:
        return results
    encoder = scan.encoder or (lambda record: encode_record(lm, record, scan.layout))
    for record in scan.records():
        if record.line in wanted:
            results[record.line] = score_examples(lm, [encoder(record)], options or ScoreOptions())[0]
    return results


def audit_job(lm: LoadedModel, scan: Any, audit: Audit, options: Any, settings: Any) -> Job:
    """audit's forward pass as a job for the one runner: per record, the mean loss goes to ``audit`` and one
    line (the record's findings and loss, ``line_emitter``) to the output; batch's loss summary is returned
    (``AuditLosses``). ``score_shown`` then gives ``audit.finish`` the records it shows."""
    from .job import Job

    options = options or ScoreOptions()
    return Job(
        command="audit",
        make_report=lambda share: AuditLosses(lm, share, audit, options, settings or BatchSettings()),
        emit=line_emitter(audit, audit_line_settings(lm, scan, options, audit.max_length)),
        parse=audit_line_stats,
    )


def score_losses(
    lm: LoadedModel,
    scan: Any,
    audit: Audit,
    sink: Any,
    *,
    options: Any = None,
    settings: Any = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Any:
    """The forward pass over ``scan`` into ``sink`` (``audit_job`` through ``batch.run_scan``), in this process,
    with no output checks or resume of its own (``runner.audit_dataset`` has them). Returns the batch summary."""
    job = audit_job(lm, scan, audit, options, settings)
    return run_scan(
        lm,
        scan,
        sink or _Discard(),
        options=options,
        settings=settings or BatchSettings(),
        on_batch=on_batch,
        emit=job.emit,
        report=job.make_report(scan),  # type: ignore[misc]
    )


__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "DEFAULT_FAIL_ON",
    "Audit",
    "AuditContext",
    "AuditExample",
    "AuditReport",
    "CheckResult",
    "Finding",
    "audit_example",
    "audit_line_stats",
    "check_dataset",
    "example_from_record",
    "parse_checks",
    "mark_outliers",
    "outliers_in_lines",
    "read_audit_records",
    "record_line",
    "audit_job",
    "score_losses",
    "score_shown",
    "tokenizer_only",
]
