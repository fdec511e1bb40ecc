"""The GPU table: `run` and `batch` on SmolLM2 and on a larger random-weight model, whenever CUDA is here.

    python bench/gpu.py                    # bench/results/gpu.md and gpu.json (~5-10 min on one GPU)
    python bench/gpu.py --quick            # fewer records and sizes: a smoke test
    python bench/gpu.py --device cpu --quick   # the same code paths on CPU (no memory columns)

Without a CUDA GPU (and without --device cpu) it writes bench/results/gpu.md saying so, with the
machine it ran on, instead of leaving the table out silently.

What it measures, per model (SmolLM2-135M, bundled; and a ~1.1B Llama made from a config with random
weights, which is fine for throughput and memory) and per dtype (float32, bfloat16):

- run: one prompt/answer example at several prompt lengths through ``score_encoded`` (one forward, the
  output head only at scored positions) against the usual way (``model(input_ids, labels=labels)``, then
  ``log_softmax`` over the full logits): time and peak GPU memory beyond the loaded model
  (``torch.cuda.max_memory_allocated``), and how far the two mean losses are apart.
- batch: 256 short chat-sized records (seeded random ids laid out like prompt/answer pairs) through
  ``score_batch`` in length-sorted batches of 1, 8, 16 and 32, as ``batch`` runs them: sequence tokens
  per second, the speed-up over batch 1 (the issue's target: batch 16 at least 4x batch 1), and peak
  memory.
- verify: every bfloat16 cell is scored with ``verify=True`` (the model's own loss from its labels
  against ce-inspect's mean NLL of the same example) and the table shows the largest difference; float32
  per-example means are compared with bfloat16's.
- torchrun: with two or more GPUs, the same records through ``torchrun --nproc-per-node <GPUs> -m
  ce_inspect batch`` against one process, tokens per second from each summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ce_inspect, whatever copy is installed
sys.path.insert(0, str(ROOT / "bench"))

from bench import make_example, make_records, naive_score  # noqa: E402

# A TinyLlama-sized Llama (about 1.1B parameters with SmolLM2's 49,152-token vocabulary).
LARGE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}
BATCH_SIZES = (1, 8, 16, 32)


def machine(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": device,
        "cpu_cores": os.cpu_count(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def build_large(folder: Path, tokenizer, seed: int = 0) -> Path:
    """Save a random-weight Llama of the LARGE shape with SmolLM2's tokenizer (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LARGE,
    )
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # half the bytes to write; loaded in each dtype
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


class Gpu:
    """Synchronisation and peak memory on CUDA; no-ops on CPU (a smoke test of the code paths)."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak(self, base: int) -> int | None:
        if not self.cuda:
            return None
        self.sync()
        return self.torch.cuda.max_memory_allocated() - base


def timed(fn, gpu: Gpu, reps: int) -> tuple[float, object]:
    """Median seconds of ``reps`` calls (after one warm-up call), and the last call's value."""
    value = fn()
    gpu.sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        value = fn()
        gpu.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def bench_run(lm, gpu: Gpu, prompts: list[int], answer: int, reps: int) -> list[dict]:
    from ce_inspect.scoring import ScoreOptions, score_encoded

    rows = []
    for n, prompt in enumerate(prompts):
        example = make_example(lm.tokenizer, prompt, answer + 1, seed=100 + n)
        row: dict = {"prompt": prompt, "answer": answer}
        for path, fn in (
            ("ce", lambda ex=example: [t.loss for t in score_encoded(lm, ex, ScoreOptions()).tokens]),
            ("usual", lambda ex=example: naive_score(lm, ex)),
        ):
            try:
                base = gpu.start()
                seconds, losses = timed(fn, gpu, reps)
                row[path] = {"seconds": seconds, "peak": gpu.peak(base), "mean_loss": statistics.fmean(losses)}
            except Exception as exc:  # noqa: BLE001 - out of memory is a result here, not a crash
                row[path] = {"error": type(exc).__name__ + ": " + str(exc).splitlines()[0][:120]}
                gpu.torch.cuda.empty_cache() if gpu.cuda else None
        rows.append(row)
    return rows


def bench_batch(lm, gpu: Gpu, records, sizes, reps: int, verify: bool) -> dict:
    from ce_inspect.scoring import ScoreOptions, score_batch

    order = sorted(range(len(records)), key=lambda i: (-len(records[i]), i))  # as `batch` plans: longest first
    tokens = sum(len(r) for r in records)
    out: dict = {"records": len(records), "sequence_tokens": tokens, "sizes": {}}
    for size in sizes:

        def go(size=size):
            means = [0.0] * len(records)
            for start in range(0, len(order), size):
                part = order[start : start + size]
                for i, result in zip(part, score_batch(lm, [records[i] for i in part], ScoreOptions())):
                    means[i] = result.summary.mean
            return means

        try:
            base = gpu.start()
            seconds, means = timed(go, gpu, reps)
            out["sizes"][size] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak": gpu.peak(base)}
            out.setdefault("means", means)
            out["sizes"][size]["max_abs_diff_vs_batch1"] = max(abs(a - b) for a, b in zip(means, out["means"]))
        except Exception as exc:  # noqa: BLE001
            out["sizes"][size] = {"error": type(exc).__name__ + ": " + str(exc).splitlines()[0][:120]}
    if verify:  # the model's own loss against ours, on every record, in the batches `batch` would use
        diffs = []
        for start in range(0, len(order), 8):
            part = [records[i] for i in order[start : start + 8]]
            diffs += [r.summary.verify_abs_diff for r in score_batch(lm, part, ScoreOptions(verify=True))]
        out["verify_max_abs_diff"] = max(diffs)
    return out


def bench_torchrun(model: str, device: str, dtype: str, records, folder: Path, gpus: int) -> dict:
    """The same records through `ce-inspect batch`: one process, then torchrun over every GPU."""
    data = folder / "records.jsonl"
    with open(data, "w") as fh:
        for r in records:
            fh.write(json.dumps({"input_ids": list(r.input_ids), "labels": list(r.labels)}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = {}
    for name, launcher in (
        ("1 process", [sys.executable, "-m", "ce_inspect"]),
        (
            f"torchrun x{gpus}",
            [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "ce_inspect"],
        ),
    ):
        target, summary = folder / f"out-{gpus if 'torch' in name else 1}.jsonl", folder / "summary.json"
        cmd = [*launcher, "batch", str(data), "--model", model, "--dtype", dtype, "--device", device, "-b", "16"]
        cmd += ["-o", str(target), "--force", "--summary-json", str(summary), "--no-sequence"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            out[name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
            continue
        s = json.loads(summary.read_text())
        out[name] = {
            "wall_s": wall,
            "tokens_per_s": s["batching"]["tokens_per_second"],
            "loss": s["token_weighted_mean_loss"],
        }
    return out


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def render(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU table", "", f"Machine: {json.dumps(m)}", ""]
    if report.get("skipped"):
        lines += [f"**Not measured: {report['skipped']}.**", ""]
        lines += [
            "There is no GPU table yet, so none of these is measured: tokens/s at batch 1/8/16/32 for SmolLM2 and",
            "the ~1.1B random Llama, the issue's target (batch 16 at least 4x batch 1 on a GPU), peak GPU memory",
            "against the full-logits way, the bfloat16 `--verify` differences, and torchrun over several GPUs.",
            "Run `python bench/gpu.py` on a machine with a CUDA GPU to replace this file with the table.",
            "",
        ]
        return "\n".join(lines)
    for model in report["models"]:
        lines += [f"## {model['name']} ({model['parameters'] / 1e6:,.0f}M parameters)", ""]
        for cell in model["dtypes"]:
            dtype = cell["dtype"]
            lines += [f"### {dtype}", "", "run: one example, answer of 32 tokens", ""]
            lines += ["| prompt | ce-inspect time | usual time | ce-inspect peak | usual peak | ratio | Δ mean loss |"]
            lines += ["|---:|---:|---:|---:|---:|---:|---:|"]
            for row in cell["run"]:
                ce, usual = row["ce"], row["usual"]
                if "error" in ce or "error" in usual:
                    lines.append(f"| {row['prompt']:,} | {ce.get('error', '')} | {usual.get('error', '')} | | | | |")
                    continue
                ratio = f"{ce['peak'] / usual['peak']:.1%}" if ce["peak"] and usual["peak"] else "n/a"
                lines.append(
                    f"| {row['prompt']:,} | {ce['seconds']:.3f} s | {usual['seconds']:.3f} s | {mib(ce['peak'])} | "
                    f"{mib(usual['peak'])} | {ratio} | {abs(ce['mean_loss'] - usual['mean_loss']):.1e} |"
                )
            b = cell["batch"]
            lines += ["", f"batch: {b['records']} records, {b['sequence_tokens']:,} sequence tokens", ""]
            lines += [
                "| batch size | tokens/s | × batch 1 | peak | max Δ per-example mean vs batch 1 |",
                "|---:|---:|---:|---:|---:|",
            ]
            one = b["sizes"].get(1, {}).get("tokens_per_s")
            for size, s in b["sizes"].items():
                if "error" in s:
                    lines.append(f"| {size} | {s['error']} | | | |")
                    continue
                speedup = f"{s['tokens_per_s'] / one:.2f}×" if one else "n/a"
                diff = s["max_abs_diff_vs_batch1"]
                lines.append(f"| {size} | {s['tokens_per_s']:,.0f} | {speedup} | {mib(s['peak'])} | {diff:.1e} |")
            if "verify_max_abs_diff" in b:
                lines += [
                    "",
                    f"--verify: largest |model's own loss − ce-inspect's mean NLL| = {b['verify_max_abs_diff']:.2e}",
                ]
            if "vs_float32" in cell:
                lines += [f"bfloat16 vs float32 per-example mean loss: largest difference {cell['vs_float32']:.2e}"]
            lines.append("")
        if model.get("torchrun"):
            lines += [
                "### torchrun",
                "",
                "| launch | tokens/s | wall | token-weighted mean loss |",
                "|---|---:|---:|---:|",
            ]
            for name, r in model["torchrun"].items():
                if "error" in r:
                    lines.append(f"| {name} | {r['error']} | | |")
                else:
                    lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.1f} s | {r['loss']:.6f} |")
            lines.append("")
    return "\n".join(lines)


def bench_model(name: str, path: str | None, args, gpu: Gpu, folder: Path) -> dict:
    from ce_inspect import load

    result: dict = {"name": name, "dtypes": []}
    float32_means = None
    for dtype in args.dtypes:
        lm = load(path, device=args.device, dtype=dtype, quiet=True)
        result["parameters"] = sum(p.numel() for p in lm.model.parameters())
        records = make_records(lm.tokenizer, args.records, seed=7, prompt_range=(16, 256), answer_range=(8, 128))
        cell = {"dtype": dtype, "run": bench_run(lm, gpu, args.prompts, 32, args.reps)}
        cell["batch"] = bench_batch(lm, gpu, records, args.batch_sizes, args.reps, verify=dtype != "float32")
        means = cell["batch"].pop("means", None)
        if dtype == "float32":
            float32_means = means
        elif float32_means and means:
            cell["vs_float32"] = max(abs(a - b) for a, b in zip(means, float32_means))
        result["dtypes"].append(cell)
        print(f"  {name} {dtype}: done", file=sys.stderr)
        del lm
        gpu.torch.cuda.empty_cache() if gpu.cuda else None
    if gpu.cuda and gpu.torch.cuda.device_count() >= 2 and not args.quick:
        model = path or "default"
        from ce_inspect import load as _load

        tok = _load(path, device="cpu", quiet=True).tokenizer
        records = make_records(tok, args.records * 4, seed=9, prompt_range=(16, 256), answer_range=(8, 128))
        result["torchrun"] = bench_torchrun(model, "cuda", "bfloat16", records, folder, gpu.torch.cuda.device_count())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu (smoke test)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-large", action="store_true", help="SmolLM2 only")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (bfloat16 is slow on CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="gpu")
    args = parser.parse_args()

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(args.device or "none")}
    if args.device is None:
        report["skipped"] = "no CUDA GPU was available on this machine when the script ran"
        (out / f"{args.name}.md").write_text(render(report))
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"No CUDA GPU here: wrote {out / args.name}.md saying so.", file=sys.stderr)
        return
    args.dtypes = args.dtypes.split(",")
    args.prompts = [256, 1024] if args.quick else [256, 1024, 4096, 16384]
    args.records = 32 if args.quick else 256
    args.batch_sizes = (1, 8) if args.quick else BATCH_SIZES
    args.reps = 1 if args.quick else 3
    gpu = Gpu(args.device)
    report["models"] = []
    with tempfile.TemporaryDirectory() as tmp:
        report["models"].append(bench_model("SmolLM2-135M-Instruct (bundled)", None, args, gpu, Path(tmp)))
        if not args.no_large:
            from ce_inspect import load

            tokenizer = load(None, device="cpu", quiet=True).tokenizer
            large = build_large(Path(tmp) / "large", tokenizer)
            report["models"].append(
                bench_model("Llama ~1.1B from a config, random weights", str(large), args, gpu, Path(tmp))
            )
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{args.name}.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
