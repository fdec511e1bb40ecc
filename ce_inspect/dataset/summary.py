"""The per-example figures and the data-set summary: ``ExampleStats`` of each scored example, the worst
examples and tokens, the skipped records, how the run batched (``BatchStats``), and ``SummaryBuilder``,
which sums them up in input order into a ``DatasetSummary``.

The data-set figures are what training reports over the flattened data set: the token-weighted mean is
``sum(loss) / scored tokens``, i.e. ``CrossEntropyLoss(reduction="mean")`` over every example's shifted
logits and labels concatenated; the example-weighted mean averages the per-example means instead.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ce_inspect.contract import (
    NOT_ON_WIRE,
    SCHEMA_VERSION,
    BatchingDict,
    BatchSummaryDict,
    BootstrapDict,
    PerByteFigures,
    ScoreResult,
    SkippedDict,
    VersionsDict,
    WireObject,
    WorstExampleDict,
    WorstTokenDict,
    perplexity,
)
from ce_inspect.data import DataInfo
from ce_inspect.dataset.filter import FilterCounts
from ce_inspect.display import histogram
from ce_inspect.notebook import LineFrame
from ce_inspect.stats import bootstrap_stderrs, mean_stderr

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel

DEFAULT_WORST = 10


@dataclass(frozen=True)
class WorstToken(WireObject[WorstTokenDict]):
    """One scored token, located in the data set, for the list of highest losses."""

    line: int
    id: str | int | None
    index: int
    token: str
    token_id: int
    segment: str
    loss: float
    prob: float
    rank: int


def fingerprint_targets(targets: Sequence[tuple[int, int]]) -> str:
    """A digest of the (position, token id) of every scored target: what resume compares with the input.
    Stable across processes and versions of Python, so an output line can carry it (``audit``'s do)."""
    import hashlib

    return hashlib.blake2b(json.dumps([list(t) for t in targets]).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class ExampleStats(WireObject[WorstExampleDict]):
    """What the data-set summary needs of one scored example (also rebuilt from an output line); on the wire
    as one of the worst examples."""

    wire_names: ClassVar[Mapping[str, str]] = {"sum": "loss_sum"}

    line: int
    id: str | int | None
    count: int
    loss_sum: float
    mean: float
    nll_sum: float = field(metadata=NOT_ON_WIRE)
    greedy_hits: int = field(metadata=NOT_ON_WIRE)
    sequence_tokens: int = field(metadata=NOT_ON_WIRE)
    fingerprint: str = field(metadata=NOT_ON_WIRE)  # fingerprint_targets of its scored targets
    #: What another command's report needs to rebuild its summary from the line (``diff``: every token's
    #: figures); None for ``batch``, whose summary needs only the fields above.
    payload: Any = field(default=None, compare=False, repr=False, metadata=NOT_ON_WIRE)
    #: The summary's ``scored_bytes`` and ``scored_words`` (None on a line written without them).
    scored_bytes: int | None = field(default=None, metadata=NOT_ON_WIRE)
    scored_words: int | None = field(default=None, metadata=NOT_ON_WIRE)
    #: The scored tokens' summed entropy (None without ``entropy``).
    entropy_sum: float | None = field(default=None, metadata=NOT_ON_WIRE)

    @classmethod
    def from_result(cls, line: int, rid: str | int | None, result: ScoreResult) -> ExampleStats:
        s = result.summary
        return cls(
            line=line,
            id=rid,
            count=s.count,
            loss_sum=s.sum,
            mean=s.mean,
            nll_sum=-math.fsum(t.logprob for t in result.tokens),
            greedy_hits=s.greedy_hits,
            sequence_tokens=len(result.sequence),
            fingerprint=fingerprint_targets([(t.index, t.token_id) for t in result.tokens]),
            scored_bytes=s.scored_bytes,
            scored_words=s.scored_words,
            entropy_sum=s.mean_entropy * s.count if s.mean_entropy is not None else None,
        )


def worst_tokens_of(line: int, rid: str | int | None, result: ScoreResult, n: int) -> list[WorstToken]:
    top = heapq.nlargest(n, result.tokens, key=lambda t: t.loss)
    return [WorstToken(line, rid, t.index, t.token, t.token_id, t.segment, t.loss, t.prob, t.rank) for t in top]


@dataclass(frozen=True)
class Skipped(WireObject[SkippedDict]):
    line: int
    id: str | int | None
    reason: str


@dataclass
class BatchStats(WireObject[BatchingDict]):
    """How this run batched its work (resumed examples excluded)."""

    batch_size: int | None
    max_tokens: int | None
    padding_side: str
    batches: int = 0
    examples: int = 0
    sequence_tokens: int = 0  # real tokens run through the model
    padded_positions: int = 0  # rows x width summed over batches: what the forward passes computed
    seconds: float = 0.0

    @property
    def padding_fraction(self) -> float | None:
        if not self.padded_positions:
            return None
        return 1.0 - self.sequence_tokens / self.padded_positions

    @property
    def tokens_per_second(self) -> float | None:
        return self.sequence_tokens / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class DatasetSummary(PerByteFigures, WireObject[BatchSummaryDict], LineFrame):
    """The data-set figures. ``token_weighted_mean_loss`` is what a training step over the whole set reports."""

    schema_version: ClassVar[int] = SCHEMA_VERSION
    view: ClassVar[str] = "batch_summary"
    kind: ClassVar[str] = "batch_summary"

    model: str
    device: str
    dtype: str
    versions: VersionsDict  # ce-inspect, torch, transformers, Python and the device's name (``contract.versions``)
    input: str
    output: str | None
    examples: int  # scored examples, resumed ones included
    resumed: int  # of which were read back from the output file (--resume)
    scored_tokens: int
    loss_sum: float
    nll_sum: float = field(metadata=NOT_ON_WIRE)  # on the wire as ``mean_nll``
    example_weighted_mean_loss: float | None
    greedy_hits: int
    label_smoothing: float
    ignore_index: int
    worst_examples: tuple[ExampleStats, ...]
    worst_tokens: tuple[WorstToken, ...]
    skipped: tuple[Skipped, ...]
    batching: BatchStats
    data: DataInfo | None = None  # the file kind and record format read
    #: Per-example mean losses counted in round bins (``display.histogram``): the shape of the data set.
    example_loss_histogram: dict[str, list[Any]] = field(default_factory=lambda: histogram([]))
    #: The scored texts' bytes and words summed over the set; None when an example lacks them (a line
    #: read back from an older output), so that bits per byte never covers part of the set.
    scored_bytes: int | None = None
    scored_words: int | None = None
    filter: FilterCounts | None = None  # batch --keep-below/--keep-above: what each file received
    #: Standard errors: of the example-weighted mean (sample std / sqrt(n), null below two examples); of the
    #: token-weighted figures only with ``bootstrap`` (its resamples and seed), else None.
    example_weighted_mean_loss_stderr: float | None = None
    token_weighted_mean_loss_stderr: float | None = None
    mean_nll_stderr: float | None = None
    bits_per_byte_stderr: float | None = None
    bootstrap: BootstrapDict | None = None
    #: The token-weighted mean entropy of the model's distribution at the scored tokens (nats), with ``entropy``.
    mean_entropy: float | None = None

    @property
    def nll_total(self) -> float:
        """The set's summed NLL: bits per byte is ``nll_sum / ln 2 / scored_bytes`` over the whole set."""
        return self.nll_sum

    @property
    def notes(self) -> tuple[str, ...]:
        """What the reader of the figures should know of the data they cover (a ``limit`` that cut it, answers
        glued to their prompts)."""
        return self.data.notes if self.data is not None else ()

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    @property
    def token_weighted_mean_loss(self) -> float | None:
        """sum(loss) / scored tokens: CrossEntropyLoss(reduction='mean') over the flattened data set."""
        return self.loss_sum / self.scored_tokens if self.scored_tokens else None

    @property
    def mean_nll(self) -> float | None:
        """Token-weighted mean of -log p(target); equals the mean loss unless label smoothing is on."""
        return self.nll_sum / self.scored_tokens if self.scored_tokens else None

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.mean_nll) if self.mean_nll is not None else None


class SummaryBuilder:
    """Accumulates examples in input order; keeps only the ``worst`` highest examples and tokens."""

    def __init__(self, worst: int = DEFAULT_WORST, *, bootstrap: int = 0, seed: int = 0) -> None:
        self.worst = worst
        self.bootstrap, self.seed = bootstrap, seed
        self._counts: list[int] = []
        self._entropy: list[float | None] = []
        self.examples = 0
        self.resumed = 0
        self.tokens = 0
        self.greedy_hits = 0
        self._loss_sums: list[float] = []
        self._nll_sums: list[float] = []
        self._means: list[float] = []
        self._bytes: list[int | None] = []
        self._words: list[int | None] = []
        self._worst_examples: list[tuple[float, int, ExampleStats]] = []  # min-heap of (mean, -line, stats)
        self._worst_tokens: list[tuple[float, int, int, WorstToken]] = []  # min-heap of (loss, -line, -index, tok)
        self.skipped: list[Skipped] = []

    def add(self, stats: ExampleStats, *, resumed: bool = False) -> None:
        self.examples += 1
        self.resumed += resumed
        self.tokens += stats.count
        self.greedy_hits += stats.greedy_hits
        self._counts.append(stats.count)
        self._entropy.append(stats.entropy_sum)
        self._loss_sums.append(stats.loss_sum)
        self._nll_sums.append(stats.nll_sum)
        self._means.append(stats.mean)
        self._bytes.append(stats.scored_bytes)
        self._words.append(stats.scored_words)
        if self.worst:
            push_largest(self._worst_examples, (stats.mean, -stats.line, stats), self.worst)

    def add_tokens(self, tokens: Sequence[WorstToken]) -> None:
        if self.worst:
            for t in tokens:
                push_largest(self._worst_tokens, (t.loss, -t.line, -t.index, t), self.worst)

    def skip(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)

    def finish(
        self,
        lm: LoadedModel,
        *,
        input: str,
        output: str | None,
        label_smoothing: float,
        ignore_index: int,
        batching: BatchStats,
        data: DataInfo | None = None,
    ) -> DatasetSummary:
        return DatasetSummary(
            model=lm.name,
            device=lm.device,
            dtype=lm.dtype,
            versions=lm.versions,
            input=input,
            output=output,
            examples=self.examples,
            resumed=self.resumed,
            scored_tokens=self.tokens,
            loss_sum=math.fsum(self._loss_sums),
            nll_sum=math.fsum(self._nll_sums),
            example_weighted_mean_loss=math.fsum(self._means) / len(self._means) if self._means else None,
            greedy_hits=self.greedy_hits,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            worst_examples=tuple(item[-1] for item in sorted(self._worst_examples, reverse=True)),
            worst_tokens=tuple(item[-1] for item in sorted(self._worst_tokens, key=lambda x: x[:3], reverse=True)),
            skipped=tuple(self.skipped),
            batching=batching,
            data=data,
            example_loss_histogram=histogram(self._means),
            scored_bytes=total_or_none(self._bytes),
            scored_words=total_or_none(self._words),
            example_weighted_mean_loss_stderr=mean_stderr(self._means),
            mean_entropy=self.mean_entropy(),
            **self.bootstrapped(),
        )

    def mean_entropy(self) -> float | None:
        """sum of entropies / scored tokens; None unless every example carries its entropy."""
        if not self._entropy or any(e is None for e in self._entropy) or not self.tokens:
            return None
        return math.fsum(e for e in self._entropy if e is not None) / self.tokens

    def bootstrapped(self) -> dict[str, Any]:
        """The token-weighted figures' bootstrap standard errors and how they were drawn; {} without ``bootstrap``."""
        if not self.bootstrap:
            return {}
        ratios: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            "token_weighted_mean_loss_stderr": (self._loss_sums, self._counts),
            "mean_nll_stderr": (self._nll_sums, self._counts),
        }
        if total_or_none(self._bytes) is not None:
            bits = [nll / math.log(2) for nll in self._nll_sums]
            ratios["bits_per_byte_stderr"] = (bits, [b or 0 for b in self._bytes])
        figures: dict[str, Any] = bootstrap_stderrs(ratios, self.bootstrap, self.seed)
        return {**figures, "bootstrap": {"resamples": self.bootstrap, "seed": self.seed}}


def total_or_none(counts: Sequence[int | None]) -> int | None:
    """The sum of ``counts``; None when one of them is None (or there are none)."""
    if not counts or any(c is None for c in counts):
        return None
    return sum(c for c in counts if c is not None)


def push_largest(heap: list[Any], item: tuple[Any, ...], n: int) -> None:
    """Keep in the min-heap ``heap`` the ``n`` largest items pushed (``resume`` keeps its worst tokens so too)."""
    # Keys are unique (line, and index within a line), so tuples never compare their last element.
    if len(heap) < n:
        heapq.heappush(heap, item)
    elif item[:-1] > heap[0][:-1]:
        heapq.heapreplace(heap, item)


__all__ = [
    "BatchStats",
    "DEFAULT_WORST",
    "DatasetSummary",
    "ExampleStats",
    "Skipped",
    "SummaryBuilder",
    "WorstToken",
    "fingerprint_targets",
    "push_largest",
    "worst_tokens_of",
]
