"""`batch` on long-tailed lengths: the default token budget against `--batch-size 1` and lm-evaluation-harness.

    python bench/batch_budget.py                 # bundled SmolLM2, CPU: bench/results/batch-budget-cpu.md
    python bench/batch_budget.py --repeats 3 --no-lm-eval --budgets 512,2048,8192

Two data sets, generated here from a seed (the cost of a pass does not depend on what the words mean):
- ``issue``: the case of issue 9, 20 pairs where one prompt is ~1,500 tokens and the rest are short;
- ``longtail``: 120 pairs whose prompt lengths follow a log-normal law (median ~40 tokens, a few in the
  hundreds), plus the same 1,500-token prompt.

In one process, the model loaded once and every configuration warmed up first, each round runs every
configuration in turn on the same scan: ``run_scan`` as the command runs it (a JSON line per example to a
scratch file), timed from the first forward pass to the last line written. lm-evaluation-harness's
``HFLM.loglikelihood`` (its HF backend, ``batch_size`` 8, CPU, float32) gets the same prompt/answer pairs
on the same model folder. Times are the fastest of the rounds; every configuration of ce-inspect is
checked against ``--batch-size 1``, which is exactly what ``run`` computes for each example alone.

Per-record overhead outside the model is measured on the ``longtail`` set: reading the JSONL, encoding
(``batch`` encodes each record twice: once in the scan, once before its forward pass), building the
results from the figures, and writing the JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not an installed copy

from machine import describe as machine  # noqa: E402

from ce_inspect.data import encode_record, read_records  # noqa: E402
from ce_inspect.dataset import BatchSettings, JsonlSink, output_line, run_scan, scan_dataset  # noqa: E402
from ce_inspect.model import default_gguf_path, gguf_cache_folder, load  # noqa: E402
from ce_inspect.scoring import hf as scoring  # noqa: E402
from ce_inspect.scoring import score_batch  # noqa: E402

WORDS = (
    "the model reads a prompt and scores each token of the answer with the loss that training would assign "
    "while data sets of questions answers and long documents vary widely in length from a few words to pages "
    "report meeting budget river mountain city capital number seven twelve because after before during"
).split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def pairs(kind: str, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    long_prompt = "Summarize: " + text(rng, 1400)  # ~1,500 tokens with SmolLM2's tokenizer
    if kind == "issue":
        rows = [
            {"prompt": text(rng, rng.randint(5, 30)), "answer": " " + text(rng, rng.randint(3, 25))} for _ in range(19)
        ]
    else:
        rows = [
            {
                "prompt": text(rng, min(int(rng.lognormvariate(3.5, 0.9)), 900)),
                "answer": " " + text(rng, rng.randint(2, 40)),
            }
            for _ in range(120)
        ]
    rows.insert(len(rows) // 3, {"prompt": long_prompt, "answer": " " + text(rng, 20)})
    return [{"id": f"{kind}-{k}", **row} for k, row in enumerate(rows)]


def len_of(row: dict[str, str]) -> int:
    return len(row["prompt"]) + len(row["answer"])


def run_config(lm, scan, settings: BatchSettings, out: Path):
    with JsonlSink.open(out) as sink:
        start = time.perf_counter()
        summary = run_scan(lm, scan, sink, settings=settings)
        seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return seconds, summary, lines


def disagreement(lines, reference) -> tuple[float, float]:
    """Largest |difference| of per-token losses and of per-example means against the reference lines."""
    token = max(abs(a["loss"] - b["loss"]) for x, y in zip(lines, reference) for a, b in zip(x["tokens"], y["tokens"]))
    mean = max(abs(x["summary"]["mean"] - y["summary"]["mean"]) for x, y in zip(lines, reference))
    return token, mean


def lm_eval_model(folder: str, batch_size: str):
    from lm_eval.models.huggingface import HFLM

    size: int | str = int(batch_size) if batch_size.isdigit() else batch_size
    return HFLM(pretrained=folder, backend="causal", device="cpu", dtype="float32", batch_size=size)


def lm_eval_time(model, rows) -> tuple[float, int]:
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(r["prompt"], r["answer"]), idx=k)
        for k, r in enumerate(rows)
    ]
    start = time.perf_counter()
    model.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    # Its scored tokens: the continuation's tokens as it splits context and continuation (no EOS added).
    scored = sum(len(model.tok_encode(r["answer"])) for r in rows)
    return seconds, scored


def overhead(lm, scan, data: Path, out: Path) -> dict[str, float]:
    """Seconds per record spent outside the model, by step."""
    n = len(scan.entries)
    start = time.perf_counter()
    records = list(read_records(data))
    read = time.perf_counter() - start
    start = time.perf_counter()
    encoded = [encode_record(lm, r, scan.layout) for r in records]
    encode = time.perf_counter() - start
    build = [0.0]
    real_results = scoring.build_results

    def timed_results(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real_results(*args, **kwargs)
        finally:
            build[0] += time.perf_counter() - t

    scoring.build_results = timed_results
    try:
        start = time.perf_counter()
        with JsonlSink.open(out) as sink:
            run_scan(lm, scan, sink, settings=BatchSettings())
        total = time.perf_counter() - start
    finally:
        scoring.build_results = real_results
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # Writing: the output document (to_dict) and its JSON line, timed on results rebuilt for the purpose.
    results = [score_batch(lm, [e])[0] for e in encoded[:20]]
    entries = [e for e in scan.entries if e.pending][:20]
    start = time.perf_counter()
    with JsonlSink.open(out.with_suffix(".again")) as sink:
        for entry, result in zip(entries, results):
            sink.write(output_line(entry, result))
    write = (time.perf_counter() - start) / len(results) * n
    del lines
    return {
        "read": read / n,
        "encode (x2: scan and batch)": 2 * encode / n,
        "build results": build[0] / n,
        "write JSON line": write / n,
        "whole run_scan": total / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sets", default="issue,longtail")
    parser.add_argument("--budgets", default="", help="also time these --max-tokens values, e.g. 512,2048,8192")
    parser.add_argument("--no-lm-eval", action="store_true")
    parser.add_argument("--lm-eval-batch-size", default="8")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch-budget-cpu.md"))
    args = parser.parse_args()

    import torch

    lm = load(device="cpu", quiet=True)
    folder = gguf_cache_folder(default_gguf_path())
    evaluator = None if args.no_lm_eval else lm_eval_model(folder, args.lm_eval_batch_size)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report = [
        "# `batch` by token budget on long-tailed lengths",
        "",
        "Command: `" + " ".join(["python bench/batch_budget.py", *sys.argv[1:]]) + "`",
        f"Commit: {commit.stdout.strip() or 'unknown'}; machine: {machine()}; load average before: "
        f"{os.getloadavg()[0]:.1f}",
        "In-process timings (model loaded once, every configuration warmed up), fastest of "
        f"{args.repeats} rounds; `bs1` is what `run` computes for each example alone.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in args.sets.split(","):
            rows = pairs(kind)
            data = tmp / f"{kind}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            scan = scan_dataset(lm, data)
            configs = {"default": BatchSettings(), "--batch-size 1": BatchSettings(batch_size=1)}
            for budget in filter(None, args.budgets.split(",")):
                configs[f"--max-tokens {budget}"] = BatchSettings(max_tokens=int(budget))
            lengths = sorted(e.length for e in scan.entries)
            print(
                f"{kind}: {len(rows)} pairs, lengths {lengths[0]}..{lengths[-1]} (median {statistics.median(lengths)})",
                flush=True,
            )
            warm_data = tmp / "warm.jsonl"  # first-call costs out of the way, on a few pairs of each length
            warm_data.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [max(rows, key=len_of)]))
            for settings in configs.values():
                run_config(lm, scan_dataset(lm, warm_data), settings, tmp / "warm-out.jsonl")
            if evaluator is not None:
                lm_eval_time(evaluator, rows[:2] + [max(rows, key=len_of)])
            times: dict[str, list[float]] = {name: [] for name in configs}
            if evaluator is not None:
                times["lm-eval loglikelihood"] = []
            outcome = {}
            for _ in range(args.repeats):
                for name, settings in configs.items():
                    seconds, summary, lines = run_config(lm, scan, settings, tmp / f"{name}.jsonl")
                    times[name].append(seconds)
                    outcome[name] = (summary, lines)
                if evaluator is not None:
                    seconds, lm_eval_scored = lm_eval_time(evaluator, rows)
                    times["lm-eval loglikelihood"].append(seconds)
                print("  round: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
            reference = outcome["--batch-size 1"][1]
            report += [
                f"## `{kind}`: {len(rows)} pairs, sequence lengths {lengths[0]} to {lengths[-1]} tokens "
                f"(median {statistics.median(lengths):g}), {sum(lengths):,} tokens",
                "",
                "| configuration | rows / budget | batches | padding | seconds | scored tok/s | vs bs1 | "
                "max \\|token loss - bs1\\| | max \\|mean - bs1\\| |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            base = min(times["--batch-size 1"])
            for name in configs:
                summary, lines = outcome[name]
                b = summary.batching
                token, mean = disagreement(lines, reference)
                best = min(times[name])
                report.append(
                    f"| {name} | {b.batch_size} / {b.max_tokens} | {b.batches} | {b.padding_fraction:.1%} | "
                    f"{best:.2f} | {summary.scored_tokens / best:,.0f} | {base / best:.2f}x | "
                    f"{token:.2e} | {mean:.2e} |"
                )
            if evaluator is not None:
                best = min(times["lm-eval loglikelihood"])
                report.append(
                    f"| lm-eval `loglikelihood`, batch_size {args.lm_eval_batch_size} | | | | {best:.2f} | "
                    f"{lm_eval_scored / best:,.0f} | {base / best:.2f}x | | |"
                )
            report += [
                "",
                "Rounds (s): " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vs)}" for k, vs in times.items()),
                "",
            ]
            if kind == "longtail":
                per = overhead(lm, scan, data, tmp / "overhead.jsonl")
                report += ["Per-record time outside the model (`longtail`, default settings, ms per record):", ""]
                report += [f"- {k}: {v * 1000:.2f} ms" for k, v in per.items()]
                report.append("")
            Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")  # what is done so far
    report.append(f"Load average after: {os.getloadavg()[0]:.1f}. Torch threads: {torch.get_num_threads()}.")
    Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
