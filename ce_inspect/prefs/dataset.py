"""``prefs``: a preference data set through the policy (and the reference) as a job for the one runner
(``prefs_job``), its summary under TRL's metric names, its lines read back for ``resume``; ``prefs_dataset``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from ce_inspect.contract import (
    PREFS_SCHEMA_VERSION,
    PrefsLineDict,
    PrefsSummaryDict,
    PrefsWorstDict,
    as_read_back,
    conform,
    versions,
)
from ce_inspect.data import Record, check_pair_record, encode_pair_record
from ce_inspect.dataset import (
    BatchSettings,
    DatasetRun,
    ExampleStats,
    Job,
    Progress,
    as_loaded,
    check_resume_settings,
    fingerprint_targets,
    line_settings,
)
from ce_inspect.distributed import current_session
from ce_inspect.errors import InputError, SequenceTooLongError, UsageError
from ce_inspect.notebook import LineFrame
from ce_inspect.prefs.export import check_export
from ce_inspect.prefs.export import export_ref as write_export
from ce_inspect.prefs.figures import (
    LOSS_TYPES,
    METRICS,
    PREFS_CHECKS,
    PairFigures,
    check_loss,
    metric,
    trl_metrics,
)
from ce_inspect.prefs.score import Loss, PairResult, pair_line, score_pairs
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import (
    LENGTH_BIAS,
    SIDES,
    Layout,
    LengthCounts,
    PreferenceExample,
    check_preference_options,
)

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


@dataclass(frozen=True)
class Tokenization:
    """How a pair becomes its two sequences: ``tokenization`` (trl, separate, joint), TRL's ``max_length`` and
    ``truncation_mode``."""

    tokenization: str = "trl"
    max_length: int | None = None
    truncation_mode: str = "keep_start"

    def __post_init__(self) -> None:
        check_preference_options(self.tokenization, self.max_length, self.truncation_mode)


# --- records -> pairs ------------------------------------------------------------------------------------


def _kind(record: Record) -> str:
    conversational = not isinstance(record.chosen, str)
    form = "implicit-prompt" if record.implicit_prompt else "explicit-prompt"
    return f"{'conversational' if conversational else 'plain'} {form}"


def pair_encoder(
    policy: LoadedModel, reference: LoadedModel | None, tokenization: Tokenization
) -> Callable[[Record], PreferenceExample]:
    """Record -> the pair's two sequences under the policy's tokenizer. Refused as an invalid record: a record
    that is not a pair, a pair in another format than the data set's first (TRL reads one format per data set),
    a sequence longer than the model's context, a reference whose tokenizer gives other tokens."""
    first: dict[str, Any] = {}

    def encoder(record: Record) -> PreferenceExample:
        check_pair_record(record)
        kind = _kind(record)
        first.setdefault("kind", (kind, record.line))
        if first["kind"][0] != kind:
            raise InputError(
                f"the data set mixes formats: this pair is {kind}, the first (line {first['kind'][1]}) is "
                f"{first['kind'][0]}; TRL reads one format per data set"
            )
        example = _encode(policy, record, tokenization)
        if reference is not None and reference.tokenizer is not policy.tokenizer:
            check_same_pair(example, _encode(reference, record, tokenization))
        return example

    return encoder


def _encode(lm: LoadedModel, record: Record, tokenization: Tokenization) -> PreferenceExample:
    example = encode_pair_record(
        lm.tokenizer,
        record,
        tokenization=tokenization.tokenization,
        max_length=tokenization.max_length,
        truncation_mode=tokenization.truncation_mode,
    )
    context = lm.context_length
    for name in SIDES:
        n = len(example.side(name))
        if context is not None and n > context:
            raise SequenceTooLongError(
                f"the {name} sequence is {n} tokens but the model's context is {context}",
                "pass `max_length` to cut it as TRL does",
            )
    return example


def check_same_pair(policy: PreferenceExample, reference: PreferenceExample) -> None:
    """Refuse a pair that the reference's tokenizer lays out otherwise than the policy's."""
    for name in SIDES:
        a, b = policy.side(name), reference.side(name)
        if a.input_ids != b.input_ids or a.labels != b.labels:
            at = next((i for i, (x, y) in enumerate(zip(a.input_ids, b.input_ids)) if x != y), None)
            where = f"from token {at} on" if at is not None else f"({len(a)} vs {len(b)} tokens)"
            raise InputError(
                f"the reference's tokenizer gives the {name} side other tokens than the policy's {where}; "
                "DPO compares both models on the same tokens: give a reference with the policy's tokenizer"
            )


# --- the report: a line per pair, the summary ----------------------------------------------------------


@dataclass(frozen=True)
class ResumedPair:
    """What the summary needs of one pair: its figures, its checks that fired, its line and id."""

    figures: PairFigures
    checks: tuple[str, ...]
    line: int
    id: str | int | None


def pair_lengths(pairs: Any) -> LengthCounts:
    """length-bias over the pairs: each pair's trained tokens, chosen against rejected (what the sums cover)."""
    counts = LengthCounts()
    for p in pairs:
        counts.add(p.figures.chosen_count, p.figures.rejected_count)
    return counts


@dataclass(frozen=True)
class PrefsDatasetSummary(LineFrame):
    view: ClassVar[str] = "prefs_summary"

    policy: dict[str, str]
    reference: dict[str, str] | None
    versions: dict[str, str]  # a VersionsDict: the policy's device, then the reference's when it is another
    loss: Loss
    input: str
    output: str | None
    pairs: tuple[ResumedPair, ...]
    skipped: tuple[Any, ...]
    worst: int
    batching: Any  # batch.BatchStats
    notes: tuple[str, ...] = ()
    checks: dict[str, int] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return trl_metrics([p.figures for p in self.pairs])

    @property
    def lengths(self) -> LengthCounts:
        return pair_lengths(self.pairs)

    @property
    def mean_loss(self) -> dict[str, Any]:
        return metric([p.figures.loss for p in self.pairs])

    def most_negative(self) -> list[PrefsWorstDict]:
        ranked = sorted(
            (p for p in self.pairs if p.figures.margin is not None), key=lambda p: (p.figures.margin, p.line)
        )
        return [
            {"line": p.line, "id": p.id, "margin": p.figures.margin, "loss": p.figures.loss}  # type: ignore[typeddict-item]
            for p in ranked[: self.worst]
        ]

    def to_dict(self) -> PrefsSummaryDict:
        return {
            "schema_version": PREFS_SCHEMA_VERSION,
            "kind": "prefs_summary",
            "policy": dict(self.policy),  # type: ignore[typeddict-item]
            "reference": dict(self.reference) if self.reference is not None else None,  # type: ignore[typeddict-item]
            "versions": dict(self.versions),  # type: ignore[typeddict-item]
            "loss_type": self.loss.loss_type,
            "beta": self.loss.beta,
            "gamma": self.loss.gamma if self.loss.loss_type == "simpo" else None,
            "input": self.input,
            "output": self.output,
            "pairs": len(self.pairs),
            "skipped_count": len(self.skipped),
            "skipped": [s.to_dict() for s in self.skipped],
            "metrics": {name: self.metrics[name] for name in METRICS},  # type: ignore[misc]
            "loss": self.mean_loss,  # type: ignore[typeddict-item]
            "checks": {name: self.checks.get(name, 0) for name in PREFS_CHECKS},
            "flagged": sum(1 for p in self.pairs if p.checks),
            "length_bias": self.lengths.to_dict(),  # type: ignore[typeddict-item]
            "most_negative_margins": self.most_negative(),
            "batching": self.batching.to_dict(),
            "notes": list(self.notes),
        }


def _model(lm: LoadedModel) -> dict[str, str]:
    return {"model": lm.name, "device": lm.device, "dtype": lm.dtype}


class PrefsReport:
    """``run_scan``'s report for ``prefs``: each pair's line, then the summary under TRL's metric names."""

    def __init__(self, policy: LoadedModel, reference: LoadedModel | None, scan: Any, loss: Loss, worst: int, written):
        self.written = written
        if scan.resume is not None:  # before any line is written: a changed model or option changes nothing
            check_resume_settings(scan.resume, written)
        self.policy, self.reference = _model(policy), (_model(reference) if reference is not None else None)
        self.versions = versions(policy.device, *((reference.device,) if reference is not None else ()))
        self.scan, self.loss, self.worst = scan, loss, worst
        self.pairs: list[ResumedPair] = []
        self.skipped: list[Any] = []

    def line(self, entry: Any, result: PairResult) -> PrefsLineDict:
        return pair_line(entry, result, self.written, self.versions)

    def add(self, entry: Any, result: PairResult) -> None:
        checks = tuple(f.check for f in result.findings)
        self.pairs.append(ResumedPair(result.figures, checks, entry.line, entry.id))

    def resumed(self, entry: Any) -> None:
        self.pairs.append(entry.done.payload)  # read back from the line by ``prefs_line_stats``

    def skip(self, skipped: Any) -> None:
        self.skipped.append(skipped)

    def finish(self, *, output: str | None, batching: Any) -> PrefsDatasetSummary:
        counts = {name: sum(1 for p in self.pairs if name in p.checks) for name in PREFS_CHECKS}
        # a data set's check: it counts the pairs on the longer side when it fires
        counts[LENGTH_BIAS] = pair_lengths(self.pairs).biased
        notes = []
        if self.loss.uses_reference and self.reference is None:
            notes.append(
                "no reference model: the policy is its own reference (TRL's DPOTrainer copies the model it starts "
                "from), so every reward and margin is 0 and the sigmoid loss is ln 2"
            )
        notes.extend(self.scan.info.notes if self.scan.info is not None else ())
        return PrefsDatasetSummary(
            policy=self.policy,
            reference=self.reference,
            versions=self.versions,
            loss=self.loss,
            input=self.scan.name,
            output=output,
            pairs=tuple(self.pairs),
            skipped=tuple(self.skipped),
            worst=self.worst,
            batching=batching,
            notes=tuple(notes),
            checks=counts,
        )


def prefs_settings(
    policy: LoadedModel,
    reference: LoadedModel | None,
    loss: Loss,
    tokenization: Tokenization,
    options: ScoreOptions,
    fields: Any = None,
) -> dict[str, Any]:
    """Everything a line depends on: ``batch.line_settings`` of the policy, the reference, the loss and the
    tokenization."""
    settings = line_settings(policy, Layout(), options, fields)
    ref = line_settings(reference, Layout(), options, fields) if reference is not None else None
    return as_read_back(
        {
            **settings,
            "ref_model": ref["model"] if ref else None,
            "ref_model_fingerprint": ref["model_fingerprint"] if ref else None,
            "ref_dtype": ref["dtype"] if ref else None,
            **asdict(loss),
            **{f"pairs_{k}": v for k, v in asdict(tokenization).items()},
        }
    )


# --- resume: a line read back ----------------------------------------------------------------------------


def prefs_line_stats(obj: Any, worst: int) -> tuple[ExampleStats, list[Any]]:
    """``read_resume``'s parser for ``prefs`` lines: the line, checked key for key against ``PrefsLineDict``, as
    the scan's ``ExampleStats`` (both sides' targets in the pair's one fingerprint) carrying a ``ResumedPair``."""
    if not isinstance(obj, dict) or obj.get("schema_version") != PREFS_SCHEMA_VERSION or obj.get("kind") != "prefs":
        raise ValueError(f"not a schema_version {PREFS_SCHEMA_VERSION} prefs document")
    conform(PrefsLineDict, obj)
    chosen, rejected = obj["chosen"], obj["rejected"]
    if obj["line"] < 1 or obj["loss_type"] not in LOSS_TYPES:
        raise ValueError("no input line number or an unknown loss type")
    for side in (chosen, rejected):
        if side["count"] != len(side["tokens"]):
            raise ValueError(f"a side counts {side['count']} tokens but {len(side['tokens'])} are listed")
    offset = chosen["sequence_tokens"]
    targets = [(t["index"], t["token_id"]) for t in chosen["tokens"]]
    targets += [(offset + t["index"], t["token_id"]) for t in rejected["tokens"]]
    tokens = [*chosen["tokens"], *rejected["tokens"]]
    figures = PairFigures(
        obj["loss_type"],
        obj["beta"],
        obj["chosen_logps"],
        obj["rejected_logps"],
        chosen["count"],
        rejected["count"],
        obj["ref_chosen_logps"],
        obj["ref_rejected_logps"],
        obj["settings"].get("gamma", 0.5),
    )
    loss_sum = math.fsum(t["loss"] for t in tokens)
    stats = ExampleStats(
        line=obj["line"],
        id=obj["id"],
        count=len(tokens),
        loss_sum=loss_sum,
        mean=loss_sum / len(tokens) if tokens else 0.0,
        nll_sum=-math.fsum(t["logprob"] for t in tokens),
        greedy_hits=sum(1 for t in tokens if t["rank"] == 1),
        sequence_tokens=offset + rejected["sequence_tokens"],
        fingerprint=fingerprint_targets(targets),
        payload=ResumedPair(figures, tuple(f["check"] for f in obj["findings"]), obj["line"], obj["id"]),
    )
    return stats, []


# --- the job and the library's entry point ---------------------------------------------------------------


def prefs_job(
    policy: LoadedModel,
    reference: LoadedModel | None,
    loss: Loss,
    written: dict[str, Any],
    worst: int,
    options: ScoreOptions,
    padding_side: str = "right",
) -> Job:
    """``prefs``'s job for the one runner: both sides of each pair through the policy and the reference, one
    line of TRL's figures per pair, the lines read back for ``resume`` and the torchrun merge."""
    return Job(
        command="prefs",
        make_report=lambda scan: PrefsReport(policy, reference, scan, loss, worst, written),
        score=lambda examples: score_pairs(
            policy, reference, examples, loss, options=options, padding_side=padding_side
        ),  # type: ignore[arg-type]
        parse=prefs_line_stats,
        counts_resumed=False,
    )


def prefs_dataset(
    policy: LoadedModel | Callable[[], LoadedModel],
    data: str | Path,
    output: str | Path | None = None,
    *,
    ref: LoadedModel | Callable[[], LoadedModel] | None = None,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    gamma: float = 0.5,
    tokenization: str = "trl",
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    settings: BatchSettings | None = None,
    skip_invalid: bool = False,
    resume: bool = False,
    force: bool = False,
    stream: IO[str] | None = None,
    tee: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    notes: Callable[[str], None] | None = None,
    data_label: str = "the data",
    describe: bool = True,
    export_ref: str | Path | None = None,
) -> PrefsDatasetSummary:
    """Every preference pair of ``data`` through the policy and the reference (``ref``; None: the policy is its
    own reference), as TRL's DPOTrainer prepares and scores it: one JSON line per pair into ``output`` and the
    data-set summary returned (resume, force, torchrun: as ``score_dataset``). ``export_ref``: also write the
    records with the reference's ``ref_chosen_logps`` and ``ref_rejected_logps`` added (``prefs.export_ref``).
    ``tee`` also sees every line written (the reports)."""
    check_loss(loss_type, beta, gamma)
    loss, tok = Loss(loss_type, beta, gamma), Tokenization(tokenization, max_length, truncation_mode)
    if ref is not None and not loss.uses_reference:
        raise UsageError(f"`ref` is not used by `loss_type` {loss_type}, which compares with no reference; drop it")
    if export_ref is not None:
        if not loss.uses_reference:
            raise UsageError(f"`export_ref`: `loss_type` {loss_type} scores no reference; nothing to export")
        check_export(export_ref, data, output, force)
    settings, options = settings or BatchSettings(), ScoreOptions()
    with DatasetRun(
        data,
        output,
        command="prefs",
        parse=prefs_line_stats,
        worst=settings.worst,
        resume=resume,
        force=force,
        data_label=data_label,
        session=current_session(),
        notes=notes,
        describe=describe,
    ) as run:
        policy = as_loaded(policy)
        reference = as_loaded(ref) if ref is not None else None
        scan = run.scan(
            policy,
            layout=Layout(),
            options=options,
            skip_invalid=skip_invalid,
            encoder=pair_encoder(policy, reference, tok),
        )  # type: ignore[arg-type]
        written = prefs_settings(policy, reference, loss, tok, options, scan.fields)
        job = prefs_job(policy, reference, loss, written, settings.worst, options, settings.padding_side)
        summary = run.run(
            policy, scan, job, options=options, settings=settings, stream=stream, tee=tee, progress=progress
        )
    if export_ref is not None and summary is not None:  # torchrun: rank 0 writes it
        write_export(summary, data, export_ref)
    return summary


__all__ = [
    "PrefsDatasetSummary",
    "PrefsReport",
    "ResumedPair",
    "Tokenization",
    "check_same_pair",
    "pair_encoder",
    "prefs_dataset",
    "prefs_job",
    "prefs_line_stats",
    "prefs_settings",
]
