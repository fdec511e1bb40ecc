"""audit's aggregation over a data set (``Audit``), the report (``AuditReport``), the per-record lines, and the
loss outliers carried into an output file once every loss is known."""

from __future__ import annotations

import heapq
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ce_inspect.audit.checks import (
    CHECK_NAMES,
    CHECKS,
    DEFAULT_EXAMPLES,
    OUTLIER_K,
    OUTLIER_MIN_GAP,
    OUTLIER_MIN_RECORDS,
    PAIR_ONLY,
    WINDOW,
    AuditContext,
    AuditExample,
    Finding,
    RecordChecks,
)
from ce_inspect.contract import (
    NOT_ON_WIRE,
    SCHEMA_VERSION,
    AuditCheckDict,
    AuditDict,
    AuditExampleDict,
    AuditRecordLineDict,
    AuditRecordRefDict,
    AuditTokenDict,
    VersionsDict,
    WireObject,
    dumps,
)
from ce_inspect.errors import InputError
from ce_inspect.files import atomic_stream, write_all, writes_through
from ce_inspect.notebook import LineFrame
from ce_inspect.text import IGNORE_INDEX, LENGTH_BIAS, PAIR_CHECKS, SIDES, LengthCounts, PreferenceExample

if TYPE_CHECKING:
    from ce_inspect.contract import ScoreResult

# --- the data set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenView(WireObject[AuditTokenDict]):
    """One token of a shown finding: its text, whether it is trained, its loss when a model ran."""

    index: int
    token_id: int
    token: str
    label: int
    trained: bool
    offending: bool
    special: bool
    loss: float | None = None


@dataclass(frozen=True)
class ShownFinding(WireObject[AuditExampleDict]):
    """A finding shown in full: the record, the positions, and the tokens around them."""

    line: int
    id: str | int | None
    finding: Finding = field(metadata=NOT_ON_WIRE)  # on the wire as its positions, message and detail
    tokens: tuple[TokenView, ...]
    mean_loss: float | None = None

    @property
    def positions(self) -> list[int]:
        return list(self.finding.positions)

    @property
    def message(self) -> str:
        return self.finding.message

    @property
    def detail(self) -> dict[str, Any] | None:
        return self.finding.detail


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
class RecordRef(WireObject[AuditRecordRefDict]):
    line: int
    id: str | int | None


@dataclass(frozen=True)
class CheckResult(WireObject[AuditCheckDict]):
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


@dataclass(frozen=True)
class AuditReport(WireObject[AuditDict], LineFrame):
    """The audit of a data set: every check's result, and what the gate (``fail_on``) makes of them."""

    schema_version: ClassVar[int] = SCHEMA_VERSION
    view: ClassVar[str] = "audit"
    kind: ClassVar[str] = "audit"

    input: str
    model: str | None
    tokenizer: str
    versions: VersionsDict  # ce-inspect, torch, transformers, Python, the device's name ("none" without a model)
    records: int
    max_length: int | None
    checks: tuple[CheckResult, ...]
    fail_on: tuple[str, ...]
    skipped: tuple[dict[str, Any], ...] = ()
    output: str | None = None
    loss: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()  # what the audit does not cover (a `limit` that cut the data set)

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.failed]

    @property
    def gate_failed(self) -> list[str]:
        return [c.name for c in self.checks if c.failed and c.name in self.fail_on]

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)


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
        #: Preference pairs: how many, their trained tokens side against side, the pairs where each is longer.
        self.pairs = 0
        self._lengths = LengthCounts()
        self._longer: dict[str, list[RecordRef]] = {name: [] for name in SIDES}

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

    def add_pair(self, line: int, rid: str | int | None, pair: PreferenceExample) -> list[Finding]:
        """Check one preference pair with ``prefs``'s own checks (``pair.findings``, made by
        ``text.encode_preference``); count its sides' trained tokens for length-bias. Returns its findings."""
        self.records += 1
        self.pairs += 1
        ref = RecordRef(line, rid)
        counts = [len(pair.side(name).scored_positions) for name in SIDES]
        self._lengths.add(*counts)
        if counts[0] != counts[1]:
            self._longer[SIDES[0] if counts[0] > counts[1] else SIDES[1]].append(ref)
        for name in PAIR_CHECKS:
            self._checked[name] += 1
        findings: list[Finding] = []
        for found in pair.findings:
            side = pair.side(found.side or SIDES[0])
            # identical, side-is-prompt: the side's trained tokens are the offending ones
            positions = () if found.check in ("no-trained-tokens", "prompt-differs") else side.scored_positions
            finding = Finding(found.check, tuple(positions), found.message)
            if any(f.check == found.check for f in findings):
                findings.append(finding)
                continue  # both sides fail the same check: the record is listed once
            findings.append(finding)
            self._failing[found.check].append(ref)
            if len(self._shown[found.check]) < self.examples:
                view = AuditExample(line, rid, side.input_ids, side.labels, side.ignore_index, pretokenized=False)
                self._shown[found.check].append(show(self.ctx, view, finding))
        return findings

    def _length_bias(self) -> CheckResult:
        counts = self._lengths
        finding = counts.finding()
        records = tuple(self._longer[counts.longer]) if counts.longer is not None else ()
        note = (
            finding.message
            if finding is not None
            else (
                f"chosen longer in {counts.chosen_longer}, rejected longer in {counts.rejected_longer}, the same in "
                f"{counts.same_length} of {counts.pairs} pairs"
            )
        )
        info = next(c for c in CHECKS if c.name == LENGTH_BIAS)
        return CheckResult(LENGTH_BIAS, info.description, True, counts.pairs, records, (), note)

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
        versions: VersionsDict,
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
            if info.name in PAIR_ONLY and not self.pairs:
                continue  # a data set without preference pairs
            if info.name == LENGTH_BIAS:
                results.append(self._length_bias())
                continue
            if self.pairs and self.records == self.pairs and info.name not in PAIR_CHECKS:
                if info.name == "loss-outlier":  # listed, as the gate and the model's pass look it up
                    note = "a training record's check; this data set holds preference pairs only: not run"
                    results.append(CheckResult(info.name, info.description, False, 0, (), (), note))
                continue  # the records' checks: no record but pairs
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
            versions=versions,
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
    versions: VersionsDict,
    loss: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> AuditRecordLineDict:
    """The per-record output line: which checks the record fails, and where, and what wrote it (``versions``);
    with a model, its loss and the settings it was written with (``audit_line_settings``), which ``--resume``
    compares."""
    d: AuditRecordLineDict = {
        "schema_version": SCHEMA_VERSION,
        "kind": "audit_record",
        "line": ex_line,
        "id": rid,
        "failed": [f.check for f in findings],
        "findings": [f.to_dict() for f in findings],
        "versions": versions,
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
    holds ``path``'s lock. Returns how many lines carry loss-outlier. With no outlier and no line marked by an
    earlier run (a resumed file's), nothing would change, and the file is left as it is."""
    flagged = audit.outlier_findings()
    try:
        source = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{label} {path}: cannot read it back ({exc.strerror})") from None
    with source:
        if not flagged and not any(b'"loss-outlier"' in raw for raw in source):
            return 0
        source.seek(0)
        with atomic_stream(path, label=label) as out:
            return _rewrite_marked(source, out, flagged)


def _rewrite_marked(source: Any, out: Any, flagged: dict[int, Finding]) -> int:
    """``source``'s lines to ``out``, each audit line with its loss-outlier finding as ``flagged`` gives it."""
    marked = 0
    for raw in source:
        obj = json.loads(raw)
        if obj.get("kind") == "audit_record":
            finding = flagged.get(obj["line"])
            marked += finding is not None
            new = with_outlier(obj, finding)
            if new != obj:
                raw = (dumps(new) + "\n").encode("utf-8")
        write_all(out, raw)
    return marked


def outliers_in_lines(report: AuditReport, audit: Audit, path: str | os.PathLike[str]) -> tuple[AuditReport, bool]:
    """After the forward pass into ``path``: a regular file's lines get their loss-outlier findings
    (``mark_outliers``); a stream's are gone by now, so when there are outliers the loss-outlier check's note
    says the lines lack them. Returns (the report, whether that note was added)."""
    if not writes_through(path):
        mark_outliers(path, audit)
        return report, False
    check = report.check("loss-outlier")
    if not check.failed:
        return report, False
    note = f"{check.note}; {STREAMED_NOTE}" if check.note else STREAMED_NOTE
    checks = tuple(replace(c, note=note) if c.name == "loss-outlier" else c for c in report.checks)
    return replace(report, checks=checks), True
