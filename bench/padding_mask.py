"""The body of SmolLM2 on right-padded batches, with and without the attention mask.

    python bench/padding_mask.py

Right padding is never attended to by a causal model's real positions, so ``scoring.scored_rows`` leaves
it unmasked (after a one-time probe per model): the model then runs its causal attention kernel instead of
materialising a [batch, seq, seq] mask. This prints, per batch shape, the fastest of 3 interleaved runs
each way and the largest difference of the hidden states at real positions (0: the same figures).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ce_inspect

from ce_inspect import load  # noqa: E402

SHAPES = [(8, 600, 300), (4, 1427, 700), (16, 128, 40)]  # rows, padded length, shortest row's length


def main() -> None:
    lm = load(None, device="cpu", quiet=True)
    body = lm.model.model
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for rows, width, short in SHAPES:
        ids = torch.randint(100, 40000, (rows, width))
        attention = torch.ones(rows, width, dtype=torch.long)
        for b in range(1, rows):
            attention[b, short + b * 10 :] = 0  # right padding
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        def forward(masked: bool, ids=ids, attention=attention, positions=positions) -> torch.Tensor:
            with torch.inference_mode():
                if masked:
                    out = body(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
                else:
                    out = body(input_ids=ids, use_cache=False)
            return out.last_hidden_state

        a, b_ = forward(True), forward(False)
        lengths = attention.sum(-1).tolist()
        gap = max((a[b, :n] - b_[b, :n]).abs().max().item() for b, n in enumerate(lengths))
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for masked in (True, False):
                start = time.perf_counter()
                forward(masked)
                times[masked].append(time.perf_counter() - start)
        with_mask, without = min(times[True]), min(times[False])
        print(
            f"{rows} x {width}: mask {with_mask:.2f} s, no mask {without:.2f} s, "
            f"{with_mask / without:.2f}x; largest hidden-state difference {gap:.1e}"
        )


if __name__ == "__main__":
    main()
