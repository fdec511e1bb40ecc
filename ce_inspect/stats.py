"""Error bars of data-set figures: the standard error of a mean over examples, and a seeded bootstrap over
examples for figures that are ratios of sums (a token-weighted mean loss, bits per byte).

A mean over examples (each example one value) has the standard error lm-evaluation-harness reports
(``mean_stderr`` in ``lm_eval/api/metrics.py``): the sample standard deviation (ddof=1) over sqrt(n). A
token-weighted mean is ``sum(loss) / sum(tokens)`` with both sums over examples, not a mean of independent
values: its examples are resampled with replacement instead, the ratio recomputed on each resample, and the
standard error is the sample standard deviation of those ratios (the bootstrap of Efron and Tibshirani,
"An Introduction to the Bootstrap", 1993, ch. 6), one resampling shared by every ratio, from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Resamples drawn at once (a [chunk, examples] index array): bounds the bootstrap's memory.
BOOTSTRAP_CHUNK = 64


def mean_stderr(values: Sequence[float]) -> float | None:
    """lm-eval's ``mean_stderr``: the sample standard deviation (ddof=1) over sqrt(n); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mu = math.fsum(values) / n
    return math.sqrt(math.fsum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def bootstrap_stderrs(
    ratios: Mapping[str, tuple[Sequence[float], Sequence[float]]], resamples: int, seed: int
) -> dict[str, float | None]:
    """For each name, the bootstrap standard error of ``sum(num) / sum(den)`` (num, den: one value per example):
    ``resamples`` resamples of the examples with replacement, the same for every ratio; None below two examples
    or two resamples."""
    import numpy as np

    n = len(next(iter(ratios.values()))[0]) if ratios else 0
    if n < 2 or resamples < 2:
        return {name: None for name in ratios}
    arrays = {
        name: (np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
        for name, (num, den) in ratios.items()
    }
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in ratios}
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        index = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))  # [chunk, examples]
        for name, (num, den) in arrays.items():
            drawn[name].append(num[index].sum(axis=1) / den[index].sum(axis=1))  # [chunk]
    return {name: float(np.concatenate(values).std(ddof=1)) for name, values in drawn.items()}


__all__ = ["BOOTSTRAP_CHUNK", "bootstrap_stderrs", "mean_stderr"]
