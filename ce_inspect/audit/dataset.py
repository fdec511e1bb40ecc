"""audit over a data set file: records -> ``AuditExample``s (``check_dataset``), and, with a model, the forward
pass as a job for the one runner (``audit_job``)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_inspect.audit.checks import DEFAULT_EXAMPLES, DEFAULT_FAIL_ON, AuditContext, AuditExample
from ce_inspect.audit.summary import STREAMED_NOTE, Audit, AuditReport, outliers_in_lines, record_line
from ce_inspect.contract import (
    SCHEMA_VERSION,
    AuditRecordLineDict,
    VersionsDict,
    as_read_back,
    conform,
    versions,
)
from ce_inspect.data import (
    FORMATS,
    DataInfo,
    Fields,
    Record,
    detect_format,
    encode_pair_record,
    encode_record,
    encode_tokenized,
    encode_whole,
    file_kind,
    open_data,
    parse_record,
    read_objects,
)
from ce_inspect.dataset import (
    BatchReport,
    BatchSettings,
    DatasetRun,
    DatasetSummary,
    ExampleStats,
    GluedAnswers,
    Job,
    JsonlSink,
    Progress,
    Scan,
    SummaryBuilder,
    as_loaded,
    check_resume_settings,
    fingerprint_targets,
    input_name,
    line_settings,
    run_scan,
)
from ce_inspect.distributed import current_session
from ce_inspect.errors import InputError, InvalidRecordError, ResumeError
from ce_inspect.files import atomic_stream, check_output, output_lock, spooled_input
from ce_inspect.model import LoadedModel
from ce_inspect.scoring import ScoreOptions, score_examples
from ce_inspect.text import Encoded, Layout, PreferenceExample

if TYPE_CHECKING:
    from ce_inspect.contract import ScoreResult
    from ce_inspect.dataset import Job

# --- reading a data set ----------------------------------------------------------------------------------

#: Fields of a pre-tokenized record; what else it carries (messages, prompt/completion) is its text.
TOKEN_FIELDS = ("input_ids", "labels", "attention_mask", "completion_mask", "assistant_masks")


def read_audit_records(
    path: str | os.PathLike[str],
    fields: Any = None,
    *,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> Iterator[tuple[Any, Any | None]]:
    """Every record of the data set (the first ``limit``) through ``data``'s reader, streamed: (record, its text
    as a second record when it is pre-tokenized and also carries the text it was made from, e.g. ``messages``;
    else None)."""
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    fields = fields or Fields()
    for number, obj, error in read_objects(path, file_kind(path), split, limit):
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
    return LoadedModel(
        model=None, tokenizer=tokenizer, name=name, source="tokenizer", device="none", dtype="none", context_length=None
    )


def example_from_record(lm: LoadedModel, record: Any, text: Any, layout: Layout) -> AuditExample:
    """One record as the trainer sees it: pre-tokenized ids and labels as given, or the layout's encoding of
    its text (``lm`` may be ``tokenizer_only``: no context limit applies to the checks)."""
    if record.error is not None:
        raise InputError(record.error)
    if record.input_ids is not None:
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


def pair_or_example(
    lm: LoadedModel, record: Any, text: Any, layout: Layout, max_length: int | None
) -> AuditExample | PreferenceExample:
    """A preference pair as ``prefs`` lays it out (TRL's DPO rule, cut to ``max_length`` as TRL's keep_start
    does), with its checks; any other record as ``example_from_record`` makes it."""
    if record.error is None and (record.chosen is not None or record.rejected is not None):
        return encode_pair_record(lm.tokenizer, record, max_length=max_length)
    return example_from_record(lm, record, text, layout)


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
    joins: GluedAnswers | None = None,
) -> Audit:
    """The checks that need no forward pass, over every record, streamed.

    ``lm`` may be ``tokenizer_only``. ``sink`` (a ``batch.JsonlSink``) receives one line per record as it is
    checked; ``keep_findings`` keeps each failing record's findings for a later pass (the model's) instead.
    A record that is not an example stops the run, naming it, unless ``skip_invalid``. ``joins`` counts the
    answers glued to their prompts.
    """
    info = info or open_data(path, fields, format=format, split=split)
    layout = layout or Layout()
    ctx = AuditContext(lm.tokenizer, layout=layout)
    audit = Audit(ctx, max_length=max_length, examples=examples)
    for record, text in read_audit_records(path, fields, format=format, split=split, limit=info.limit):
        if joins is not None:
            joins.add(record)
        try:
            ex = pair_or_example(lm, record, text, layout, max_length)
        except InputError as exc:
            if not skip_invalid:
                raise InvalidRecordError(
                    f"{info.where(record)}: {exc} (fix the {info.unit}, or pass --skip-invalid)"
                ) from None
            audit.skip(record.line, record.id, str(exc))
            continue
        if isinstance(ex, PreferenceExample):
            findings = audit.add_pair(record.line, record.id, ex)
        else:
            findings = audit.add(ex)
        if keep_findings and findings:
            audit.findings[record.line] = findings
        if sink is not None:
            sink.write(record_line(record.line, record.id, findings, lm.versions))
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
    return {**line_settings(lm, scan.layout, options, scan.fields), "max_length": max_length}


def line_emitter(
    audit: Audit, settings: dict[str, Any], versions: VersionsDict
) -> Callable[[Any, Any], AuditRecordLineDict | None]:
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
            if s.scored_bytes is not None:
                loss["scored_bytes"] = s.scored_bytes
        return record_line(entry.line, entry.id, findings, versions, loss, settings)

    return emit


def audit_line_stats(obj: Any, worst: int) -> tuple[Any, list[Any]]:
    """``batch.read_resume``'s parser for audit lines (written with a model): the line, checked key for key
    against ``AuditRecordLineDict``, as ``ExampleStats`` carrying its findings; a record the model could not
    score gives stats with no scored token (its line is kept, ``ResumeState.others``)."""
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
        scored_bytes=loss.get("scored_bytes"),
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
    options = options or ScoreOptions()
    return Job(
        command="audit",
        make_report=lambda share: AuditLosses(lm, share, audit, options, settings or BatchSettings()),
        emit=line_emitter(audit, audit_line_settings(lm, scan, options, audit.max_length), lm.versions),
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


# --- the library's entry point -----------------------------------------------------------------------------


def audit_dataset(
    lm: LoadedModel | Callable[[], LoadedModel],
    data: str | Path,
    output: str | Path | None = None,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    settings: BatchSettings | None = None,
    fields: Fields | None = None,
    max_length: int | None = None,
    skip_invalid: bool = False,
    examples: int | None = None,
    fail_on: tuple[str, ...] | None = None,
    resume: bool = False,
    force: bool = False,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    notes: Callable[[str], None] | None = None,
) -> AuditReport:
    """``ce-inspect audit --model``: every check on every record (the first ``limit``), then the forward pass
    through the one runner (each record's loss, the loss outliers); one line per record into ``output``
    (marked with ``loss-outlier`` once every loss is known) and the report returned. Under torchrun, None on
    ranks but 0."""
    settings, options, layout = settings or BatchSettings(), options or ScoreOptions(), layout or Layout()
    fields = fields or Fields()
    with DatasetRun(
        data,
        output,
        command="audit",
        parse=audit_line_stats,
        worst=0,
        resume=resume,
        force=force,
        fields=fields,
        format=format,
        split=split,
        limit=limit,
        data_label="the data",
        session=current_session(),
        notes=notes,
    ) as run:
        name = run.info.path  # type: ignore[union-attr]  # the data as the user gave it
        lm = as_loaded(lm)
        # The checks see every record, whatever its length; the model's context limits only the forward pass.
        audit = check_dataset(
            tokenizer_only(lm.tokenizer, lm.name),
            run.source,
            layout=layout,
            fields=fields,
            format=format,
            split=split,
            info=run.info,
            max_length=max_length,
            skip_invalid=skip_invalid,
            examples=DEFAULT_EXAMPLES if examples is None else examples,
            keep_findings=True,
        )

        def encoder(record: Record) -> Encoded:  # audit has no --stride: a too-long text's reason names none
            return encode_whole(lm, record, layout, "audit")

        scan = run.scan(lm, layout=layout, options=options, skip_invalid=True, encoder=encoder)
        job = audit_job(lm, scan, audit, options, settings)
        summary = run.run(lm, scan, job, options=options, settings=settings, progress=progress)
        if summary is None:
            return None  # type: ignore[return-value]  # torchrun, not rank 0: rank 0 merges and reports
        gate = DEFAULT_FAIL_ON if fail_on is None else fail_on
        return _audit_report(lm, scan, audit, summary, name, gate, options, output, notes)


def audit_without_model(
    tokenizer: Any | Callable[[], tuple[Any, str]],
    data: str | Path,
    output: str | Path | None = None,
    *,
    name: str = "tokenizer",
    layout: Layout | None = None,
    fields: Fields | None = None,
    max_length: int | None = None,
    skip_invalid: bool = False,
    examples: int | None = None,
    fail_on: tuple[str, ...] | None = None,
    force: bool = False,
    format: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    notes: Callable[[str], None] | None = None,
) -> AuditReport:
    """``ce-inspect audit --no-model``: the checks that need no forward pass (on the first ``limit`` records
    when it is given), with a tokenizer only (``name``
    names it), or with the function that loads it (returning ``(tokenizer, name)``; called once the output
    is checked and the data opened). One line per record into ``output``, written under a temporary name
    and renamed into place when complete, so a failed or interrupted audit leaves the old file intact."""
    fields = fields or Fields()
    if output is not None:
        check_output(output, inputs=[("the data", data)], label="`output`", force=force)
    # stdin, a FIFO or a pipe given as a path is read once, into a temporary file: the checks read it twice.
    with spooled_input(data, "the data") as source, ExitStack() as stack:
        info = replace(open_data(source, fields, format=format, split=split, limit=limit), path=input_name(data))
        if notes is not None:
            notes(info.describe())  # before anything loads: a bad file fails fast
        sink = None
        if output is not None:
            stack.enter_context(output_lock(output, label="`output`"))  # every writer takes the lock
            fh = stack.enter_context(atomic_stream(output, label="`output`"))
            sink = JsonlSink(fh, name=str(output), regular=False)
        tok, name = tokenizer() if callable(tokenizer) else (tokenizer, name)
        joins = GluedAnswers(layout or Layout(), info)  # with a model, the run's scan counts them
        audit = check_dataset(
            tokenizer_only(tok, name), source, layout=layout, fields=fields, max_length=max_length,
            skip_invalid=skip_invalid, examples=DEFAULT_EXAMPLES if examples is None else examples, sink=sink,
            format=format, split=split, info=info, joins=joins,
        )  # fmt: skip
    where = str(output) if output is not None else None
    gate = DEFAULT_FAIL_ON if fail_on is None else fail_on
    report = audit.finish(input=info.path, model=None, tokenizer=name, versions=versions(), fail_on=gate, output=where)
    report = _limited(report, info, audit.records + len(audit.skipped), notes)
    if joins.note is None:
        return report
    if notes is not None:
        notes(f"warning: {joins.note}")
    return replace(report, notes=(*report.notes, joins.note))


def _limited(report: AuditReport, info: DataInfo, read: int, notes: Callable[[str], None] | None) -> AuditReport:
    """The report with the note that ``limit`` cut the data set (``read`` records read), told to ``notes``."""
    if info.limit is None or read < info.limit:
        return report
    note = replace(info, limited=True).limit_note
    if notes is not None:
        notes(f"note: {note}")
    return replace(report, notes=(*report.notes, note))


def _audit_report(
    lm: LoadedModel,
    scan: Scan,
    audit: Any,
    summary: DatasetSummary,
    name: str,
    gate: tuple[str, ...],
    options: ScoreOptions,
    output: str | Path | None,
    notes: Callable[[str], None] | None,
) -> AuditReport:
    """The audit's report once every record is scored: the shown records scored again alone, the outliers
    marked in the output's lines (still under its lock)."""
    loss = {
        "examples": summary.examples,
        "scored_tokens": summary.scored_tokens,
        "token_weighted_mean_loss": summary.token_weighted_mean_loss,
        "example_weighted_mean_loss": summary.example_weighted_mean_loss,
        "unscored": audit.unscored,
        "resumed": summary.resumed,
        "example_weighted_mean_loss_stderr": summary.example_weighted_mean_loss_stderr,
    }
    if summary.bits_per_byte is not None:
        loss["bits_per_byte"] = summary.bits_per_byte
    scored = score_shown(lm, scan, audit, options)
    report = audit.finish(
        input=name, model=lm.name, tokenizer=lm.name, versions=lm.versions, fail_on=gate, loss=loss, scored=scored
    )
    if scan.info is not None and scan.info.notes:  # told to `notes` by the run's scan
        report = replace(report, notes=(*report.notes, *scan.info.notes))
    if output is None:
        return report
    report, streamed = outliers_in_lines(report, audit, output)
    if streamed and notes is not None:
        notes(f"audit: --output: {STREAMED_NOTE}")
    return replace(report, output=str(output))
