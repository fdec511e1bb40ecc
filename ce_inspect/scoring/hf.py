"""The scorer contract's one implementation today: a Hugging Face model's forward pass (``HFScorer``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ce_inspect.contract import ScoreResult
from ce_inspect.model import check_model_unchanged
from ce_inspect.scoring.contract import ScoredLogits, Scorer
from ce_inspect.scoring.figures import nonfinite_error, nonfinite_row, token_figures
from ce_inspect.scoring.forward import SharedStart, log, own_losses, scored_rows, vocab_size
from ce_inspect.scoring.options import ScoreOptions
from ce_inspect.scoring.packer import Packed, pack, pack_after, shared_start
from ce_inspect.scoring.results import build_results
from ce_inspect.text import Encoded

if TYPE_CHECKING:
    import torch

    from ce_inspect.model import LoadedModel


class HFScoredLogits(ScoredLogits):
    """The scored rows of one forward pass of a Hugging Face model: the hidden states its output head would
    see at the scored positions and that head, or (when it projected them itself) its logits there. It holds
    the head, not the model: the model's body may be released while it lives."""

    def __init__(
        self, examples: Sequence[Encoded], targets: Sequence[int], selected: Any, head: Any, rows: int
    ) -> None:
        super().__init__(examples, targets, rows)
        self.selected = selected  # [n_scored, hidden] or [n_scored, vocab]
        self.head = head  # ``head(selected[i:j])`` is the logits [j - i, vocab]
        self._vocab: int | None = None

    @property
    def vocab(self) -> int:
        if self._vocab is None:
            self._vocab = int(self.logits(0, 1).shape[-1])
        return self._vocab

    def logits(self, start: int, stop: int) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.head(self.selected[start:stop]).float()  # [stop - start, vocab]


class HFScorer(Scorer):
    """A loaded Hugging Face model's forward pass, behind the scorer contract."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm

    def score(
        self, examples: Sequence[Encoded], options: ScoreOptions, *, padding_side: str = "right"
    ) -> list[ScoreResult]:
        """Score several examples in one padded forward pass; each result equals scoring it alone.

        Position ids are derived from the attention mask, so left and right padding give the same figures.
        """
        if not examples:
            return []
        return self._results(examples, pack(self.lm, examples, padding_side=padding_side), options)

    def score_groups(
        self, groups: Sequence[Sequence[Encoded]], options: ScoreOptions, *, padding_side: str = "right"
    ) -> list[list[ScoreResult]]:
        """Each group whose shared first tokens are worth running once (``start_to_share``) runs them once,
        and the rest of its members in one pass after them from the start's KV cache; the other groups go
        through one padded pass together (``Scorer.score_groups``). The figures are those of each example
        alone: checked once per model against the full pass, which it falls back to if they differ."""
        starts = [start_to_share(g) if self.lm.shared_start is not False else 0 for g in groups]
        if self.lm.context_length is not None:  # past the context: the windowed layout ``pack`` truncates
            starts = [0 if max(len(e) for e in g) > self.lm.context_length else n for g, n in zip(groups, starts)]
        rest = [g for g, n in zip(groups, starts) if n == 0]
        together = iter(super().score_groups(rest, options, padding_side=padding_side) if rest else [])
        out = []
        for group, n in zip(groups, starts):
            if n == 0:
                out.append(next(together))
            elif self.lm.shared_start is False:  # the first group's check found other figures
                out.append(self.score(group, options, padding_side=padding_side))
            else:
                out.append(self._after_start(group, n, options))
        return out

    def _after_start(self, group: Sequence[Encoded], start: int, options: ScoreOptions) -> list[ScoreResult]:
        """One group's results from its shared ``start`` tokens run once (checked on the model's first group)."""
        import torch

        lm = self.lm
        with torch.inference_mode():
            shared = SharedStart(lm, group[0].input_ids[:start])
        results = self._results(group, pack_after(lm, group, start), options, start=shared)
        if lm.shared_start is None:
            full = self.score(group, options)
            lm.shared_start = all(_same_figures(a, b, exact=lm.dtype == "float32") for a, b in zip(results, full))
            if not lm.shared_start:
                log.warning("%s: a shared start's KV cache gives other figures; scoring every choice in full", lm.name)
                return full
        return results

    def _results(
        self, examples: Sequence[Encoded], packed: Packed, options: ScoreOptions, *, start: SharedStart | None = None
    ) -> list[ScoreResult]:
        import torch

        lm = self.lm
        options, top_k_note = _fit_top_k(lm, options)
        with torch.inference_mode():
            figures = _figures(lm, examples, packed, options, start)
            model_losses = self.own_losses(examples) if options.verify else [None] * len(examples)
        check_model_unchanged(lm)  # the pass read the weights from their files: were they the loaded ones?

        results = build_results(lm, examples, figures, model_losses, options)
        if top_k_note:
            results = [replace(r, notes=(*r.notes, top_k_note)) for r in results]
        return results

    def scored_logits(
        self, examples: Sequence[Encoded], options: ScoreOptions, *, padding_side: str = "right"
    ) -> HFScoredLogits:
        """One forward pass over ``examples`` laid out by the one packer: the same targets (labels) at the same
        positions as ``score``."""
        return _scored_logits(self.lm, examples, pack(self.lm, examples, padding_side=padding_side), options)

    def own_losses(self, examples: Sequence[Encoded]) -> list[float]:
        """The model's own ``loss`` (its CrossEntropyLoss path), one example at a time."""
        import torch

        with torch.inference_mode():
            return own_losses(self.lm, examples)


#: The fewest tokens of forward pass that running a group's shared start once must save ((members - 1) x
#: its length) for ``HFScorer.score_groups`` to do it: below it, one padded pass over every group costs less
#: than two passes per group (bench/choices_speed.py: after 43 shared tokens neither way wins by much, and
#: sharing was slower on a loaded machine; after 511, 3.5x faster). 384: 128 tokens for 4 choices, 384 for a pair.
SHARED_START_SAVING = 384


def start_to_share(group: Sequence[Encoded]) -> int:
    """``group``'s shared start when running it once saves ``SHARED_START_SAVING`` tokens of forward pass, else 0."""
    if len(group) < 2:
        return 0
    start = shared_start(group)
    return start if (len(group) - 1) * start >= SHARED_START_SAVING else 0


def worth_sharing(group: Sequence[Encoded]) -> bool:
    """Whether ``group``'s shared start is run once (``start_to_share``)."""
    return start_to_share(group) > 0


def _same_figures(got: ScoreResult, want: ScoreResult, *, exact: bool) -> bool:
    """Whether two results of one example hold the same per-token losses: within 1e-4 in float32, 2e-2 else
    (relative, as ``forward``'s check of the head)."""
    tol = 1e-4 if exact else 2e-2
    if len(got.tokens) != len(want.tokens):
        return False
    return all(abs(a.loss - b.loss) <= tol * max(1.0, abs(b.loss)) for a, b in zip(got.tokens, want.tokens))


def _scored_logits(
    lm: LoadedModel,
    examples: Sequence[Encoded],
    packed: Packed,
    options: ScoreOptions,
    start: SharedStart | None = None,
) -> HFScoredLogits:
    import torch

    with torch.inference_mode():
        selected, head, rows = scored_rows(
            lm, packed.input_ids, packed.attention, packed.position_ids, packed.rows_b, packed.rows_t, options, start
        )
    return HFScoredLogits(examples, packed.targets, selected, head, rows)


def _figures(
    lm: LoadedModel, examples: Sequence[Encoded], packed: Packed, options: ScoreOptions, start: SharedStart | None
) -> dict[str, list[Any]]:
    """The forward pass over ``packed`` (after ``start``, if any) and every scored target's figures, a chunk
    of rows at a time."""
    import torch

    scored = _scored_logits(lm, examples, packed, options, start)
    targets, rows = packed.targets, scored.rows
    target_tensor = torch.tensor(targets)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(scored), rows):
        chunk_logits = scored.logits(start, start + rows)  # [rows, vocab]
        chunk = token_figures(
            chunk_logits,
            target_tensor[start : start + rows].to(chunk_logits.device),
            label_smoothing=options.label_smoothing,
            top_k=options.top_k,
            entropy=options.entropy,
        )
        bad = nonfinite_row(chunk_logits, target_tensor[start : start + rows], chunk)
        if bad is not None:
            row = start + bad[0]
            raise nonfinite_error(
                lm.tokenizer,
                examples,
                row,
                bad[1],
                target=targets[row],
                dtype=lm.dtype,
                label_smoothing=options.label_smoothing,
            )
        for key, value in chunk.items():
            parts.setdefault(key, []).append(value.cpu())
        del chunk_logits, chunk
    out = {key: torch.cat(values).tolist() for key, values in parts.items()}
    out["target"] = targets
    return out


def top_k_note(lm: LoadedModel, options: ScoreOptions) -> str | None:
    """The note every result carries when ``top_k`` is more than the vocabulary (the width of the logits)."""
    vocab = vocab_size(lm.model)
    if options.top_k <= vocab:
        return None
    return f"top-k {options.top_k} is more than the model's vocabulary of {vocab} tokens; showing all {vocab} (--top-k)"


def _fit_top_k(lm: LoadedModel, options: ScoreOptions) -> tuple[ScoreOptions, str | None]:
    """``top_k`` clamped to the vocabulary, with the note that says so (None when it fits)."""
    note = top_k_note(lm, options)
    if note is None:
        return options, None
    return replace(options, top_k=vocab_size(lm.model)), note
