"""The one packer: examples laid out for one forward pass, and the targets it scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ce_inspect.errors import InputError
from ce_inspect.text import Encoded

if TYPE_CHECKING:
    import torch

    from ce_inspect.model import LoadedModel


class Packed(NamedTuple):
    """Examples laid out for one forward pass, and what it scores: each scored target's row, the column of
    the logits that predict it, and its id (the example's label there)."""

    input_ids: torch.Tensor  # [batch, seq], padding where ``attention`` is 0
    attention: torch.Tensor  # [batch, seq]
    position_ids: torch.Tensor  # [batch, seq], from the mask: left and right padding give the same positions
    rows_b: list[int]  # batch row of each scored target
    rows_t: list[int]  # column of the logits that predict it (the target sits at column + 1)
    targets: list[int]  # its id: the label, as in training (== the input id unless the record gives labels)


def pack(lm: LoadedModel, examples: Sequence[Encoded], *, padding_side: str = "right") -> Packed:
    """The one packer: every command that scores examples (``score_batch``, ``diff``) lays them out here,
    so all of them score the same targets at the same positions."""
    if padding_side not in ("left", "right"):
        raise InputError(f"padding side must be left or right, got {padding_side!r}")
    for example in examples:
        if not example.scored_positions:
            raise InputError("the example has no scored position (every label is ignore_index)")
    packed = _lay_out(lm, examples, 0, padding_side)
    if lm.context_length is not None and packed.input_ids.shape[1] > lm.context_length:
        # lm-eval's rolling windows: the context's length of inputs and the target after them. No logit
        # predicts from the last column, and a causal model's others do not see it: it is never input.
        input_ids, attention, position_ids = (t[:, :-1] for t in packed[:3])
        packed = packed._replace(input_ids=input_ids, attention=attention, position_ids=position_ids)
    return packed


def shared_start(examples: Sequence[Encoded]) -> int:
    """How many first tokens every example of ``examples`` shares and no scored target needs the logits
    of: the start that can run once for all of them (0 when there is none). Every logit column a target
    needs, and at least one token of each example, lies after it."""
    first = examples[0].input_ids
    common = len(first)
    for example in examples[1:]:
        ids = example.input_ids
        n = min(common, len(ids))
        common = next((i for i in range(n) if ids[i] != first[i]), n)
    need = min(min(e.scored_positions) for e in examples) - 1  # the first logit column a target needs
    return max(0, min(common, need, min(len(e) for e in examples) - 1))


def pack_after(lm: LoadedModel, examples: Sequence[Encoded], start: int) -> Packed:
    """The one packer's layout of what follows the shared ``start`` tokens of ``examples`` (``shared_start``),
    right-padded: the same targets as ``pack``, their columns counted from ``start``, the positions from it."""
    return _lay_out(lm, examples, start, "right")


def _lay_out(lm: LoadedModel, examples: Sequence[Encoded], start: int, padding_side: str) -> Packed:
    """Each example's tokens from ``start`` on, padded on ``padding_side`` to the longest; its targets."""
    import torch

    tokenizer = lm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    width = max(len(e) for e in examples) - start
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [batch, seq]
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # [batch, seq]
    rows_b: list[int] = []
    rows_t: list[int] = []
    targets: list[int] = []
    for b, example in enumerate(examples):
        n = len(example) - start
        offset = width - n if padding_side == "left" else 0
        input_ids[b, offset : offset + n] = torch.tensor(example.input_ids[start:])
        attention[b, offset : offset + n] = 1
        for p in example.scored_positions:
            rows_b.append(b)
            rows_t.append(offset + p - 1 - start)  # the logits at p - 1 predict the token at p
            targets.append(example.labels[p])  # the label is the target, as in training (== the id unless given)
    # From the mask: left and right padding give the same positions, counted from ``start``.
    position_ids = start + (attention.cumsum(-1) - 1).clamp(min=0)  # [batch, seq]
    return Packed(input_ids, attention, position_ids, rows_b, rows_t, targets)
