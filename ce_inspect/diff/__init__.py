"""Two models on the same tokens: per-token ΔNLL, KL divergence and top-1 agreement, with llama.cpp's statistics.

Each side lays the example out with its own tokenizer; the comparison goes on only when both give the
same tokens and the same scored positions. Each model runs its body once (``Scorer.scored_logits``) and
its head only at the scored positions, ``rows`` at a time, so no (sequence x vocabulary) tensor exists
for either model. Every figure is computed in float32; sums and statistics in float64.

Sequential mode (each model given as a zero-argument loader): the reference's body runs, only its scored
rows and its output head are kept, the reference is released, and then the candidate loads. The same
comparison code runs on the same tensors, so the figures are the same as with both models loaded.

The package: ``figures`` (the per-token figures, their statistics, the JSON wire format), ``compare`` (the
library's entry points and the two passes compared), ``dataset`` (``diff --input`` as a job for the one
runner, its summary, its lines read back).
"""

from __future__ import annotations

from ce_inspect.diff.compare import (
    check_same_tokens,
    compare,
    diff,
    diff_encoded,
    diff_examples,
    diff_messages,
)
from ce_inspect.diff.dataset import (
    DiffDatasetSummary,
    DiffReport,
    ResumedDiff,
    diff_dataset,
    diff_job,
    diff_line_settings,
    diff_line_stats,
    record_encoder,
)
from ce_inspect.diff.figures import (
    COLOR_BY,
    KL_QUANTILES,
    DiffResult,
    DiffSummary,
    TokenDiff,
    TokenFigures,
    mean_se,
    percentile,
)

__all__ = [
    "COLOR_BY",
    "DiffDatasetSummary",
    "DiffReport",
    "DiffResult",
    "DiffSummary",
    "KL_QUANTILES",
    "ResumedDiff",
    "TokenDiff",
    "TokenFigures",
    "check_same_tokens",
    "compare",
    "diff",
    "diff_encoded",
    "diff_examples",
    "diff_job",
    "diff_line_settings",
    "diff_line_stats",
    "diff_dataset",
    "diff_messages",
    "mean_se",
    "percentile",
    "record_encoder",
]
