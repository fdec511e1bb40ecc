"""prefs's JSON documents: one line per preference pair, and the data-set summary (``--summary-json``)."""

from __future__ import annotations

from typing import Any, Literal

from ce_inspect.contract.batch import BatchingDict, SkippedDict
from ce_inspect.contract.run import SummaryDict, TokenDict
from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import TypedDict

PREFS_SCHEMA_VERSION = 1


class PrefsModelDict(TypedDict):
    model: str
    device: str
    dtype: str


class PrefsFindingDict(TypedDict):
    # one of the pair checks: identical, no-trained-tokens, prompt-differs, side-is-prompt, ref-prefers-rejected;
    # or (the data set's) length-bias
    check: str
    message: str


class PrefsLengthBiasDict(TypedDict):
    """length-bias over the pairs: trained tokens of chosen against rejected."""

    pairs: int
    chosen_longer: int
    rejected_longer: int
    same_length: int
    share: float  # the check fires when one side is longer in at least this share of the pairs
    min_pairs: int  # ... and there are at least this many pairs
    finding: PrefsFindingDict | None  # null: it does not fire


class PrefsSideDict(TypedDict):
    sequence_tokens: int  # prompt + completion, after truncation
    count: int  # trained (completion) tokens scored
    logps: float  # sum of the policy's log-probs of the completion tokens (0 when none)
    ref_logps: float | None  # the reference's; null for a loss without reference (simpo, orpo)
    avg_logps: float | None  # logps / count: what simpo and orpo use; null when count is 0
    reward: float | None  # the implicit reward TRL logs for this side; null when undefined
    tokens: list[TokenDict]  # the policy's figures of every completion token, keys as in `run`
    ref_logprobs: list[float] | None  # the reference's log-prob of each of those tokens; null without reference
    summary: SummaryDict | None  # `run`'s summary of the side under the policy; null when nothing is trained


class PrefsLayoutDict(TypedDict):
    tokenization: str  # trl (TRL's DPO rule), separate or joint
    conversational: bool
    implicit_prompt: bool  # the prompt was extracted from chosen and rejected (TRL's extract_prompt)
    prompt_tokens: int  # where the completions start (the shorter common prefix, TRL's rule)
    prompt_tokens_alone: int  # the prompt tokenized alone
    chosen_tokens: int  # completion tokens before truncation
    rejected_tokens: int
    max_length: int | None
    truncation_mode: str  # keep_start or keep_end
    chosen_truncated: int  # tokens cut from the chosen sequence by max_length
    rejected_truncated: int
    divergence: int | None  # first position where the two sequences differ; null: identical


class PrefsLineDict(TypedDict):
    """One line of ``prefs``: a pair's sides, TRL's figures and the pair's checks."""

    schema_version: int
    kind: Literal["prefs"]
    id: str | int | None
    line: int
    loss_type: str  # sigmoid, ipo, simpo or orpo
    beta: float
    chosen_logps: float  # TRL's names: sums over the completion tokens
    rejected_logps: float
    ref_chosen_logps: float | None
    ref_rejected_logps: float | None
    chosen_reward: float | None  # β·(log π − log π_ref) (sigmoid, ipo); β·mean log π (simpo, orpo)
    rejected_reward: float | None
    margin: float | None  # chosen_reward − rejected_reward
    loss: float | None  # the pair's loss under loss_type; null when undefined (a side with nothing trained)
    log_odds: float | None  # orpo only: the log odds ratio of chosen over rejected
    layout: PrefsLayoutDict
    chosen: PrefsSideDict
    rejected: PrefsSideDict
    findings: list[PrefsFindingDict]
    notes: list[str]
    versions: VersionsDict  # device: the policy's, then the reference's when it is another
    # ``batch.line_settings`` of the policy plus the reference, the loss and the tokenization: ``--resume``
    # refuses to mix lines whose settings differ.
    settings: dict[str, Any]


class MetricDict(TypedDict):
    mean: float | None  # over the pairs where the figure is defined; null: none
    se: float | None  # sample standard deviation (ddof=1) / sqrt(n); null when n < 2
    count: int


class PrefsWorstDict(TypedDict):
    line: int
    id: str | int | None
    margin: float
    loss: float | None


class PrefsSummaryDict(TypedDict):
    schema_version: int
    kind: Literal["prefs_summary"]
    policy: PrefsModelDict
    reference: PrefsModelDict | None  # null: the policy is its own reference (or the loss needs none)
    versions: VersionsDict  # device: the policy's, then the reference's when it is another
    loss_type: str
    beta: float
    gamma: float | None  # simpo's target margin; null for the other losses
    input: str
    output: str | None
    pairs: int
    skipped_count: int
    skipped: list[SkippedDict]
    # TRL's metric names, as DPOTrainer logs them, over every pair (the mean and its standard error)
    metrics: dict[str, MetricDict]
    loss: MetricDict
    checks: dict[str, int]  # pairs where each check fired (length-bias: the pairs on the longer side when it fires)
    flagged: int  # pairs with at least one finding of their own
    length_bias: PrefsLengthBiasDict
    most_negative_margins: list[PrefsWorstDict]
    batching: BatchingDict
    notes: list[str]
