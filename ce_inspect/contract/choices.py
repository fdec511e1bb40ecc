"""choices's JSON documents: one line per question (each choice's figures, the predictions) and the summary."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

from typing import Any, Literal, NotRequired

from ce_inspect.contract.batch import BatchingDict, Id, SkippedDict
from ce_inspect.contract.layout import LayoutDict
from ce_inspect.contract.run import TokenDict
from ce_inspect.contract.versions import VersionsDict
from ce_inspect.contract.wire import TypedDict

CHOICES_SCHEMA_VERSION = 1


class ChoiceDict(TypedDict):
    index: int
    text: str  # the choice as given
    chars: int  # len(text): the denominator of lm-eval's acc_norm
    count: int  # scored tokens
    sum_logprob: float  # the choice's log-likelihood given the context (lm-eval's loglikelihood)
    mean_logprob: float  # sum_logprob / count
    norm_logprob: float  # sum_logprob / chars (what acc_norm compares)
    greedy_hits: int
    is_greedy: bool  # every scored token is the model's most likely one (lm-eval's is_greedy)
    tokens: list[TokenDict]  # keys as in `run`
    layout: LayoutDict
    notes: list[str]
    scored_bytes: NotRequired[int]  # UTF-8 bytes of the scored tokens (the summary's bits per byte)
    # With --mutual-info: the choice's log-likelihood after an empty context (lm-eval's ("", choice) request),
    # and sum_logprob less it (what acc_mutual_info compares).
    unconditional_logprob: NotRequired[float]
    mutual_info: NotRequired[float]


class ChoicesLineDict(TypedDict):
    """One line of ``choices``: a question."""

    schema_version: int
    kind: Literal["choices"]
    id: Id
    line: int
    model: str
    device: str
    dtype: str
    versions: VersionsDict
    label: int  # the right choice's index
    pred: int  # argmax of sum_logprob (first on a tie, as numpy's argmax)
    pred_norm: int  # argmax of norm_logprob
    correct: bool
    correct_norm: bool
    choices: list[ChoiceDict]
    pred_mutual_info: NotRequired[int]  # with --mutual-info: argmax of mutual_info
    correct_mutual_info: NotRequired[bool]
    # The context as the model read it before the first choice: the tokens ahead of its first scored one, joined
    # (the prompt with its template, special tokens included); lines written before it lack it.
    context: NotRequired[str]
    # ``batch.line_settings`` plus ``choices_tokenization``: ``--resume`` refuses to mix lines whose settings differ.
    settings: dict[str, Any]


class ChoicesSummaryDict(TypedDict):
    schema_version: int
    kind: Literal["choices_summary"]
    model: str
    device: str
    dtype: str
    versions: VersionsDict
    input: str
    output: str | None
    tokenization: str  # lm-eval, separate, joint, trl or chat
    questions: int  # scored (this run and resumed)
    resumed: int
    choices: int
    correct: int
    correct_norm: int
    acc: float | None  # null when no question was scored
    acc_stderr: float | None  # lm-eval's mean_stderr: sample std (ddof=1) / sqrt(n); null below two questions
    acc_norm: float | None
    acc_norm_stderr: float | None
    # With --mutual-info (every question scored with it): lm-eval's acc_mutual_info and its mean_stderr.
    correct_mutual_info: NotRequired[int]
    acc_mutual_info: NotRequired[float]
    acc_mutual_info_stderr: NotRequired[float | None]
    # The gold choices' -sum_logprob / ln 2 / their scored_bytes, over every question (lm-eval's bits_per_byte of
    # the right answers); left out when a line lacks its bytes.
    bits_per_byte: NotRequired[float]
    skipped_count: int
    skipped: list[SkippedDict]
    batching: BatchingDict
    notes: list[str]
