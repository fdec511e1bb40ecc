"""audit over a data set file: records -> ``AuditExample``s (``check_dataset``), and, with a model, the forward
pass as a job for the one runner (``audit_job``)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..batch import (
    BatchReport,
    BatchSettings,
    ExampleStats,
    SummaryBuilder,
    check_resume_settings,
    encode_record,
    fingerprint_targets,
    run_scan,
)
from ..encoding import Layout
from ..errors import InputError
from ..result import (
    SCHEMA_VERSION,
    AuditRecordLineDict,
    as_read_back,
)
from ..scoring import ScoreOptions
from .checks import DEFAULT_EXAMPLES, AuditContext, AuditExample
from .summary import Audit, record_line

if TYPE_CHECKING:
    from ..job import Job
    from ..loading import LoadedModel
    from ..result import ScoreResult

# --- reading a data set ----------------------------------------------------------------------------------

#: Fields of a pre-tokenized record; what else it carries (messages, prompt/completion) is its text.
TOKEN_FIELDS = ("input_ids", "labels", "attention_mask", "completion_mask", "assistant_masks")


def read_audit_records(
    path: str | os.PathLike[str], fields: Any = None, *, format: str | None = None, split: str | None = None
) -> Iterator[tuple[Any, Any | None]]:
    """Every record of the data set through ``data``'s reader, streamed: (record, its text as a second record
    when it is pre-tokenized and also carries the text it was made from, e.g. ``messages``; else None)."""
    from ..data import FORMATS, Fields, Record, detect_format, file_kind, parse_record, read_objects

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
    from ..loading import LoadedModel

    return LoadedModel(
        model=None, tokenizer=tokenizer, name=name, source="tokenizer", device="none", dtype="none", context_length=None
    )


def example_from_record(lm: LoadedModel, record: Any, text: Any, layout: Layout) -> AuditExample:
    """One record as the trainer sees it: pre-tokenized ids and labels as given, or the layout's encoding of
    its text (``lm`` may be ``tokenizer_only``: no context limit applies to the checks)."""
    if record.error is not None:
        raise InputError(record.error)
    if record.input_ids is not None:
        from ..data import encode_tokenized

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
    from ..data import encode_record

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
    from ..data import open_data
    from ..errors import InvalidRecordError

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
    from ..batch import line_settings

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
    from ..result import conform

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
        from ..errors import ResumeError

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
    from ..windows import score_examples

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
    from ..job import Job

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
