"""``diff --input``: a data set through both models as a job for the one runner (``diff_job``), its summary and
its lines read back for ``resume``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from ce_inspect.contract import (
    DIFF_SCHEMA_VERSION,
    DiffLineDict,
    VersionsDict,
    WireObject,
    conform,
    versions,
)
from ce_inspect.contract.diff import DiffBootstrapDict, DiffDatasetDict, WorstExampleDict
from ce_inspect.data import encode_whole
from ce_inspect.dataset import (
    BatchSettings,
    BatchStats,
    DatasetRun,
    ExampleStats,
    Job,
    Progress,
    Skipped,
    as_loaded,
    check_resume_settings,
    fingerprint_targets,
    line_settings,
)
from ce_inspect.diff.compare import check_same_tokens, diff_encoded
from ce_inspect.diff.figures import DiffResult, DiffSummary, TokenFigures
from ce_inspect.distributed import current_session
from ce_inspect.notebook import LineFrame
from ce_inspect.scoring import (
    ScoreOptions,
)
from ce_inspect.stats import bootstrap_stderrs
from ce_inspect.text import Encoded, Layout

if TYPE_CHECKING:
    from ce_inspect.dataset import Job
    from ce_inspect.model import LoadedModel

# --- data sets: `batch`'s runner with a two-model score function and this report --------------------------


def diff_job(
    ref: LoadedModel, cand: LoadedModel, options: ScoreOptions, worst: int, *, bootstrap: int = 0, seed: int = 0
) -> Job:
    """``diff --input``'s job for the one runner: both models on the same tokens, one line of KL, ΔNLL and top-1
    agreement per example, the lines read back for ``resume`` and the torchrun merge. ``bootstrap``: the
    resamples of the data-set means' standard errors (0: none), drawn from ``seed``."""
    return Job(
        command="diff",
        make_report=lambda scan: DiffReport(ref, cand, scan, worst, options, bootstrap=bootstrap, seed=seed),
        score=lambda examples: diff_encoded(ref, cand, examples, options),
        parse=diff_line_stats,
        counts_resumed=False,  # diff's summary has no count of resumed examples
    )


def record_encoder(ref_lm: LoadedModel, cand_lm: LoadedModel, layout: Layout) -> Callable[[Any], Encoded]:
    """Record -> the reference's example, after checking the candidate's tokenizer lays out the same tokens
    (a record where they differ is an invalid record: it stops the run, or is skipped with --skip-invalid).
    Every record is encoded as ``batch`` encodes it, whole: diff scores no windows."""

    def encoder(record: Any) -> Encoded:
        ref = encode_whole(ref_lm, record, layout, "diff")
        if cand_lm.tokenizer is not ref_lm.tokenizer:
            cand = encode_whole(cand_lm, record, layout, "diff")
            check_same_tokens(ref, cand, ref_lm.tokenizer, cand_lm.tokenizer)
        return ref

    return encoder


@dataclass(frozen=True)
class DiffDatasetSummary(WireObject[DiffDatasetDict], LineFrame):
    schema_version: ClassVar[int] = DIFF_SCHEMA_VERSION
    view: ClassVar[str] = "diff_summary"
    kind: ClassVar[str] = "diff_summary"

    reference: dict[str, str]
    candidate: dict[str, str]
    versions: VersionsDict  # the reference's device, then the candidate's when it is another
    input: str
    output: str | None
    examples: int
    skipped: tuple[Skipped, ...]
    summary: DiffSummary | None  # None when no example was scored
    worst_by_kl: tuple[WorstExampleDict, ...]
    worst_by_dnll: tuple[WorstExampleDict, ...]
    batching: BatchStats
    notes: tuple[str, ...] = ()
    bootstrap: DiffBootstrapDict | None = None  # with ``bootstrap`` resamples

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


class DiffReport:
    """``run_scan``'s report for ``diff``: each example's diff document as its line, then the data-set
    summary (token-weighted statistics over every scored token, and the worst examples by KL and ΔNLL)."""

    def __init__(
        self,
        ref_lm: LoadedModel,
        cand_lm: LoadedModel,
        scan: Any,
        worst: int,
        options: ScoreOptions | None = None,
        *,
        bootstrap: int = 0,
        seed: int = 0,
    ) -> None:
        self.written = diff_line_settings(ref_lm, cand_lm, scan.layout, options or ScoreOptions(), scan.fields)
        if scan.resume is not None:  # before any line is written: a changed model or option changes nothing
            check_resume_settings(scan.resume, self.written)
        self.ref = {"model": ref_lm.name, "device": ref_lm.device, "dtype": ref_lm.dtype}
        self.cand = {"model": cand_lm.name, "device": cand_lm.device, "dtype": cand_lm.dtype}
        self.versions = versions(ref_lm.device, cand_lm.device)
        self.scan, self.worst = scan, worst
        self.tokens: list[TokenFigures] = []
        self.examples: list[WorstExampleDict] = []
        self.skipped: list[Any] = []
        self.notes: dict[str, None] = {}
        self.shared_vocab = 0
        self.resamples, self.seed = bootstrap, seed

    def line(self, entry: Any, result: DiffResult) -> DiffLineDict:
        d: dict[str, Any] = dict(result.to_dict())
        line = {"schema_version": d.pop("schema_version"), "id": entry.id, "line": entry.line, **d}
        return {**line, "settings": self.written}  # type: ignore[typeddict-item]

    def add(self, entry: Any, result: DiffResult) -> None:
        s = result.summary
        example = _worst_entry(entry.line, entry.id, s.count, s.kl_mean, s.dnll_mean, s.same_top1_pct)
        self._add(ResumedDiff([t.figures() for t in result.tokens], example, s.shared_vocab, result.notes))

    def resumed(self, entry: Any) -> None:
        self._add(entry.done.payload)  # read back from the line by ``diff_line_stats``

    def _add(self, figures: ResumedDiff) -> None:
        self.tokens.extend(figures.tokens)
        self.shared_vocab = figures.shared_vocab
        self.notes.update((n, None) for n in figures.notes if "vocabularies differ" in n)
        self.examples.append(figures.example)

    def skip(self, skipped: Any) -> None:
        self.skipped.append(skipped)

    def finish(self, *, output: str | None, batching: Any) -> DiffDatasetSummary:
        def worst(key: str) -> tuple[WorstExampleDict, ...]:
            return tuple(sorted(self.examples, key=lambda e: (-e[key], e["line"]))[: self.worst])  # type: ignore[literal-required]

        return DiffDatasetSummary(
            reference=self.ref,
            candidate=self.cand,
            versions=self.versions,
            input=self.scan.name,
            output=output,
            examples=len(self.examples),
            skipped=tuple(self.skipped),
            summary=DiffSummary.of(self.tokens, self.shared_vocab) if self.tokens else None,
            worst_by_kl=worst("kl_mean"),
            worst_by_dnll=worst("dnll_mean"),
            batching=batching,
            notes=(*self.notes, *(self.scan.info.notes if self.scan.info else ())),
            bootstrap=self.bootstrapped(),
        )

    def bootstrapped(self) -> DiffBootstrapDict | None:
        """The token-weighted means' standard errors over resamples of the examples (None without ``bootstrap``)."""
        if not self.resamples:
            return None
        counts = [float(e["count"]) for e in self.examples]
        ratios = {
            name: ([e[name] * e["count"] for e in self.examples], counts)  # type: ignore[literal-required]
            for name in ("dnll_mean", "kl_mean")
        }
        se = bootstrap_stderrs(ratios, self.resamples, self.seed)
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "dnll_mean_stderr": se["dnll_mean"],
            "kl_mean_stderr": se["kl_mean"],
        }


def _worst_entry(
    line: int, rid: str | int | None, count: int, kl_mean: float, dnll_mean: float, same_top1_pct: float
) -> WorstExampleDict:
    return {
        "line": line,
        "id": rid,
        "count": count,
        "kl_mean": kl_mean,
        "dnll_mean": dnll_mean,
        "same_top1_pct": same_top1_pct,
    }


# --- resume: a diff line read back into what the data-set summary needs -----------------------------------


@dataclass(frozen=True)
class ResumedDiff:
    """What ``DiffReport`` sums of one example: every token's figures (the data-set statistics are
    token-weighted, quantiles included), its worst-example entry, the shared vocabulary and the notes."""

    tokens: Sequence[TokenFigures]
    example: WorstExampleDict
    shared_vocab: int
    notes: Sequence[str]


def diff_line_settings(
    ref_lm: LoadedModel, cand_lm: LoadedModel, layout: Layout, options: ScoreOptions, fields: Any = None
) -> dict[str, Any]:
    """``batch.line_settings`` of the reference (model, fingerprint, dtype, every layout and scoring option,
    the record fields) plus the candidate's model, fingerprint and dtype as ``model_b``, ... ."""
    settings = line_settings(ref_lm, layout, options, fields)
    cand = line_settings(cand_lm, layout, options, fields)
    return {
        **settings,
        "model_b": cand["model"],
        "model_b_fingerprint": cand["model_fingerprint"],
        "dtype_b": cand["dtype"],
    }


def diff_line_stats(obj: Any, worst: int) -> tuple[Any, list[Any]]:
    """``batch.read_resume``'s parser for ``diff --input`` lines: the line, checked key for key against
    ``DiffLineDict``, as the scan's ``ExampleStats`` (the reference's figures, the scored targets'
    fingerprint) carrying a ``ResumedDiff``. ``worst`` is unused: diff's summary keeps no worst tokens."""
    if not isinstance(obj, dict) or obj.get("schema_version") != DIFF_SCHEMA_VERSION or obj.get("kind") != "diff":
        raise ValueError(f"not a schema_version {DIFF_SCHEMA_VERSION} diff document")
    conform(DiffLineDict, obj)
    tokens, summary = obj["tokens"], obj["summary"]
    if obj["line"] < 1 or not tokens:
        raise ValueError("no input line number or no scored tokens")
    if summary["count"] != len(tokens):
        raise ValueError(f"summary counts {summary['count']} tokens but {len(tokens)} are listed")
    figures = [
        TokenFigures(
            t["kl"],
            t["kl_reverse"],
            t["dnll"],
            t["dp"],
            t["same_top1"],
            t["ref"]["loss"],
            t["cand"]["loss"],
            -t["ref"]["logprob"],
            -t["cand"]["logprob"],
        )
        for t in tokens
    ]
    line, rid = obj["line"], obj["id"]
    example = _worst_entry(
        line, rid, summary["count"], summary["kl_mean"], summary["dnll_mean"], summary["same_top1_pct"]
    )
    ref = obj["reference"]["summary"]
    stats = ExampleStats(
        line=line,
        id=rid,
        count=len(tokens),
        loss_sum=math.fsum(f.ref_loss for f in figures),
        mean=ref["mean"],
        nll_sum=math.fsum(f.ref_nll for f in figures),
        greedy_hits=ref["greedy_hits"],
        sequence_tokens=obj["layout"]["sequence_tokens"],
        fingerprint=fingerprint_targets([(t["index"], t["token_id"]) for t in tokens]),
        payload=ResumedDiff(figures, example, summary["shared_vocab"], obj["notes"]),
    )
    return stats, []


# --- the library's entry point -----------------------------------------------------------------------------


def diff_dataset(
    ref: LoadedModel | Callable[[], LoadedModel],
    cand: LoadedModel | Callable[[], LoadedModel],
    data: str | Path,
    output: str | Path | None = None,
    *,
    layout: Layout | None = None,
    options: ScoreOptions | None = None,
    settings: BatchSettings | None = None,
    skip_invalid: bool = False,
    resume: bool = False,
    force: bool = False,
    limit: int | None = None,
    stream: IO[str] | None = None,
    progress: Progress | None = None,
    notes: Callable[[str], None] | None = None,
    data_label: str = "the data",
    describe: bool = True,
) -> DiffDatasetSummary:
    """Every record of ``data`` through both models, as ``ce-inspect diff --input`` compares them: one JSON
    line per example into ``output`` and the data-set summary returned (resume, force, torchrun: as
    ``score_dataset``). Both tokenizers must give each record the same tokens. ``data_label`` names the data in
    messages; ``describe``: tell ``notes`` how the data is read; ``limit``: only the first ``limit`` records."""
    settings, options, layout = settings or BatchSettings(), options or ScoreOptions(), layout or Layout()
    with DatasetRun(
        data,
        output,
        command="diff",
        parse=diff_line_stats,
        worst=settings.worst,
        resume=resume,
        force=force,
        limit=limit,
        data_label=data_label,
        session=current_session(),
        notes=notes,
        describe=describe,
    ) as run:
        run.refuse_unreadable_first(skip_invalid)
        ref, cand = as_loaded(ref), as_loaded(cand)
        scan = run.scan(
            ref, layout=layout, options=options, skip_invalid=skip_invalid, encoder=record_encoder(ref, cand, layout)
        )
        job = diff_job(ref, cand, options, settings.worst, bootstrap=settings.bootstrap, seed=settings.seed)
        return run.run(ref, scan, job, options=options, settings=settings, stream=stream, progress=progress)
