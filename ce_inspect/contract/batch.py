"""Batch's documents: an output line (run's document plus the record's id, line and settings), the data-set
summary of ``--summary-json``, and reading a line back."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

from typing import Any, Literal

from ce_inspect.contract.run import DocumentDict, ScoreResult, SequenceTokenDict
from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import SCHEMA_VERSION, NotRequired, TypedDict, conform

Id = str | int | None  # a batch record's id field, copied as is; null when the record has none


class BatchLineDict(DocumentDict):
    """One line of ``batch``'s output: run's document plus the record's id and input line."""

    id: Id
    line: int  # 1-based line of the input file
    sequence: NotRequired[list[SequenceTokenDict]]  # left out with --no-sequence
    # ``batch.line_settings``: the model, its fingerprint and every option the line depends on;
    # ``--resume`` refuses to mix lines whose settings differ.
    settings: dict[str, Any]


# --- the wire format: batch's data-set summary ----------------------------------------------------------


class WorstExampleDict(TypedDict):
    line: int
    id: Id
    mean: float
    sum: float
    count: int


class WorstTokenDict(TypedDict):
    line: int
    id: Id
    index: int
    token: str
    token_id: int
    segment: str
    loss: float
    prob: float
    rank: int


class SkippedDict(TypedDict):
    line: int
    id: Id
    reason: str


class BatchingDict(TypedDict):
    batch_size: int | None
    max_tokens: int | None
    padding_side: Literal["right", "left"]
    batches: int
    examples: int
    sequence_tokens: int
    padded_positions: int
    padding_fraction: float | None
    seconds: float
    tokens_per_second: float | None


class DataDict(TypedDict):
    file: str  # jsonl, json, parquet, saved-dataset or hub
    format: str | None
    format_forced: bool
    split: str | None
    limit: NotRequired[int]  # only the first `limit` records were read (--limit)
    compression: NotRequired[str]  # gzip, bzip2 or zstd (by the file's suffix)


class FilterDict(TypedDict):
    """``batch --keep-below/--keep-above``: the figure and thresholds, the records each file received."""

    by: str  # mean, sum, max or bits_per_byte
    below: float | None  # kept: figure < below (null: no upper bound)
    above: float | None  # kept: figure > above (null: no lower bound)
    kept: int
    dropped: int
    kept_file: str | None
    dropped_file: str | None


class HistogramDict(TypedDict):
    """Counts of values in equal bins: bin k holds edges[k] <= v < edges[k+1] (the last bin is closed)."""

    edges: list[float]  # one more than counts; empty when nothing was counted
    counts: list[int]


class BootstrapDict(TypedDict):
    """How the token-weighted figures' standard errors were drawn: examples resampled with replacement."""

    resamples: int
    seed: int


class BatchSummaryDict(TypedDict):
    schema_version: int
    kind: Literal["batch_summary"]
    model: str
    device: str
    dtype: str
    versions: VersionsDict
    input: str
    output: str | None
    examples: int
    resumed: int
    skipped_count: int
    scored_tokens: int
    token_weighted_mean_loss: float | None
    example_weighted_mean_loss: float | None
    loss_sum: float
    mean_nll: float | None
    perplexity: float | None
    greedy_hits: int
    label_smoothing: float
    ignore_index: int
    worst_examples: list[WorstExampleDict]
    worst_tokens: list[WorstTokenDict]
    skipped: list[SkippedDict]
    batching: BatchingDict
    data: NotRequired[DataDict]  # what was read: the file kind and the records' format
    example_loss_histogram: HistogramDict  # the per-example mean losses (what the reports draw)
    notes: NotRequired[list[str]]  # what the figures do not cover (a --limit that cut the data set)
    # Over the scored texts of the set (each example's ``summary.scored_bytes``/``scored_words`` summed):
    scored_bytes: NotRequired[int]
    scored_words: NotRequired[int]
    bits_per_byte: NotRequired[float]  # sum NLL over the set / ln 2 / scored_bytes
    byte_perplexity: NotRequired[float]  # exp(sum NLL / scored_bytes); left out when it overflows
    word_perplexity: NotRequired[float]  # exp(sum NLL / scored_words); left out when it overflows
    filter: NotRequired[FilterDict]  # only with --keep-below/--keep-above
    # Standard errors (docs/evaluation.md): of the mean over examples, sample std (ddof=1) / sqrt(n), null below
    # two examples; of the token-weighted figures, the bootstrap's (with --bootstrap only, as ``bootstrap`` says).
    example_weighted_mean_loss_stderr: float | None
    token_weighted_mean_loss_stderr: NotRequired[float]
    mean_nll_stderr: NotRequired[float]
    bits_per_byte_stderr: NotRequired[float]
    bootstrap: NotRequired[BootstrapDict]
    mean_entropy: NotRequired[float]  # with --entropy: sum of the scored tokens' entropies / scored tokens (nats)


def batch_line_from_dict(d: Any) -> tuple[int, Id, ScoreResult]:
    """A line of ``batch``'s output as (input line, record id, result); the result has no ``sequence``
    when the line was written with ``--no-sequence``. ``ValueError`` when ``d`` is not such a line."""
    if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a schema_version {SCHEMA_VERSION} document")
    conform(BatchLineDict, d)
    return d["line"], d["id"], ScoreResult.build(d)
