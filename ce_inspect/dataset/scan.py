"""The scan: every record of a data set encoded once, before any forward pass (``scan_dataset``), into one
``Entry`` per record (to score, read back from a resumed file, or invalid), and the checks that a resumed
file belongs to this input."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ce_inspect.data import DataInfo, Fields, Record, encode_record, open_data, read_records
from ce_inspect.dataset.resume import ResumeState, check_resume_settings, line_settings
from ce_inspect.dataset.summary import ExampleStats, fingerprint_targets
from ce_inspect.errors import InputError, InvalidRecordError, ResumeError
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Encoded, Layout, check_windows

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


@dataclass(frozen=True)
class Entry:
    """One input record as the scan found it: to score, already done (resume), or invalid."""

    line: int
    id: str | int | None
    length: int = 0  # sequence tokens of the encoded example
    scored: int = 0  # scored targets
    error: str | None = None
    done: ExampleStats | None = None
    #: An invalid entry whose output line the resumed file already holds (``ResumeState.others``).
    kept: bool = False

    @property
    def pending(self) -> bool:
        return self.error is None and self.done is None


@dataclass(frozen=True)
class Scan:
    path: Path
    fields: Fields
    layout: Layout
    entries: tuple[Entry, ...]
    resume: ResumeState | None = None
    info: DataInfo | None = None  # what was read: file kind, format (forced or detected), split
    label: str | None = None  # how messages and the summary name the input (e.g. "<stdin>" for stdin)
    #: record -> example; None: ``encode_record`` with the scanning model (``diff`` checks both tokenizers).
    encoder: Callable[[Record], Encoded] | None = None
    # distributed: the entries are one rank's share; the records between them are other ranks'
    subset: bool = False

    @property
    def name(self) -> str:
        return self.label if self.label is not None else str(self.path)

    def records(self) -> Iterator[Record]:
        """The records the scan read (only the first ``info.limit`` when it is set), read again."""
        fmt = self.info.format if self.info is not None and self.info.forced else None
        split = self.info.split if self.info is not None else None
        limit = self.info.limit if self.info is not None else None
        return read_records(self.path, self.fields, format=fmt, split=split, limit=limit)

    @property
    def pending(self) -> list[Entry]:
        return [e for e in self.entries if e.pending]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.error is not None]


def scan_dataset(
    lm: LoadedModel,
    path: str | os.PathLike[str],
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    fields: Fields | None = None,
    skip_invalid: bool = False,
    resume: ResumeState | None = None,
    format: str | None = None,
    split: str | None = None,
    info: DataInfo | None = None,
    label: str | None = None,
    encoder: Callable[[Record], Encoded] | None = None,
) -> Scan:
    """Encode every record; stop at the first bad one unless ``skip_invalid``; match ``resume`` to the input.

    ``format`` forces the record format (else detected per record), ``split`` picks a dataset's split;
    ``info``, from ``data.open_data``, saves opening the data a second time to describe it. ``label``
    names the input in messages and the summary when ``path`` is a stand-in (stdin's spool).
    ``encoder`` replaces ``encode_record(lm, record, layout)`` (its InputError marks the record invalid).
    """
    path, layout, fields = Path(path), layout or Layout(), fields or Fields()
    name = label if label is not None else str(path)
    check_windows(layout, lm.context_length)  # once, not as an error of every long record
    if info is None:
        info = open_data(path, fields, format=format, split=split)
    if label is not None:
        info = replace(info, path=label)  # error messages name what the user gave
    if resume is not None:
        check_resume_settings(resume, line_settings(lm, layout, options or ScoreOptions(), fields))
    scan = Scan(path=path, fields=fields, layout=layout, entries=(), resume=resume, info=info)
    joins, entries = GluedAnswers(layout, info), []
    for record in scan.records():
        joins.add(record)
        entries.append(_scan_entry(lm, record, layout, info, skip_invalid=skip_invalid, resume=resume, encoder=encoder))
    if not entries:
        raise InputError(f"{name} holds no records")
    if joins.note is not None:
        info = replace(info, glued_note=joins.note)  # told once by the run, in the summary's notes
    if info.limit is not None and len(entries) >= info.limit:
        info = replace(info, limited=True)  # the run reads only the first `limit` records: its notes say so
    if resume is not None:
        _check_resume_covered(resume, entries, name, info.limit if info.limited else None)
    return Scan(
        path=path,
        fields=fields,
        layout=layout,
        entries=tuple(entries),
        resume=resume,
        info=info,
        label=label,
        encoder=encoder,
    )


class GluedAnswers:
    """Counts the answers that start without whitespace right after a prompt that ends without it
    (``"...capital of France?" + "Paris..."``): the answer's first token is then a word start without its
    space, which a model trained on ``"? Paris"`` rarely sees, so it alone takes a high loss. ``note`` says so
    when more than half of the answers checked are glued this way.

    Only texts joined as text are checked: a pair's prompt and answer, a preference pair's prompt and each
    side, a question's context and each choice. Not with ``chat`` (the template separates the turns), nor
    with ``sep`` (the user chose the join); not conversations, ``text`` or tokenized records."""

    def __init__(self, layout: Layout, info: DataInfo) -> None:
        self.enabled = not layout.chat and layout.sep is None
        self.info = info
        self.checked = 0
        self.glued = 0
        self.first: tuple[Record, str, str] | None = None

    def add(self, record: Record) -> None:
        if not self.enabled or record.error is not None:
            return
        for prompt, answer in answer_joins(record):
            self.checked += 1
            if not prompt[-1].isspace() and not answer[0].isspace():
                self.glued += 1
                self.first = self.first or (record, prompt, answer)

    @property
    def note(self) -> str | None:
        if self.first is None or 2 * self.glued <= self.checked:
            return None
        record, prompt, answer = self.first
        return (
            f"{self.glued} of {self.checked} answers start without whitespace after a prompt that ends without it "
            f"(first: {self.info.where(record)}, ...{prompt[-20:]!r} + {answer[:20]!r}...): each answer's first "
            "token is then a word start without its space, which the model rarely saw there, so it takes a high "
            "loss; if the training text has a space or newline between them, add it to the prompts or the answers"
        )


def answer_joins(record: Record) -> list[tuple[str, str]]:
    """The (prompt, answer) texts of ``record`` that are joined as text, both non-empty: a pair's, a preference
    pair's (one per side, when its prompt is a string), a question's (one per choice, when its context is)."""
    prompt = record.prompt
    if not isinstance(prompt, str) or not prompt:
        return []
    if record.choices is not None:
        answers: list[object] = list(record.choices)
    elif record.chosen is not None or record.rejected is not None:
        answers = [record.chosen, record.rejected]
    else:
        answers = [record.answer]
    return [(prompt, a) for a in answers if isinstance(a, str) and a]


def _encode_for_scan(
    lm: LoadedModel, record: Record, layout: Layout, encoder: Callable[[Record], Encoded] | None
) -> tuple[Encoded | None, str | None]:
    """The record's example, or why it has none: its read error, the encoder's InputError, or no scored token."""
    reason = record.error
    encoded: Encoded | None = None
    if reason is None:
        try:
            encoded = encoder(record) if encoder else encode_record(lm, record, layout)
        except InputError as exc:
            reason = str(exc)
        if encoded is not None and encoded.requires_targets and not encoded.scored_positions:
            reason, encoded = "no token of it is scored (every label is ignored)", None
    return encoded, reason


def _scan_entry(
    lm: LoadedModel,
    record: Record,
    layout: Layout,
    info: DataInfo,
    *,
    skip_invalid: bool,
    resume: ResumeState | None,
    encoder: Callable[[Record], Encoded] | None,
) -> Entry:
    """One record's entry: read back from ``resume``, invalid (only with ``skip_invalid``), or to score.

    Raises where the record and the resumed file disagree, so a resume never mixes two inputs' results.
    """
    encoded, reason = _encode_for_scan(lm, record, layout, encoder)
    done = resume.examples.get(record.line) if resume is not None else None
    kept = resume is not None and record.line in resume.others
    if kept and reason is None:
        raise ResumeError(
            f"`resume`: input line {record.line}{id_note(record.id)} can be scored now but {resume.path} "  # type: ignore[union-attr]
            "holds no score for it; the input or the options changed since, start over with `force`"
        )
    if done is not None:
        _check_done(resume, record, encoded, done, reason)  # type: ignore[arg-type]
        return Entry(record.line, record.id, done.sequence_tokens, done.count, done=done)
    if reason is not None:
        if not skip_invalid:
            raise InvalidRecordError(f"{info.where(record)}: {reason} (fix the {info.unit}, or pass --skip-invalid)")
        return Entry(record.line, record.id, error=reason, kept=kept)
    assert encoded is not None
    if resume is not None and resume.ordered and record.line < resume.last_line:
        raise ResumeError(
            f"`resume`: {resume.path} has results up to input line {resume.last_line} but none for line "
            f"{record.line}, which is valid now; the input changed since, start over with `force`"
        )
    return Entry(record.line, record.id, len(encoded), len(encoded.scored_positions))


def _check_resume_covered(resume: ResumeState, entries: list[Entry], name: str, limit: int | None) -> None:
    """Refuse a resumed file that holds a result for an input line the input does not have: with ``limit``, the
    input is its first ``limit`` records."""
    missing = sorted((set(resume.examples) | resume.others) - {e.line for e in entries})
    if not missing:
        return
    if limit is not None:
        raise ResumeError(
            f"`resume`: {resume.path} has a result for input line {missing[0]}, past the first {limit} records of "
            f"{name} that this run reads (`limit`); resume with the `limit` it was written with, or a larger one"
        )
    raise ResumeError(
        f"`resume`: {resume.path} has a result for input line {missing[0]}, which {name} does not have; "
        "it was written for another input, start over with `force`"
    )


def id_note(rid: str | int | None) -> str:
    """How a message names a record's id after its line: `` (id 'a')``, or nothing when it has none."""
    return "" if rid is None else f" (id {rid!r})"


def _check_done(state: ResumeState, record: Record, encoded: Encoded | None, done: ExampleStats, reason: str | None):
    where = f"`resume`: input line {record.line}{id_note(record.id)}"
    if done.id != record.id:
        raise ResumeError(
            f"{where} has id {record.id!r} but {state.path} holds id {done.id!r} for it; "
            "the output belongs to another input, start over with `force`"
        )
    if encoded is None:
        raise ResumeError(f"{where} cannot be scored now ({reason}) but {state.path} holds a result for it")
    targets = [(p, encoded.input_ids[p]) for p in encoded.scored_positions]
    if fingerprint_targets(targets) != done.fingerprint or len(encoded) != done.sequence_tokens:
        raise ResumeError(
            f"{where} does not encode to the tokens {state.path} holds for it; the input or the layout "
            "options changed since, resume with the same ones or start over with `force`"
        )


__all__ = [
    "Entry",
    "GluedAnswers",
    "Scan",
    "answer_joins",
    "id_note",
    "scan_dataset",
]
