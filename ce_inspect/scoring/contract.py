"""The scorer contract: what every command asks of a model, and what a backend implements.

As lm-eval's ``lm_eval/api/model.py:LM`` is the one interface its evaluator calls, ``Scorer`` is the one
every command calls (``run``, ``batch``, ``diff``, ``audit``): ``score`` gives the per-token figures of
encoded examples, ``scored_logits`` the scored rows' distributions a chunk at a time, for what needs
more than the target's figures (KL, entropy). The Hugging Face forward pass (``scoring.hf.HFScorer``) is
its one implementation today; ``scoring.api.scorer_for`` picks the scorer of a loaded model, and a later
backend plugs in there and nowhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ce_inspect.contract import ScoreResult
    from ce_inspect.scoring.options import ScoreOptions
    from ce_inspect.text import Encoded


class ScoredLogits(ABC):
    """The scored rows of one forward pass over ``examples``, read a chunk at a time, so that no (tokens x
    vocabulary) tensor need exist: row ``i`` is the ``i``-th scored target, the examples in order and each
    example's scored positions in order, as ``scoring.pack`` lays them out.

    It holds what its chunks need and no more: the caller may release the model's body while it lives
    (``diff``'s sequential mode keeps the reference's rows and drops its model before the candidate loads).
    """

    def __init__(self, examples: Sequence[Encoded], targets: Sequence[int], rows: int) -> None:
        self.examples = list(examples)
        self.targets = list(targets)  # each scored target's id: the label, as in training
        self.rows = rows  # rows one chunk may hold within ``ScoreOptions.chunk_bytes``

    def __len__(self) -> int:
        return len(self.targets)

    @property
    @abstractmethod
    def vocab(self) -> int:
        """The width of a row: the model's vocabulary (its logits' last dimension)."""

    @abstractmethod
    def logits(self, start: int, stop: int) -> torch.Tensor:
        """The float32 logits [stop - start, vocab] of scored rows ``start`` .. ``stop - 1``.

        The figures need them raw: which of NaN, +inf or -inf made a row's figures non-finite is what
        ``figures.nonfinite_row`` tells the user, and log-probabilities no longer show it.
        """

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """``scored[i:j]``: ``logits(i, j)``, the bounds clamped as a slice's are."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("scored rows are read in contiguous chunks")
        return self.logits(start, max(start, stop))

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """The float32 log-probabilities [stop - start, vocab] of scored rows ``start`` .. ``stop - 1``."""
        import torch

        return torch.log_softmax(self.logits(start, stop), dim=-1)  # [stop - start, vocab]

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, chunk(start, start + rows))`` over every scored row, ``rows`` (default ``self.rows``) at a time."""
        rows = rows or self.rows
        for start in range(0, len(self), rows):
            yield start, self.chunk(start, min(start + rows, len(self)))


class Scorer(ABC):
    """One loaded model behind the one scoring interface."""

    @abstractmethod
    def score(
        self, examples: Sequence[Encoded], options: ScoreOptions, *, padding_side: str = "right"
    ) -> list[ScoreResult]:
        """Every example's per-token figures, from one padded forward pass: each result equals scoring it alone."""

    @abstractmethod
    def scored_logits(
        self, examples: Sequence[Encoded], options: ScoreOptions, *, padding_side: str = "right"
    ) -> ScoredLogits:
        """One forward pass over ``examples``; their scored rows, to be read in chunks."""

    def score_groups(
        self, groups: Sequence[Sequence[Encoded]], options: ScoreOptions, *, padding_side: str = "right"
    ) -> list[list[ScoreResult]]:
        """Examples in groups whose members start with the same tokens (a question's choices after its
        context): each group's results, equal to scoring every example alone.

        A backend that can run a shared start once and reuse its state overrides this (``HFScorer`` does);
        by default every example goes through ``score`` in one padded pass."""
        results = self.score([e for group in groups for e in group], options, padding_side=padding_side)
        out, at = [], 0
        for group in groups:
            out.append(results[at : at + len(group)])
            at += len(group)
        return out

    @abstractmethod
    def own_losses(self, examples: Sequence[Encoded]) -> list[float]:
        """The model's own loss of each example, computed its own way (``ScoreOptions.verify`` compares it)."""
