"""Preference pairs (DPO and its kin): chosen and rejected token by token under the policy and the reference,
TRL's log-prob sums, implicit rewards, margin and loss, the pair's checks.

The package: ``figures`` (the losses and TRL's metrics, plain math), ``score`` (both sides of each pair through
the scorers, a pair's output line), ``export`` (``--export-ref``: the records with the reference's sums),
``dataset`` (the job for the one runner, its summary, its lines read back,
``prefs_dataset``). The tokenization is ``text.encode_preference`` (TRL's DPO rule).
"""

from __future__ import annotations

from ce_inspect.prefs.dataset import (
    PrefsDatasetSummary,
    PrefsReport,
    ResumedPair,
    Tokenization,
    check_same_pair,
    pair_encoder,
    prefs_dataset,
    prefs_job,
    prefs_line_stats,
    prefs_settings,
)
from ce_inspect.prefs.export import EXPORT_LABEL, check_export, export_ref
from ce_inspect.prefs.figures import (
    DEFAULT_BETA,
    DEFAULT_SIMPO_GAMMA,
    LOSS_TYPES,
    METRICS,
    PREFS_CHECKS,
    REF_CHECK,
    REF_PREFERENCE_NATS,
    REFERENCE_LOSSES,
    PairFigures,
    check_loss,
    log1mexp,
    log_sigmoid,
    mean_se,
    ref_finding,
    trl_metrics,
)
from ce_inspect.prefs.score import Loss, PairResult, pair_line, score_pairs, side_logps

__all__ = [
    "DEFAULT_BETA",
    "EXPORT_LABEL",
    "DEFAULT_SIMPO_GAMMA",
    "LOSS_TYPES",
    "METRICS",
    "PREFS_CHECKS",
    "REF_CHECK",
    "REF_PREFERENCE_NATS",
    "REFERENCE_LOSSES",
    "Loss",
    "PairFigures",
    "PairResult",
    "PrefsDatasetSummary",
    "PrefsReport",
    "ResumedPair",
    "Tokenization",
    "check_export",
    "check_loss",
    "export_ref",
    "check_same_pair",
    "log1mexp",
    "log_sigmoid",
    "mean_se",
    "pair_encoder",
    "pair_line",
    "prefs_dataset",
    "prefs_job",
    "prefs_line_stats",
    "prefs_settings",
    "ref_finding",
    "score_pairs",
    "side_logps",
    "trl_metrics",
]
