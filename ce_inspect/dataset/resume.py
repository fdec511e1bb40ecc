"""Resume: what an existing output file already holds (``read_resume`` reads it back, line by line, and
drops a torn tail only if ce-inspect wrote it), the settings every output line carries
(``line_settings``) and the check that a run continues a file written with the same ones."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import as_read_back, batch_line_from_dict
from ce_inspect.data import Fields
from ce_inspect.dataset.summary import DEFAULT_WORST, ExampleStats, WorstToken, push_largest, worst_tokens_of
from ce_inspect.errors import ResumeError
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Layout

if TYPE_CHECKING:
    from ce_inspect.model import LoadedModel


@dataclass(frozen=True)
class ResumeState:
    """The complete lines of an output file; ``size`` bytes of it are kept, any torn tail is cut off."""

    path: Path
    size: int
    torn_bytes: int
    examples: dict[int, ExampleStats]  # by input line
    worst_tokens: tuple[WorstToken, ...]
    settings: dict[str, Any]  # what every line was written with (``line_settings``); {} for an empty file
    # distributed: False for the union of torchrun part files, whose lines are not a prefix of the input
    ordered: bool = True
    #: Input lines whose output line records no scored example (``audit``'s records the model could not
    #: score: the line holds their findings); the scan leaves them invalid and the runner does not rewrite them.
    others: frozenset[int] = frozenset()

    @property
    def last_line(self) -> int:
        return max(max(self.examples, default=0), max(self.others, default=0))


#: How every output line starts (``output_line`` puts ``schema_version`` first). A torn last line is
#: dropped on resume only if it starts like this (or is a shorter piece of it): bytes that do not are
#: not ours, and ce-inspect never deletes what it did not write.
LINE_PREFIX = b'{"schema_version": '


def _is_our_torn_line(raw: bytes) -> bool:
    return raw.startswith(LINE_PREFIX) or LINE_PREFIX.startswith(raw)


#: One parsed output line (and ``worst``) -> what resume keeps of it; ``ValueError``/``KeyError``/``TypeError``
#: when the line is not one the command writes. Stats that count no scored token mark a line of ours that
#: records no score (``ResumeState.others``).
LineParser = Callable[[Any, int], "tuple[ExampleStats, list[WorstToken]]"]


def read_resume(
    path: str | os.PathLike[str],
    worst: int = DEFAULT_WORST,
    *,
    parse: LineParser | None = None,
    command: str = "batch",
) -> ResumeState:
    """Read back an output file of ``command`` (``batch``'s lines, or those ``parse`` reads: ``diff``'s):
    every complete line must be a result written with the same settings; a torn last line (no newline: a
    ``kill -9`` mid-write) is dropped only if it is recognisably the start of one of our lines. Anything else
    means the file is not ours: refuse it, change nothing.
    """
    path = Path(path)
    parse = parse or stats_from_line
    examples: dict[int, ExampleStats] = {}
    others: set[int] = set()
    last = 0
    tokens: list[tuple[float, int, int, WorstToken]] = []
    settings: dict[str, Any] | None = None
    size = 0
    try:
        with open(path, "rb") as fh:
            for k, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    if not _is_our_torn_line(raw):
                        raise ResumeError(
                            f"`resume`: {path} ends with {len(raw)} bytes that ce-inspect did not write (its lines "
                            f'start with {{"schema_version": ...); give a file written by `ce-inspect {command}`, or '
                            "start over with `force`"
                        )
                    break  # torn: the writer never finished this line
                obj, stats, example_tokens = _read_line(path, k, raw, worst, parse, command)
                if stats.line <= last:
                    raise ResumeError(
                        f"`resume`: line {k} of {path} repeats or goes back to input line {stats.line}; the file "
                        "was edited or written by two runs at once; start over with `force`"
                    )
                line_settings_ = obj.get("settings")
                if settings is None:
                    settings = _first_settings(path, line_settings_)
                elif line_settings_ != settings:
                    raise ResumeError(
                        f"`resume`: line {k} of {path} was written with other settings than line 1; the file "
                        "mixes two runs, start over with `force`"
                    )
                last = stats.line
                if not stats.fingerprint:  # a line with no result (audit: a record not scored)
                    others.add(stats.line)
                    size += len(raw)
                    continue
                examples[stats.line] = stats
                if worst:
                    for t in example_tokens:
                        push_largest(tokens, (t.loss, -t.line, -t.index, t), worst)
                size += len(raw)
        total = path.stat().st_size
    except OSError as exc:
        raise ResumeError(f"`resume`: cannot read {path} ({exc.strerror})") from None
    return ResumeState(
        path=path,
        size=size,
        torn_bytes=total - size,
        examples=examples,
        worst_tokens=tuple(item[-1] for item in tokens),
        settings=settings or {},
        others=frozenset(others),
    )


def _read_line(
    path: Path, k: int, raw: bytes, worst: int, parse: LineParser, command: str
) -> tuple[dict[str, Any], ExampleStats, list[WorstToken]]:
    try:
        obj = json.loads(raw.decode("utf-8"))
        stats, example_tokens = parse(obj, worst)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ResumeError(
            f"`resume`: line {k} of {path} is not a complete ce-inspect {command} result ({_why(exc)}); "
            f"give a file written by `ce-inspect {command}`, or start over with `force`"
        ) from None
    return obj, stats, example_tokens


def _first_settings(path: Path, settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ResumeError(
            f"`resume`: {path} does not record the settings it was written with (an older ce-inspect wrote it); "
            "start over with `force`"
        )
    return settings


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON: {exc.msg}"
    return " ".join(str(exc).split()) or type(exc).__name__


def stats_from_line(obj: Any, worst: int) -> tuple[ExampleStats, list[WorstToken]]:
    # The line is parsed by the contract itself: exactly the keys and types of result.BatchLineDict.
    line, rid, result = batch_line_from_dict(obj)
    if line < 1 or not result.tokens:
        raise ValueError("no input line number or no scored tokens")
    if result.summary.count != len(result.tokens):
        raise ValueError(f"summary counts {result.summary.count} tokens but {len(result.tokens)} are listed")
    # Lines written with --no-sequence have no sequence view; the layout always counts its tokens.
    stats = replace(ExampleStats.from_result(line, rid, result), sequence_tokens=result.layout["sequence_tokens"])
    return stats, worst_tokens_of(line, rid, result, worst) if worst else []


def line_settings(
    lm: LoadedModel,
    layout: Layout,
    options: ScoreOptions,
    fields: Fields | None = None,
    *,
    sequence: bool | None = None,
) -> dict[str, Any]:
    """Everything besides its record that an output line's content depends on; each line carries it.

    The model (its name and, when known, the fingerprint of its config, tokenizer and weights), the dtype,
    every layout and scoring option and the record fields. Left out: the device, batch size, padding side
    and head chunk size, which change figures only within float tolerance. ``sequence=None`` leaves that
    key out (the scan does not know it; ``run_scan`` compares it).
    """
    from dataclasses import asdict

    scoring = {k: v for k, v in asdict(options).items() if k not in ("chunk_tokens", "chunk_bytes")}
    settings: dict[str, Any] = {
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "dtype": lm.dtype,
        **asdict(layout),
        **scoring,
        "fields": asdict(fields or Fields()),
    }
    if sequence is not None:
        settings["sequence"] = sequence
    return as_read_back(settings)


def check_resume_settings(state: ResumeState, current: dict[str, Any]) -> None:
    """Refuse to continue a file written with another model or any option that changes a line."""
    if not state.examples and not state.others:
        return
    for key, value in current.items():
        old = state.settings.get(key)
        if key.endswith("_fingerprint"):  # model_fingerprint, and diff's model_b_fingerprint
            if old is not None and value is not None and old != value:
                raise ResumeError(
                    f"`resume`: {state.path} was written by a model whose config, tokenizer or weights differ "
                    f"from this one's (fingerprint {str(old)[:12]} vs {str(value)[:12]}); start over with `force`"
                )
            continue
        if key not in state.settings and value in (None, False):
            continue  # an option newer than the file, left off: its lines were written as this run writes them
        if old != value:
            raise ResumeError(
                f"`resume`: {state.path} was written with {_setting(key, old)}, this run has {_setting(key, value)}; "
                "resume with the same options, or start over with `force`"
            )


def _setting(key: str, value: Any) -> str:
    """One setting as a resume error shows it. A switch is shown as the lines' ``settings`` hold it: its option
    may be the negation (``sequence`` is --no-sequence), so "--no-sequence True" would say the opposite."""
    if isinstance(value, bool):
        return f'"{key}": {json.dumps(value)}'
    if value is None:
        return f"no `{key}`"
    return f"`{key}` {value!r}"


__all__ = [
    "stats_from_line",
    "LINE_PREFIX",
    "LineParser",
    "ResumeState",
    "check_resume_settings",
    "line_settings",
    "read_resume",
]
