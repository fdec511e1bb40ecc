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

The package: ``checks`` (one record -> its findings, no I/O), ``summary`` (the aggregation over a data set,
the report, the per-record lines, the loss outliers marked in an output file), ``dataset`` (a data-set
file through the checks, and the forward pass as a job for ``runner.DatasetRun``).
"""

from __future__ import annotations

from ce_inspect.audit.checks import (
    CHECK_NAMES,
    CHECKS,
    DEFAULT_EXAMPLES,
    DEFAULT_FAIL_ON,
    AuditContext,
    AuditExample,
    Finding,
    audit_example,
    parse_checks,
)
from ce_inspect.audit.dataset import (
    audit_dataset,
    audit_job,
    audit_line_stats,
    audit_without_model,
    check_dataset,
    example_from_record,
    read_audit_records,
    score_losses,
    score_shown,
    tokenizer_only,
)
from ce_inspect.audit.summary import (
    STREAMED_NOTE,
    Audit,
    AuditReport,
    CheckResult,
    ShownFinding,
    TokenView,
    mark_outliers,
    outliers_in_lines,
    record_line,
)

__all__ = [
    "Audit",
    "AuditContext",
    "AuditExample",
    "AuditReport",
    "CHECKS",
    "CHECK_NAMES",
    "CheckResult",
    "DEFAULT_EXAMPLES",
    "DEFAULT_FAIL_ON",
    "Finding",
    "STREAMED_NOTE",
    "ShownFinding",
    "TokenView",
    "audit_example",
    "audit_job",
    "audit_line_stats",
    "audit_dataset",
    "audit_without_model",
    "check_dataset",
    "example_from_record",
    "mark_outliers",
    "outliers_in_lines",
    "parse_checks",
    "read_audit_records",
    "record_line",
    "score_losses",
    "score_shown",
    "tokenizer_only",
]
