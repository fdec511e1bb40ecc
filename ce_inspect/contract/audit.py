"""Audit's documents (ce_inspect/audit/): ``audit --json`` and its ``--output`` lines."""

from typing import Any

from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import TypedDict

# --- audit (ce_inspect/audit/): the `audit --json` document and its --output lines ---------------------

# Optional keys are declared in a ``total=False`` subclass: exact under ``from __future__ import annotations``
# on every Python version (``NotRequired`` in a string annotation is not seen by typing's TypedDict).


class AuditTokenDict(TypedDict):
    index: int
    token_id: int
    token: str
    label: int  # the record's label at this position (the ignore index when not trained)
    trained: bool
    offending: bool  # one of the positions the check flags
    special: bool
    loss: float | None  # with a model, at trained positions


class AuditRecordRefDict(TypedDict):
    line: int
    id: str | int | None


class _AuditFindingDictRequired(TypedDict):
    check: str
    positions: list[int]  # the offending token positions (may be empty: no-trained-tokens)
    message: str


class AuditFindingDict(_AuditFindingDictRequired, total=False):
    detail: dict[
        str, Any
    ]  # boundary: the two splits (alone, together, prompt_tokens, common_prefix); loss-outlier: mean, threshold


class _AuditExampleDictRequired(TypedDict):
    line: int
    id: str | int | None
    positions: list[int]
    message: str
    tokens: list[AuditTokenDict]  # the tokens around the offending positions


class AuditExampleDict(_AuditExampleDictRequired, total=False):
    detail: dict[str, Any]
    mean_loss: float  # with a model


class _AuditCheckDictRequired(TypedDict):
    name: str
    description: str
    ran: bool  # false: loss-outlier without a model
    checked: int  # records the check could examine
    failed: int  # failing records
    records: list[AuditRecordRefDict]  # every failing record, in input order
    examples: list[AuditExampleDict]  # the first few, in full


class AuditCheckDict(_AuditCheckDictRequired, total=False):
    note: str


class _AuditLossDictRequired(TypedDict):
    examples: int  # records scored
    scored_tokens: int
    token_weighted_mean_loss: float | None
    example_weighted_mean_loss: float | None
    unscored: list[dict[str, Any]]  # {line, id, reason} of records the model could not score
    resumed: int  # records whose loss was read back from the output (--resume), not scored by this run


class AuditLossDict(_AuditLossDictRequired, total=False):
    # {median, mad, threshold, records, basis}: the statistics' records, basis "passing" (those that pass every
    # other check) or "all" (fewer than 5 pass)
    outlier_rule: dict[str, Any]
    example_weighted_mean_loss_stderr: float | None  # sample std (ddof=1) / sqrt(n); null below two records
    bits_per_byte: float  # sum NLL / ln 2 / UTF-8 bytes of the trained text, over the scored records


class _AuditDictRequired(TypedDict):
    schema_version: int
    kind: str  # "audit"
    input: str
    output: str | None  # the --output file of per-record lines
    model: str | None  # null with --no-model
    tokenizer: str
    versions: VersionsDict  # device "none" with --no-model
    records: int  # records checked (skipped ones excluded)
    max_length: int | None
    skipped: list[dict[str, Any]]  # {line, id, reason}
    checks: list[AuditCheckDict]
    failed_checks: list[str]
    fail_on: list[str]
    gate_failed: list[str]  # failed checks that are in fail_on: exit 3 when not empty


class AuditDict(_AuditDictRequired, total=False):
    loss: AuditLossDict  # with a model
    notes: list[str]  # what the audit does not cover (a --limit that cut the data set)


class _AuditRecordLineDictRequired(TypedDict):
    schema_version: int
    kind: str  # "audit_record"
    line: int
    id: str | int | None
    failed: list[str]
    findings: list[AuditFindingDict]
    versions: VersionsDict  # device "none" with --no-model


class _AuditRecordLossDictRequired(TypedDict):
    scored: bool  # false: the model could not score the record (``reason``)


class AuditRecordLossDict(_AuditRecordLossDictRequired, total=False):
    mean: float  # scored: the record's mean loss over its trained tokens
    sum: float
    count: int  # trained tokens scored
    sequence_tokens: int  # tokens of the record's sequence (``--resume`` compares it with the input)
    targets: str  # a digest of the scored (position, token id) pairs (``--resume`` compares it with the input)
    scored_bytes: int  # UTF-8 bytes of the trained text (the set's bits per byte, on resume too)
    reason: str  # not scored: why


class AuditRecordLineDict(_AuditRecordLineDictRequired, total=False):
    loss: AuditRecordLossDict  # with a model
    settings: dict[str, Any]  # with a model: what the line was written with (``--resume`` compares them)
