"""audit's checks: one record (``AuditExample``) -> its ``Finding``s, against the reference mask ce-inspect
builds from the record's text. No I/O (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import (
    AuditFindingDict,
    WireObject,
)
from ce_inspect.errors import InputError
from ce_inspect.text import (
    IGNORE_INDEX,
    LENGTH_BIAS,
    PAIR_CHECK_INFO,
    PAIR_CHECKS,
    Encoded,
    Layout,
    decode_tokens,
    encode_messages,
    encode_pair,
    render_template,
    special_ids,
    special_prefix,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
    # Preference pairs (prompt, chosen, rejected): ``prefs``'s checks that need no model, from its own code
    # (``text.encode_preference``); no-trained-tokens is shared with the records' checks above.
    *(CheckInfo(name, PAIR_CHECK_INFO[name]) for name in (*PAIR_CHECKS, LENGTH_BIAS) if name != "no-trained-tokens"),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
#: The checks of preference pairs only (a data set without pairs does not list them).
PAIR_ONLY = tuple(name for name in (*PAIR_CHECKS, LENGTH_BIAS) if name != "no-trained-tokens")
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
class Finding(WireObject[AuditFindingDict]):
    """What one check found in one record: the offending positions and what is wrong there."""

    check: str
    positions: tuple[int, ...]
    message: str
    #: Check-specific detail (``boundary``: the two splits of the prompt/completion boundary).
    detail: dict[str, Any] | None = None


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
