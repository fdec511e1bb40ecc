"""Result building: the time to turn a batch's flat figure lists into results, by number of scored tokens.

    python bench/result_building.py                  # bundled SmolLM2's tokenizer: bench/results/result-building-cpu.md
    python bench/result_building.py --model DIR --sizes 1024,16384 --repeats 5

``scoring.build_results`` builds every token's record (text, piece, rank, top-k alternatives, the whole-sequence
view) from the figures the forward pass produced. It is one pass over the figure lists, so its time per
token stays flat as the example grows. Re-slicing the lists for every token, as it once did, made it grow
with the length: ~1.7 s at 16,384 tokens, against under 0.2 s once fixed, with the tests' tiny byte-level
tokenizer (``--model`` a folder of ``tests/conftest.py::build_model``). The test suite holds the one pass
without a clock (``tests/test_chunking.py::test_result_building_is_one_pass_at_16k_scored_tokens`` counts
the entries copied); this script measures its time.

The figures are made up (seeded): what they say does not change the work. Each size is timed as this
process's CPU time, the least of ``--repeats`` runs with the garbage collector paused (a collection would
walk every object the process holds, not this step's work); CPU time still grows when cores are shared,
so the report records the load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not an installed copy
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic batch the test of the one pass uses

from conftest import synthetic_batch  # noqa: E402
from machine import describe as machine  # noqa: E402

from ce_inspect import ScoreOptions, load  # noqa: E402
from ce_inspect.scoring import build_results  # noqa: E402


def cpu_seconds(lm, n_scored: int, top_k: int, repeats: int) -> list[float]:
    """CPU time of ``build_results`` on one example of ``n_scored`` scored tokens, once per repeat."""
    options = ScoreOptions(top_k=top_k)
    example, figures = synthetic_batch(n_scored, len(lm.tokenizer), top_k)
    (result,) = build_results(lm, [example], figures, [None], options)  # a warm-up, and a check of what it built
    assert [t.loss for t in result.tokens] == figures["loss"]
    assert math.isclose(result.summary.sum, math.fsum(figures["loss"]), rel_tol=1e-9)
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.process_time()
            build_results(lm, [example], figures, [None], options)
            times.append(time.process_time() - start)
    finally:
        gc.enable()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or id (default: the bundled SmolLM2)")
    parser.add_argument("--sizes", default="1024,4096,16384", help="scored tokens per example")
    parser.add_argument("--top-k", default="0,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "result-building-cpu"))
    args = parser.parse_args()

    lm = load(args.model, device="cpu", quiet=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    load_before = os.getloadavg()[0]
    rows = []
    for top_k in (int(k) for k in args.top_k.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            times = cpu_seconds(lm, n, top_k, args.repeats)
            rows.append({"top_k": top_k, "scored_tokens": n, "cpu_s": times, "best_s": min(times)})
            print(f"top-k {top_k}, {n:,} tokens: {min(times):.3f} s", flush=True)
    load_after = os.getloadavg()[0]
    report = [
        "# Result building (`scoring.build_results`) by scored tokens",
        "",
        "Command: `" + " ".join(["python bench/result_building.py", *sys.argv[1:]]) + "`",
        f"Commit: {commit.stdout.strip() or 'unknown'}; model: {lm.name}; machine: {machine()}",
        f"Load average before: {load_before:.1f}, after: {load_after:.1f}. CPU time of this process, the least of "
        f"{args.repeats} runs, garbage collector paused.",
        "",
        "| top-k | scored tokens | CPU s | µs per token |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        per = row["best_s"] / row["scored_tokens"] * 1e6
        report.append(f"| {row['top_k']} | {row['scored_tokens']:,} | {row['best_s']:.3f} | {per:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(report) + "\n", encoding="utf-8")
    doc = {"commit": commit.stdout.strip(), "model": lm.name, "machine": machine(), "load": [load_before, load_after]}
    out.with_suffix(".json").write_text(json.dumps({**doc, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
