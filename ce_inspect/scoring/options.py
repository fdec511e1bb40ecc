"""What a scoring run is asked for: the reduction, label smoothing, top-k, the model's own loss, the chunk budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ce_inspect.errors import InputError

REDUCTIONS = ("mean", "sum", "none")
#: Bytes of float32 (rows x vocab) scratch the head may use at once; about 3 such buffers are live.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def check_reduction(reduction: str) -> None:
    """The one check of a reduction name, for the library, ``run`` and ``batch`` alike."""
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown `reduction` {reduction!r}; use {', '.join(REDUCTIONS[:-1])} or {REDUCTIONS[-1]}")


@dataclass(frozen=True)
class ScoreOptions:
    reduction: str = "mean"
    label_smoothing: float = 0.0
    top_k: int = 0
    verify: bool = False
    chunk_tokens: int | None = None  # head rows per chunk; None: derived from chunk_bytes and the vocab
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Also the entropy of the model's distribution at each scored position (nats), computed chunk by chunk.
    entropy: bool = False

    def __post_init__(self) -> None:
        check_reduction(self.reduction)
        if math.isnan(self.label_smoothing) or math.isinf(self.label_smoothing):
            what = "not a number" if math.isnan(self.label_smoothing) else "infinite"
            raise InputError(f"`label_smoothing` must be a number in [0, 1], got {self.label_smoothing} ({what})")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise InputError(f"`label_smoothing` must be in [0, 1], got {self.label_smoothing}")
        if self.top_k < 0:
            raise InputError(f"`top_k` must be 0 or more, got {self.top_k}")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise InputError(f"`chunk_tokens` must be at least 1, got {self.chunk_tokens}")

    def rows_per_chunk(self, vocab_size: int) -> int:
        if self.chunk_tokens is not None:
            return self.chunk_tokens
        return max(1, self.chunk_bytes // (3 * 4 * max(vocab_size, 1)))
