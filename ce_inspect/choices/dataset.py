"""``choices``: a data set of questions as a job for the one runner (``choices_job``), its summary (acc and
acc_norm with lm-eval's standard errors), its lines read back for ``resume`` and the torchrun merge."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

from ce_inspect.choices.encoding import LM_EVAL, choices_layout, encode_question
from ce_inspect.choices.figures import QuestionResult, mean_stderr, score_questions
from ce_inspect.contract import (
    CHOICES_SCHEMA_VERSION,
    ChoicesLineDict,
    ChoicesSummaryDict,
    bits_per_byte,
    conform,
)
from ce_inspect.data import CHOICES
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
from ce_inspect.notebook import LineFrame
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Layout

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


def effective_tokenization(layout: Layout, tokenization: str | None) -> str:
    """How the choices were tokenized, as the summary and each line's settings name it."""
    return "chat" if layout.chat else (tokenization or LM_EVAL)


def choices_job(
    lm: LoadedModel, options: ScoreOptions, settings: BatchSettings, tokenization: str, *, mutual_info: bool = False
) -> Job:
    """``choices``'s job: every choice of a batch of questions through the scorer, one line per question."""
    return Job(
        command="choices",
        make_report=lambda scan: ChoicesReport(lm, scan, options, tokenization, mutual_info=mutual_info),
        score=lambda questions: score_questions(lm, questions, options, padding_side=settings.padding_side),
        parse=choices_line_stats,
    )


@dataclass(frozen=True)
class Outcome:
    """What the summary needs of one question (also read back from its line)."""

    correct: bool
    correct_norm: bool
    choices: int
    gold_nll: float = 0.0  # -sum_logprob of the gold choice
    gold_bytes: int | None = None  # its scored_bytes (None: a line without them)
    correct_mutual_info: bool | None = None  # None: scored without ``mutual_info``

    @classmethod
    def of(cls, line: Any) -> Outcome:
        """From a question's line (``ChoicesLineDict``): the gold choice's NLL and bytes."""
        choices = line["choices"]
        gold = choices[line["label"]]
        nll, n_bytes = -gold["sum_logprob"], gold.get("scored_bytes")
        return cls(line["correct"], line["correct_norm"], len(choices), nll, n_bytes, line.get("correct_mutual_info"))


@dataclass(frozen=True)
class ChoicesSummary(LineFrame):
    view: ClassVar[str] = "choices_summary"

    model: dict[str, str]
    versions: dict[str, str]  # a VersionsDict: ce-inspect, torch, transformers, Python, the device's name
    input: str
    output: str | None
    tokenization: str
    outcomes: tuple[Outcome, ...]
    resumed: int
    skipped: tuple[Any, ...]
    batching: Any  # dataset.BatchStats
    notes: tuple[str, ...] = ()

    @property
    def questions(self) -> int:
        return len(self.outcomes)

    @property
    def acc(self) -> float | None:
        return sum(o.correct for o in self.outcomes) / self.questions if self.outcomes else None

    @property
    def acc_norm(self) -> float | None:
        return sum(o.correct_norm for o in self.outcomes) / self.questions if self.outcomes else None

    def mutual_info(self) -> dict[str, Any]:
        """acc_mutual_info and its standard error, when every question was scored with ``mutual_info``."""
        if not self.outcomes or any(o.correct_mutual_info is None for o in self.outcomes):
            return {}
        hits = [float(bool(o.correct_mutual_info)) for o in self.outcomes]
        return {
            "correct_mutual_info": int(sum(hits)),
            "acc_mutual_info": sum(hits) / len(hits),
            "acc_mutual_info_stderr": mean_stderr(hits),
        }

    def bits_per_byte(self) -> dict[str, float]:
        n_bytes = [o.gold_bytes for o in self.outcomes]
        if not n_bytes or any(b is None for b in n_bytes):
            return {}
        figure = bits_per_byte(math.fsum(o.gold_nll for o in self.outcomes), sum(b or 0 for b in n_bytes))
        return {"bits_per_byte": figure} if figure is not None else {}

    def to_dict(self) -> ChoicesSummaryDict:
        acc = [float(o.correct) for o in self.outcomes]
        norm = [float(o.correct_norm) for o in self.outcomes]
        return {
            "schema_version": CHOICES_SCHEMA_VERSION,
            "kind": "choices_summary",
            "model": self.model["model"],
            "device": self.model["device"],
            "dtype": self.model["dtype"],
            "versions": dict(self.versions),  # type: ignore[typeddict-item]
            "input": self.input,
            "output": self.output,
            "tokenization": self.tokenization,
            "questions": self.questions,
            "resumed": self.resumed,
            "choices": sum(o.choices for o in self.outcomes),
            "correct": sum(o.correct for o in self.outcomes),
            "correct_norm": sum(o.correct_norm for o in self.outcomes),
            "acc": self.acc,
            "acc_stderr": mean_stderr(acc),
            "acc_norm": self.acc_norm,
            "acc_norm_stderr": mean_stderr(norm),
            **self.mutual_info(),
            **self.bits_per_byte(),
            "skipped_count": len(self.skipped),
            "skipped": [s.to_dict() for s in self.skipped],
            "batching": self.batching.to_dict(),
            "notes": list(self.notes),
        }


def context_text(result: QuestionResult) -> str:
    """The question's context as the model read it before its first choice: the tokens ahead of that choice's
    first scored one, joined as the lines show tokens (special tokens and a chat template's text included)."""
    first = result.choices[0].result
    start = min(t.index for t in first.tokens)
    return "".join(s.token for s in first.sequence if s.index < start)


class ChoicesReport:
    """``run_scan``'s report for ``choices``: a question's line, then the accuracies over every question."""

    def __init__(
        self, lm: LoadedModel, scan: Any, options: ScoreOptions, tokenization: str, *, mutual_info: bool = False
    ) -> None:
        self.written = {**line_settings(lm, scan.layout, options, scan.fields), "choices_tokenization": tokenization}
        self.written["mutual_info"] = mutual_info  # lines from before the option (no key) resume as False
        if scan.resume is not None:  # before any line is written: a changed model or option changes nothing
            check_resume_settings(scan.resume, self.written)
        self.model = {"model": lm.name, "device": lm.device, "dtype": lm.dtype}
        self.versions = lm.versions
        self.scan, self.tokenization = scan, tokenization
        self.outcomes: list[Outcome] = []
        self.skipped: list[Any] = []
        self.resumed_count = 0

    def line(self, entry: Any, result: QuestionResult) -> ChoicesLineDict:
        d = result.to_dict()
        line = {"schema_version": d.pop("schema_version"), "kind": d.pop("kind"), "id": entry.id, "line": entry.line}
        return {**line, **d, "context": context_text(result), "settings": self.written}  # type: ignore[typeddict-item]

    def add(self, entry: Any, result: QuestionResult) -> None:
        gold = result.choices[result.label]
        correct, norm = result.pred == result.label, result.pred_norm == result.label
        nll, n_bytes = -gold.sum_logprob, gold.result.summary.scored_bytes
        mi = result.pred_mutual_info
        self.outcomes.append(
            Outcome(correct, norm, len(result.choices), nll, n_bytes, None if mi is None else mi == result.label)
        )

    def resumed(self, entry: Any) -> None:
        self.outcomes.append(entry.done.payload)  # read back by ``choices_line_stats``
        self.resumed_count += 1

    def skip(self, skipped: Any) -> None:
        self.skipped.append(skipped)

    def finish(self, *, output: str | None, batching: Any) -> ChoicesSummary:
        return ChoicesSummary(
            model=self.model,
            versions=self.versions,
            input=self.scan.name,
            output=output,
            tokenization=self.tokenization,
            outcomes=tuple(self.outcomes),
            resumed=self.resumed_count,
            skipped=tuple(self.skipped),
            batching=batching,
            notes=self.scan.info.notes if self.scan.info is not None else (),
        )


def choices_line_stats(obj: Any, worst: int) -> tuple[ExampleStats, list[Any]]:
    """The runner's parser for ``choices`` lines: the line checked key for key against ``ChoicesLineDict``,
    as ``ExampleStats`` over every choice's tokens (laid end to end, as ``Question`` lays them) carrying the
    question's ``Outcome``. ``worst`` is unused: the summary keeps no worst tokens."""
    if not isinstance(obj, dict) or obj.get("schema_version") != CHOICES_SCHEMA_VERSION or obj.get("kind") != "choices":
        raise ValueError(f"not a schema_version {CHOICES_SCHEMA_VERSION} choices document")
    conform(ChoicesLineDict, obj)
    choices = obj["choices"]
    if obj["line"] < 1 or len(choices) < 2 or not all(c["tokens"] and c["count"] == len(c["tokens"]) for c in choices):
        raise ValueError("no input line number, fewer than two choices, or a choice without its scored tokens")
    targets, at = [], 0
    for c in choices:
        targets += [(at + t["index"], t["token_id"]) for t in c["tokens"]]
        at += c["layout"]["sequence_tokens"]
    tokens = [t for c in choices for t in c["tokens"]]
    loss_sum = math.fsum(t["loss"] for t in tokens)
    stats = ExampleStats(
        line=obj["line"],
        id=obj["id"],
        count=len(tokens),
        loss_sum=loss_sum,
        mean=loss_sum / len(tokens),
        nll_sum=-math.fsum(t["logprob"] for t in tokens),
        greedy_hits=sum(t["greedy"] for t in tokens),
        sequence_tokens=at,
        fingerprint=fingerprint_targets(targets),
        payload=Outcome.of(obj),
    )
    return stats, []


def choices_dataset(
    lm: LoadedModel | Callable[[], LoadedModel],
    data: str | Path,
    output: str | Path | None = None,
    *,
    layout: Layout | None = None,
    tokenization: str | None = None,
    mutual_info: bool = False,
    options: ScoreOptions | None = None,
    settings: BatchSettings | None = None,
    skip_invalid: bool = False,
    resume: bool = False,
    force: bool = False,
    stream: IO[str] | None = None,
    tee: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    notes: Callable[[str], None] | None = None,
) -> ChoicesSummary:
    """Every question of ``data`` (``{"prompt", "choices", "label"}``, lm-eval's ``query``/``context`` and
    ``gold``, or chat ``messages`` as the context) through ``lm``, as ``ce-inspect choices`` scores it: one JSON
    line per question into ``output`` and the summary returned (resume, force, torchrun: as ``score_dataset``).
    ``tokenization`` None: exactly lm-eval's ``loglikelihood`` request; ``separate``, ``joint`` or ``trl``:
    ``run``'s pair layouts without EOS; ``layout.chat``: each choice as the assistant's answer. ``mutual_info``:
    each choice after an empty context too, for lm-eval's ``acc_mutual_info``. ``tee`` sees every line written."""
    settings, options = settings or BatchSettings(), options or ScoreOptions()
    layout = choices_layout(layout or Layout(), tokenization, mutual_info=mutual_info)
    with DatasetRun(
        data,
        output,
        command="choices",
        parse=choices_line_stats,
        worst=settings.worst,
        resume=resume,
        force=force,
        format=CHOICES,
        session=current_session(),
        notes=notes,
    ) as run:
        lm = as_loaded(lm)
        scan = run.scan(
            lm,
            layout=layout,
            options=options,
            skip_invalid=skip_invalid,
            encoder=lambda record: encode_question(lm, record, layout, tokenization, mutual_info=mutual_info),  # type: ignore[arg-type,return-value]
        )
        job = choices_job(lm, options, settings, effective_tokenization(layout, tokenization), mutual_info=mutual_info)
        return run.run(lm, scan, job, options=options, settings=settings, stream=stream, tee=tee, progress=progress)


__all__ = [
    "ChoicesReport",
    "ChoicesSummary",
    "Outcome",
    "choices_dataset",
    "choices_job",
    "choices_line_stats",
    "context_text",
    "effective_tokenization",
]
