"""How much faster `batch --batch-size 8` scores a data set than `--batch-size 1`, measured in one run.

    python bench/batch_speed.py                      # samples/pairs.jsonl, bundled SmolLM2, CPU
    python bench/batch_speed.py --repeats 5 --model path/to/model --device cuda

The model is loaded once; each configuration then runs the same engine as the command (scan, batches,
one JSON line per example to a scratch file) and is timed from the first forward pass to the last line.
Configurations alternate within each round, so a machine shared with other jobs slows neighbours alike;
the speed-up is reported as the ratio of the fastest runs (the least disturbed estimate, as `timeit` advises)
and as the median of the per-round ratios. Every configuration is checked against batch size 1
(per-example means to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not an installed copy

from ce_inspect.dataset import BatchSettings, JsonlSink, run_scan, scan_dataset  # noqa: E402
from ce_inspect.model import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(ROOT / "samples" / "pairs.jsonl"))
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512, help="also time --max-tokens N (0: skip)")
    args = parser.parse_args()

    import torch

    lm = load(args.model, device=args.device, quiet=True)
    scan = scan_dataset(lm, args.input)
    configs = {"--batch-size 1": BatchSettings(batch_size=1), "--batch-size 8": BatchSettings(batch_size=8)}
    if args.max_tokens:
        configs[f"--max-tokens {args.max_tokens}"] = BatchSettings(batch_size=None, max_tokens=args.max_tokens)
    print(
        f"{len(scan.entries)} records from {args.input}, {sum(e.length for e in scan.entries)} tokens; "
        f"model {lm.name} on {lm.device} {lm.dtype}; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        run_once(lm, scan, configs["--batch-size 8"], Path(tmp) / "warmup.jsonl")  # first-call costs out of the way
        times: dict[str, list[float]] = {name: [] for name in configs}
        means: dict[str, list[float]] = {}
        batches: dict[str, tuple[int, float | None]] = {}
        for round_ in range(args.repeats):
            for name, settings in configs.items():
                out = Path(tmp) / f"{round_}-{name.replace(' ', '_')}.jsonl"
                seconds, summary = run_once(lm, scan, settings, out)
                times[name].append(seconds)
                means[name] = [json.loads(line)["summary"]["mean"] for line in out.read_text().splitlines()]
                batches[name] = (summary.batching.batches, summary.batching.padding_fraction)

    base = times["--batch-size 1"]
    for name, values in times.items():
        worst = max(abs(a - b) for a, b in zip(means[name], means["--batch-size 1"]))
        n, padding = batches[name]
        paired = statistics.median(b / v for b, v in zip(base, values))
        print(
            f"{name:18} fastest {min(values):5.2f} s  median {statistics.median(values):5.2f} s  "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})  {n} batches, padding {padding or 0:.0%}  "
            f"speed-up vs --batch-size 1: x{min(base) / min(values):.2f} (fastest), x{paired:.2f} (per-round median)  "
            f"max |mean - bs1 mean| {worst:.1e}",
            flush=True,
        )
        assert worst < 1e-5, f"{name} disagrees with batch size 1"


def run_once(lm, scan, settings: BatchSettings, out: Path):
    with JsonlSink.open(out) as sink:
        start = time.perf_counter()
        summary = run_scan(lm, scan, sink, settings=settings)
        return time.perf_counter() - start, summary


if __name__ == "__main__":
    main()
