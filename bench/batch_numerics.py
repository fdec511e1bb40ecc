"""Batched against one-by-one token losses, and the float32 bound ``ce_inspect.numerics`` derives for them.

    OMP_NUM_THREADS=1 python bench/batch_numerics.py     # and 2, or unset
    python bench/batch_numerics.py --tiny-only           # without the bundled model (seconds)

For the tiny random models of the tests (tests/test_batch.py's records) and SmolLM2 (samples/pairs.jsonl),
every example is scored alone and in padded batches (all in one, left and right padding; batches of 3),
and the largest difference of a token's loss is printed next to the bound (``loss_tolerance``) and
their ratio (how much room the bound leaves: above 1 means the bound holds). Each pass also runs twice,
to show whether one shape gives the same bits again. Append the output to bench/results/batch-numerics.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ce_inspect
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny models and records

from machine import cpu_name  # noqa: E402

from ce_inspect import Layout, encode, load, score_encoded  # noqa: E402
from ce_inspect.numerics import logit_scale, loss_tolerance  # noqa: E402
from ce_inspect.scoring import score_batch  # noqa: E402


def measure(name: str, lm, rows) -> None:
    examples = [encode(lm.tokenizer, r["prompt"], r["answer"], Layout()) for r in rows]
    alone = [[t.loss for t in score_encoded(lm, e).tokens] for e in examples]
    again = [[t.loss for t in score_encoded(lm, e).tokens] for e in examples]
    longest = max(len(e) for e in examples)
    bound = loss_tolerance(lm.model.config, logit_scale(lm, examples), longest)
    worst = 0.0
    passes = {}
    for label, side, size in (("all-right", "right", None), ("all-left", "left", None), ("by3-right", "right", 3)):
        size = size or len(examples)
        got = []
        for start in range(0, len(examples), size):
            batch = score_batch(lm, examples[start : start + size], padding_side=side)
            got += [[t.loss for t in r.tokens] for r in batch]
        diff = max(abs(a - b) for x, y in zip(got, alone) for a, b in zip(x, y))
        passes[label] = diff
        worst = max(worst, diff)
    repeat = max(abs(a - b) for x, y in zip(alone, again) for a, b in zip(x, y))
    shown = ", ".join(f"{k} {v:.2e}" for k, v in passes.items())
    print(
        f"| {name} | {len(examples)} × ≤{longest} | {shown} | {worst:.2e} | {bound:.2e} "
        f"| {bound / max(worst, 1e-30):.0f} | {repeat:.0e} |"
    )


def main() -> None:
    from conftest import build_model
    from test_batch import RECORDS

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"\n{cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads")
    mkl = torch.backends.mkl.is_available()
    print(f"(OMP_NUM_THREADS={threads}, MKL_CBWR={os.environ.get('MKL_CBWR')}, MKL: {mkl})\n")
    print("| model | examples | largest |Δ loss| per pass | largest | bound | bound / largest | same shape twice |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "gpt2", "gemma2"):
            folder = build_model(Path(tmp) / arch, arch, add_bos=arch != "gpt2")
            measure(f"tiny {arch}", load(str(folder), device="cpu", quiet=True), RECORDS)
    if "--tiny-only" not in sys.argv:
        pairs = [json.loads(line) for line in (ROOT / "samples" / "pairs.jsonl").read_text().splitlines() if line]
        measure("SmolLM2-135M", load(None, device="cpu", quiet=True), pairs)


if __name__ == "__main__":
    main()
