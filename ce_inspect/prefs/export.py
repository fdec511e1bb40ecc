"""``--export-ref``: the input records with the reference's log-prob sums added, under the names TRL's
``DPOTrainer`` gives them when it precomputes them (``ref_chosen_logps``, ``ref_rejected_logps``)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ce_inspect.data import file_kind, read_objects
from ce_inspect.errors import InputError, UsageError
from ce_inspect.files import check_output, is_stream, write_outputs

if TYPE_CHECKING:
    from ce_inspect.prefs.dataset import PrefsDatasetSummary

#: How messages name the export file (shown as --export-ref).
EXPORT_LABEL = "`export_ref`"


def check_export(
    export: str | os.PathLike[str], data: str | os.PathLike[str], output: str | os.PathLike[str] | None, force: bool
) -> None:
    """Before anything loads: the export file can be written and is none of the inputs; the data can be read
    again (not stdin or a pipe) and is a JSON Lines or JSON file, whose records the export copies."""
    if is_stream(data):
        raise UsageError(f"{EXPORT_LABEL} reads the data again after the run; give the data as a file, not a stream")
    if file_kind(data) not in ("jsonl", "json"):
        raise UsageError(f"{EXPORT_LABEL} copies JSON records; {data} is not a JSON Lines or JSON file")
    check_output(export, inputs=[("the data", data), ("`output`", output)], label=EXPORT_LABEL, force=force)


def export_ref(summary: PrefsDatasetSummary, data: str | os.PathLike[str], export: str | os.PathLike[str]) -> int:
    """Write every record of ``data`` that was scored, as JSON Lines, with ``ref_chosen_logps`` and
    ``ref_rejected_logps`` added (the reference's sums over each completion; without a reference model, the
    policy's, which TRL's DPOTrainer takes as the reference). Skipped records are left out. Returns the count."""
    if not summary.pairs or summary.pairs[0].figures.ref_chosen_logps is None:
        raise UsageError(f"{EXPORT_LABEL}: `loss_type` {summary.loss.loss_type} scores no reference; nothing to export")
    ref = {p.line: (p.figures.ref_chosen_logps, p.figures.ref_rejected_logps) for p in summary.pairs}
    lines = []
    for number, obj, error in read_objects(data, file_kind(data), None):
        if number not in ref:
            continue
        if error is not None or not isinstance(obj, dict):
            raise InputError(f"{data} changed since it was scored (record {number}); run again")
        chosen, rejected = ref.pop(number)
        lines.append(
            json.dumps({**obj, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}, ensure_ascii=False)
        )
    if ref:
        raise InputError(f"{data} changed since it was scored (record {min(ref)} is gone); run again")
    write_outputs([(export, "".join(line + "\n" for line in lines), EXPORT_LABEL)])
    return len(lines)


__all__ = ["EXPORT_LABEL", "check_export", "export_ref"]
