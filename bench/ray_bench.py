"""Records per second of one data set scored four ways, measured in one run: `ce-inspect batch` (one process),
`torchrun --nproc-per-node 2 -m ce_inspect batch`, and Ray Data's `map_batches` with
`ce_inspect.integrations.ray.ScoreBatch` on 1 and 2 actors (one CPU each, on a local 4-CPU Ray cluster).

    python bench/ray_bench.py                       # 256 records, the bundled SmolLM2, CPU
    python bench/ray_bench.py --records 512 --model path/to/model

Each way is timed twice: the whole run (process or cluster start, model load, scoring, output) and the
scoring alone (batch's and torchrun's summary `batching.seconds`; for Ray, the summed time inside each
actor's calls, the busiest actor's). Every way's per-record mean loss is checked against `batch`'s (1e-5). Writes
bench/results/ray-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not an installed copy
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe  # noqa: E402

from ce_inspect.integrations.ray import ScoreBatch  # noqa: E402

WORDS = "the cat sat on a mat while the model read every token of the answer and scored it".split()


def write_data(path: Path, n: int) -> None:
    """``n`` prompt/answer pairs of 8 to 71 answer words (deterministic)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            length = 8 + (i * 37) % 64
            answer = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(length))
            fh.write(
                json.dumps({"n": i + 1, "id": f"r{i}", "prompt": f"Question {i}: what next?", "answer": " " + answer})
            )
            fh.write("\n")


class TimedScoreBatch(ScoreBatch):
    """ScoreBatch with the seconds of each call in a column (the bench's, not the library's)."""

    def __call__(self, batch):
        start = time.perf_counter()
        out = super().__call__(batch)
        out["_seconds"] = (time.perf_counter() - start) / len(out)
        out["_actor"] = os.getpid()
        return out


def run_cli(command: list[str], out: Path) -> tuple[float, float, dict[int, float]]:
    summary = out.with_suffix(".summary.json")
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [*command, "-o", str(out), "--summary-json", str(summary), "--force"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    scoring = json.loads(summary.read_text())["batching"]["seconds"]
    means = {d["line"]: d["summary"]["mean"] for d in map(json.loads, out.read_text().splitlines())}
    return wall, scoring, means


def run_ray(data: Path, model: str | None, actors: int, batch_size: int) -> tuple[float, float, dict[int, float]]:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        kwargs = {"model": model, "device": "cpu", "line_column": "n"}
        ds = ray.data.read_json(str(data))
        pool = ray.data.ActorPoolStrategy(size=actors)
        rows = ds.map_batches(TimedScoreBatch, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                              batch_format="pandas", compute=pool).take_all()  # fmt: skip
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    busy: dict[int, float] = {}
    for r in rows:
        busy[r["_actor"]] = busy.get(r["_actor"], 0.0) + r["_seconds"]
    scoring = max(busy.values())  # the actors score side by side: the busiest one's time
    return wall, scoring, {r["n"]: r["mean"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--ray-batch-size", type=int, default=8, help="records per map_batches call")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray-cpu.md"))
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        write_data(data, args.records)
        cli = [sys.executable, "-m", "ce_inspect", "batch", str(data), "--device", "cpu", *model]
        torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "-m", "ce_inspect",
                    "batch", str(data), "--device", "cpu", *model]  # fmt: skip
        run_cli(cli, Path(tmp) / "warmup.jsonl")  # the model's cache and the OS's file cache warm
        results = {
            "`batch` (1 process, 2 threads)": run_cli(cli, Path(tmp) / "batch.jsonl"),
            "`torchrun --nproc-per-node 2` (1 thread each)": run_cli(torchrun, Path(tmp) / "torchrun.jsonl"),
            "Ray, 1 actor (1 CPU)": run_ray(data, args.model, 1, args.ray_batch_size),
            "Ray, 2 actors (1 CPU each)": run_ray(data, args.model, 2, args.ray_batch_size),
        }
    write_report(args, results)


def write_report(args: argparse.Namespace, results: dict[str, tuple[float, float, dict[int, float]]]) -> None:
    base_wall, base_scoring, base_means = next(iter(results.values()))
    rows = []
    for name, (wall, scoring, means) in results.items():
        assert means.keys() == base_means.keys(), name
        worst = max(abs(means[k] - base_means[k]) for k in means)
        assert worst < 1e-5, (name, worst)
        n = len(means)
        rows.append(
            f"| {name} | {wall:.1f} | {n / wall:.1f} | {base_wall / wall:.2f} | {scoring:.1f} | {n / scoring:.1f} | "
            f"{base_scoring / scoring:.2f} | {worst:.1e} |"
        )
    one_actor = results["Ray, 1 actor (1 CPU)"]
    per_actor = len(one_actor[2]) / one_actor[1]
    text = "\n".join(
        [
            "# Ray Data's map_batches against batch and torchrun (CPU)",
            "",
            f"`python bench/ray_bench.py --records {args.records}` on {describe()}; model "
            f"{args.model or 'the bundled SmolLM2-135M-Instruct'}; {args.records} prompt/answer records (8 to 71 "
            f"answer words); Ray batches of {args.ray_batch_size} records. One run: the ratios are of the same run.",
            "",
            "| way | whole run (s) | records/s | vs batch | scoring (s) | records/s scoring | vs batch | max Δ mean |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Per Ray actor (1 CPU, scoring only): {per_actor:.1f} records/s.",
            "",
        ]
    )
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
