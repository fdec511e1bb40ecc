"""diff's JSON documents: ``diff --json`` (a pair under two models), a ``diff --input`` line and its summary."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

from typing import Any, Literal

from ce_inspect.contract.batch import BatchingDict, SkippedDict
from ce_inspect.contract.layout import LayoutDict
from ce_inspect.contract.run import SummaryDict, TokenDict, TurnDict
from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import NotRequired, TypedDict

DIFF_SCHEMA_VERSION = 1


# --- a pair under two models ----------------------------------------------------------------------------------------


class TokenDiffDict(TypedDict):
    index: int
    token_id: int
    token: str
    segment: str
    ref: TokenDict  # the reference's figures for this token, keys as in `run`
    cand: TokenDict  # the candidate's
    kl: float  # KL(ref ‖ cand) of the next-token distributions, nats
    kl_reverse: float  # KL(cand ‖ ref)
    dnll: float  # candidate NLL − reference NLL of the target
    dp: float  # candidate p(target) − reference p(target)
    same_top1: bool  # both models' most likely token is the same


class DiffSummaryDict(TypedDict):
    count: int
    ref_loss_mean: float
    cand_loss_mean: float
    ref_nll_mean: float
    cand_nll_mean: float
    dnll_mean: float
    dnll_se: float | None
    kl_mean: float
    kl_se: float | None
    kl_max: float
    kl_p999: float
    kl_p99: float
    kl_p95: float
    kl_p90: float
    kl_median: float
    kl_p10: float
    kl_p05: float
    kl_p01: float
    kl_p001: float
    kl_min: float
    kl_reverse_mean: float
    kl_reverse_se: float | None
    dp_mean: float
    dp_rms: float
    dp_rms_se: float | None
    same_top1: int
    same_top1_pct: float
    same_top1_se_pct: float | None
    shared_vocab: int


class DiffSideDict(TypedDict):
    model: str
    device: str
    dtype: str
    summary: SummaryDict  # `run`'s summary of this side
    turns: list[TurnDict]  # `run`'s per-turn figures of this side


class DiffDict(TypedDict):
    schema_version: int
    kind: Literal["diff"]
    reference: DiffSideDict
    candidate: DiffSideDict
    versions: VersionsDict  # device: the reference's, then the candidate's when it is another
    layout: LayoutDict
    tokens: list[TokenDiffDict]
    summary: DiffSummaryDict
    notes: list[str]


class DiffLineDict(DiffDict):
    """One line of ``diff --input``: the pair's document plus the record's id and input line."""

    id: str | int | None
    line: int
    # ``batch.line_settings`` of the reference, plus the candidate's ``model_b``, ``model_b_fingerprint`` and
    # ``dtype_b``: ``--resume`` refuses to mix lines whose settings differ.
    settings: dict[str, Any]


# --- diff --input's summary ---------------------------------------------------------------------------------


class DiffModelDict(TypedDict):
    model: str
    device: str
    dtype: str


class WorstExampleDict(TypedDict):
    line: int
    id: str | int | None
    count: int
    kl_mean: float
    dnll_mean: float
    same_top1_pct: float


class DiffBootstrapDict(TypedDict):
    """``diff DATA --bootstrap N``: the standard errors of the data set's token-weighted means from N resamples
    of the examples with replacement (``seed``), the examples' own tokens kept together."""

    resamples: int
    seed: int
    dnll_mean_stderr: float | None  # of summary.dnll_mean; null below two examples
    kl_mean_stderr: float | None  # of summary.kl_mean


class DiffDatasetDict(TypedDict):
    schema_version: int
    kind: Literal["diff_summary"]
    reference: DiffModelDict
    candidate: DiffModelDict
    versions: VersionsDict  # device: the reference's, then the candidate's when it is another
    input: str
    output: str | None
    examples: int
    skipped_count: int
    skipped: list[SkippedDict]
    summary: DiffSummaryDict | None  # token-weighted over every scored token of the data set; null: none scored
    worst_by_kl: list[WorstExampleDict]
    worst_by_dnll: list[WorstExampleDict]
    batching: BatchingDict
    notes: list[str]
    bootstrap: NotRequired[DiffBootstrapDict]  # with --bootstrap N
