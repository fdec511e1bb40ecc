"""Benchmark ce-inspect against the usual ways, on the same model and inputs, in one run.

    python bench/bench.py                # full run (~8 min on a 2-core CPU); writes bench/results/cpu.{md,json}
    python bench/bench.py --quick        # smaller sizes and fewer repeats: a smoke test (~4 min)
    python bench/bench.py --sections memory,startup --out /tmp/bench
    python bench/bench.py --sections diff --name cpu-diff   # the diff row (~3 min)

What it measures (each figure is a median over repeats; every ratio comes from this one run):

* memory: peak memory and time of ce-inspect's scoring (``score_encoded``) against the usual way,
  ``model(input_ids, labels=labels)`` then a log-softmax over the full logits, for prompts of 256 to
  4,096 tokens (16,384 with ``--long``, or on a GPU) with a 32-token answer, and a 2,048-token answer.
  Each configuration runs in a fresh process; on CPU the peak is the process's peak RSS (VmHWM), on CUDA
  ``torch.cuda.max_memory_allocated``. "Extra" is the peak minus the peak of the same path on a 16-token
  prompt: what the long input costs beyond the model itself.
* batch: scored tokens per second of ``score_batch`` at batch sizes 1, 4 and 16 against a plain loop that
  scores the same records one at a time the usual way (and ``ce-inspect batch`` when that command exists).
* startup: wall time of ``python -m ce_inspect run`` (warm cache) against ``bench/floor.py``, a minimal
  script that loads the same model and runs one forward pass, and of ``python -m ce_inspect --help``.

Inputs are seeded random token ids (the cost of a forward pass does not depend on what the tokens say),
so every machine scores exactly the same sequences. The machine is shared in many setups: the report
records the load average before and after, and per-configuration CPU time next to wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's ce_inspect, whatever copy is installed
RESULT = "BENCH-RESULT "
PROMPT = "Where is the capital of China?"
ANSWER = " The capital of China is Beijing."


# --- inputs ---------------------------------------------------------------------------------------------


def make_example(tokenizer, prompt_tokens: int, scored_tokens: int, seed: int):
    """An Encoded example: [BOS if any] + ``prompt_tokens`` random ids (masked) + ``scored_tokens - 1``
    random ids and EOS (scored), laid out as ce-inspect's encoder lays out a prompt/answer pair."""
    from ce_inspect.text import IGNORE_INDEX, Encoded, special_prefix

    rng = random.Random(seed)
    reserved = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    first = max(reserved) + 1 if reserved else 0
    vocab = len(tokenizer)
    bos = special_prefix(tokenizer)
    prompt = [rng.randrange(first, vocab) for _ in range(prompt_tokens)]
    answer = [rng.randrange(first, vocab) for _ in range(scored_tokens - 1)] + [tokenizer.eos_token_id]
    ids = bos + prompt + answer
    masked = len(bos) + len(prompt)
    return Encoded(
        input_ids=tuple(ids),
        labels=tuple([IGNORE_INDEX] * masked + answer),
        segments=tuple(["bos"] * len(bos) + ["prompt"] * len(prompt) + ["answer"] * (len(answer) - 1) + ["eos"]),
        layout={"kind": "pair", "prompt_tokens": len(prompt), "answer_tokens": len(answer) - 1},
    )


def make_records(tokenizer, count: int, seed: int, prompt_range=(8, 64), answer_range=(4, 32)):
    """Short chat-style records: prompt and answer lengths drawn uniformly from the ranges."""
    rng = random.Random(seed)
    return [
        make_example(tokenizer, rng.randint(*prompt_range), rng.randint(*answer_range) + 1, seed + 1 + i)
        for i in range(count)
    ]


# --- the usual way --------------------------------------------------------------------------------------


def naive_score(lm, example) -> list[float]:
    """``model(input_ids, labels=labels)``, then per-token figures from a log-softmax over all logits."""
    import torch

    device = lm.model.get_input_embeddings().weight.device
    ids = torch.tensor([example.input_ids], device=device)
    labels = torch.tensor([[t if t != example.ignore_index else -100 for t in example.labels]], device=device)
    with torch.no_grad():
        out = lm.model(input_ids=ids, labels=labels)
        logp = torch.log_softmax(out.logits.float(), dim=-1)[0, :-1]  # [seq-1, vocab]
        targets = ids[0, 1:]
        target_logp = logp.gather(-1, targets[:, None])[:, 0]  # [seq-1]
        rank = (logp > target_logp[:, None]).sum(-1) + 1
        top = logp.max(dim=-1)
        scored = labels[0, 1:] != -100
        losses = (-target_logp[scored]).tolist()
        _figures = rank[scored].tolist(), top.values[scored].tolist(), top.indices[scored].tolist()
    return losses


# --- measurement helpers --------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def timed_runs(fn, sync, *, max_reps: int, budget_s: float) -> list[float]:
    """Run ``fn`` until ``max_reps`` runs or ``budget_s`` seconds are spent (at least once)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start + times[-1] > budget_s:
            break
    return times


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --- workers: each runs in a fresh process and prints one JSON line -------------------------------------


def worker_score(spec: dict) -> dict:
    import torch

    from ce_inspect import load
    from ce_inspect.scoring import ScoreOptions, score_encoded

    lm = load(device=spec["device"], quiet=True)
    cuda = lm.model.get_input_embeddings().weight.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    example = make_example(lm.tokenizer, spec["prompt"], spec["scored"], seed=spec["seed"])
    warm = make_example(lm.tokenizer, 8, 4, seed=spec["seed"] + 1)
    if spec["path"] == "ce":
        options = ScoreOptions()

        def run(ex=example):
            return [t.loss for t in score_encoded(lm, ex, options).tokens]
    elif spec["path"] == "body":
        body = lm.model.get_decoder()

        def run(ex=example):  # the model's own activations: the transformer body alone, no head, no cache
            with torch.inference_mode():
                body(input_ids=torch.tensor([ex.input_ids], device=lm.model.device), use_cache=False)
            return []
    else:

        def run(ex=example):
            return naive_score(lm, ex)

    # First touch of the weights (the head's too, for every path: same baseline), kernel selection.
    score_encoded(lm, warm, ScoreOptions())
    run(warm)
    sync()
    rss_loaded = peak_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    cpu0 = cpu_seconds()
    last: dict[str, list[float]] = {}

    def once() -> None:
        last["losses"] = run()

    times = timed_runs(once, sync, max_reps=spec["reps"], budget_s=spec["budget"])
    out = {
        "times": times,
        "cpu_s": (cpu_seconds() - cpu0) / len(times),
        "peak_rss": peak_rss_bytes(),
        "rss_after_warmup": rss_loaded,
        "mean_loss": statistics.fmean(last["losses"]) if last["losses"] else None,
        "sequence": len(example),
    }
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated() - cuda_base
    return out


def worker_batch(spec: dict) -> dict:
    import torch

    from ce_inspect import load
    from ce_inspect.scoring import ScoreOptions, score_batch

    lm = load(device=spec["device"], quiet=True)
    cuda = lm.model.get_input_embeddings().weight.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    records = make_records(lm.tokenizer, spec["records"], seed=spec["seed"])
    scored = sum(len(r.scored_positions) for r in records)
    options = ScoreOptions()

    def loop(recs):
        return [statistics.fmean(naive_score(lm, r)) for r in recs]

    def batched(size: int, by_length: bool = False):
        def go(recs):
            order = sorted(range(len(recs)), key=lambda i: len(recs[i])) if by_length else list(range(len(recs)))
            means = [0.0] * len(recs)
            for start in range(0, len(order), size):
                part = order[start : start + size]
                for i, result in zip(part, score_batch(lm, [recs[i] for i in part], options)):
                    means[i] = result.summary.mean
            return means

        return go

    methods = {
        "loop": loop,
        "batch1": batched(1),
        "batch4": batched(4),
        "batch16": batched(16),
        "batch16_sorted": batched(16, by_length=True),
    }
    for fn in methods.values():  # warm-up on a few records: first-touch of weights, kernel selection
        fn(records[:16])
    sync()
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    means: dict[str, list[float]] = {}
    for _ in range(spec["reps"]):
        for name, fn in methods.items():  # interleaved, so a busy moment hits every method alike
            c, t = cpu_seconds(), time.perf_counter()
            means[name] = fn(records)
            sync()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(cpu_seconds() - c)
    diff = max(abs(a - b) for name in methods for a, b in zip(means[name], means["loop"]))
    return {"times": times, "cpu_s": cpu, "scored_tokens": scored, "records": len(records), "max_abs_diff": diff}


def naive_diff(ref, cand, example) -> list[float]:
    """The usual way to compare two models: both models' full logits, log-softmax, ``kl_div`` per position."""
    import torch

    ids = torch.tensor([example.input_ids], device=ref.model.get_input_embeddings().weight.device)
    rows = torch.tensor([p - 1 for p in example.scored_positions])
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref.model(input_ids=ids).logits.float(), dim=-1)[0]  # [seq, vocab]
        cand_logp = torch.log_softmax(cand.model(input_ids=ids).logits.float(), dim=-1)[0]  # [seq, vocab]
        kl = torch.nn.functional.kl_div(cand_logp, ref_logp, log_target=True, reduction="none").sum(-1)  # [seq]
    return kl[rows.to(kl.device)].tolist()


def worker_diff(spec: dict) -> dict:
    """One cell of the diff row: ``ce`` (ce-inspect's diff; also timed against two ``score_encoded`` calls)
    or ``naive`` (the usual way). The candidate: a copy of the model with one weight perturbed."""
    import torch

    from ce_inspect import load
    from ce_inspect.diff import diff_encoded
    from ce_inspect.scoring import ScoreOptions, score_encoded

    ref = load(device=spec["device"], quiet=True)
    cand = load(device=spec["device"], quiet=True)
    with torch.no_grad():  # a slightly different candidate, so that the two ways' KL figures can be compared
        weight = list(cand.model.get_decoder().parameters())[-1]
        weight.mul_(1 + 0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    cuda = ref.model.get_input_embeddings().weight.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    example = make_example(ref.tokenizer, spec["prompt"], spec["scored"], seed=spec["seed"])
    warm = make_example(ref.tokenizer, 8, 4, seed=spec["seed"] + 1)
    if spec["path"] == "ce":

        def run(ex=example):
            return [t.kl for t in diff_encoded(ref, cand, [ex])[0].tokens]
    else:

        def run(ex=example):
            return naive_diff(ref, cand, ex)

    for lm in (ref, cand):  # the same first touch of weights on every path
        score_encoded(lm, warm, ScoreOptions())
    run(warm)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    last: dict[str, list[float]] = {}

    def once() -> None:
        last["values"] = run()

    times = timed_runs(once, sync, max_reps=spec["reps"], budget_s=spec["budget"])
    out = {"times": times, "peak_rss": peak_rss_bytes(), "values": last["values"]}
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated() - cuda_base
    if spec["path"] == "ce":  # after the peak is read: diff and two runs timed in turn, so load hits both alike
        pairs = []
        for _ in range(spec["reps"]):
            t = time.perf_counter()
            run()
            sync()
            middle = time.perf_counter()
            for lm in (ref, cand):
                score_encoded(lm, example, ScoreOptions())
            sync()
            pairs.append((middle - t, time.perf_counter() - middle))
        out["interleaved"] = pairs
    return out


WORKERS = {"score": worker_score, "batch": worker_batch, "diff": worker_diff}


def worker_main(kind: str, spec_json: str) -> None:
    out = WORKERS[kind](json.loads(spec_json))
    sys.stdout.write(RESULT + json.dumps(out) + "\n")


# --- the orchestrator -----------------------------------------------------------------------------------


THREADS: int | None = None  # --threads: torch's intra-op threads in every child process


def child_env() -> dict:
    env = dict(os.environ)
    if THREADS:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(THREADS)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def run_worker(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def run_command(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + sys of the child) and exit status of one command."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.returncode


def machine(device: str) -> dict:
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "device": device}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        info["ram_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    probe = (
        "import json, torch, transformers; print(json.dumps({'torch': torch.__version__, "
        "'transformers': transformers.__version__, 'threads': torch.get_num_threads(), "
        "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_env())
    info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        info["commit"] = rev.stdout.strip()
    except OSError:
        pass
    return info


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def section_memory(args, device: str, log) -> dict:
    prompts = [16, 256, 1024] if args.quick else [16, 256, 1024, 4096]
    if args.long or device == "cuda":
        prompts.append(16384)
    if args.prompts:
        prompts = sorted({16, *(int(p) for p in args.prompts.split(","))})  # 16: the baseline of "extra"
    long_answer = args.long_answer if args.long_answer is not None else (512 if args.quick else 2048)
    configs = [(p, 32) for p in prompts] + ([(256, long_answer)] if long_answer else [])
    rows = []
    for prompt, scored in configs:
        row = {"prompt": prompt, "scored": scored}
        for path in ("ce", "naive", "body"):
            spec = {
                "path": path,
                "prompt": prompt,
                "scored": scored,
                "seed": 1234,
                "device": device,
                "reps": min(args.reps, 2) if path == "body" else args.reps,
                "budget": args.budget,
            }
            log(f"  memory: prompt {prompt:>6} answer {scored:>5} {path:5} ...")
            row[path] = run_worker("score", spec)
            if "error" in row[path]:
                log(f"    failed: {row[path]['error']}")
        rows.append(row)
    return {"rows": rows, "long_answer": long_answer}


def section_diff(args, device: str, log) -> dict:
    prompt = 1024 if args.quick else 4096
    rows = []
    for p in (16, prompt):
        row = {"prompt": p, "scored": 32}
        for path in ("ce", "naive"):
            spec = {"path": path, "prompt": p, "scored": 32, "seed": 1234, "device": device}
            spec.update({"reps": args.reps, "budget": args.budget})
            log(f"  diff: prompt {p:>6} {path:5} ...")
            row[path] = run_worker("diff", spec)
            if "error" in row[path]:
                log(f"    failed: {row[path]['error']}")
        rows.append(row)
    return {"rows": rows}


def render_diff(section: dict, device: str, targets: list) -> list[str]:
    key = "cuda_peak" if device == "cuda" else "peak_rss"
    small, big = section["rows"]
    lines = [
        "## diff: two models on one input, ce-inspect vs both models' full logits + `kl_div`",
        "",
        "The model and a copy with its last body weight perturbed by 5% noise, float32, in one fresh process per "
        "cell, after the same warm-up. Extra: peak "
        f"minus the same path's peak on a {small['prompt']}-token prompt (the two models themselves). Diff vs two "
        "runs: in the diff's process after its peak is read, the diff and `score_encoded` of each model on the "
        "same input, timed in turn (medians), so a busy machine slows both alike; the diff is held to 1.2x. "
        "|Δ KL|: the largest difference of a per-token KL between the two ways.",
        "",
        "| prompt | answer | diff extra | usual extra | extra ratio | diff time | usual time "
        "| diff vs two runs (interleaved) | ratio | max |Δ KL| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failed = [r[p]["error"] for r in (small, big) for p in ("ce", "naive") if "error" in r[p]]
    if failed:
        return [*lines, f"| failed: {failed[0]} |", ""]
    extra = {p: big[p][key] - small[p][key] for p in ("ce", "naive")}
    ratio = extra["ce"] / extra["naive"]
    t = {p: median(big[p]["times"]) for p in ("ce", "naive")}
    pairs = big["ce"]["interleaved"]
    t["diff"], t["runs"] = median([a for a, _ in pairs]), median([b for _, b in pairs])
    vs_run = t["diff"] / t["runs"]
    dkl = max(abs(a - b) for a, b in zip(big["ce"]["values"], big["naive"]["values"]))
    lines.append(
        f"| {big['prompt']:,} | {big['scored']} | {mib(extra['ce'])} | {mib(extra['naive'])} | {ratio:.1%} "
        f"| {t['ce']:.2f} s | {t['naive']:.2f} s | {t['diff']:.2f} s vs {t['runs']:.2f} s | {vs_run:.2f}x "
        f"| {dkl:.1e} |"
    )
    targets.append(
        (
            f"diff extra peak memory, {big['prompt']:,}-token prompt: <= 15% of the usual way",
            f"{mib(extra['ce'])} vs {mib(extra['naive'])} = {ratio:.1%}",
            ratio <= 0.15,
        )
    )
    targets.append(
        ("diff time <= 1.2x two runs", f"{t['diff']:.2f} s vs {t['runs']:.2f} s = {vs_run:.2f}x", vs_run <= 1.2)
    )
    return [*lines, ""]


def section_batch(args, device: str, log) -> dict:
    spec = {"device": device, "records": 16 if args.quick else 32, "seed": 99, "reps": max(1, args.reps // 2 + 1)}
    log(f"  batch: {spec['records']} records x {spec['reps']} repeats ...")
    out = run_worker("batch", spec)
    # The `batch` command is being written on another branch; its timing goes here once its options settle.
    if run_command([sys.executable, "-m", "ce_inspect", "batch", "--help"])[2] == 0:
        out["cli_batch"] = "present, not measured yet by this script (it times `score_batch`, which the command calls)"
    else:
        out["cli_batch"] = "skipped: `ce-inspect batch --help` fails in this checkout (the command has not landed)"
    return out


def section_startup(args, device: str, log) -> dict:
    from ce_inspect.model import default_gguf_path, gguf_cache_folder

    folder = gguf_cache_folder(default_gguf_path())  # builds the cache once if needed: "warm cache" from here
    py = sys.executable
    commands = {
        "help": [py, "-m", "ce_inspect", "--help"],
        "run": [py, "-m", "ce_inspect", "run", "--device", device, "-p", PROMPT, "-a", ANSWER],
        "floor": [py, str(ROOT / "bench" / "floor.py"), folder, device],
        "import_torch": [py, "-c", "import torch"],
    }
    run_command(commands["run"])  # warm the page cache
    samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in commands}
    for i in range(args.startup_reps):
        log(f"  startup: round {i + 1}/{args.startup_reps} ...")
        for name, cmd in commands.items():
            wall, cpu, code = run_command(cmd)
            if code != 0:
                raise SystemExit(f"{' '.join(cmd)} failed with exit {code}")
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
    shown = {
        k: shlex.join(["python", *(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in v[1:])])
        for k, v in commands.items()
    }
    return {"samples": samples, "commands": shown}


# --- report ---------------------------------------------------------------------------------------------


def render(report: dict) -> str:
    m = report["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    lines = [
        f"# ce-inspect benchmark ({m['device']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('ram_gib', '?')} GiB RAM{gpu}; "
        f"Python {m['python']}, torch {m['torch']} ({m['threads']} threads), transformers {m['transformers']}; "
        f"commit {m.get('commit', '?')}; {report['date']}. Load average before/after: "
        f"{report['load_before']} / {report['load_after']}. Command: `{report['command']}`.",
        "",
        "Model: SmolLM2-135M-Instruct (bundled GGUF, from the safetensors cache), float32"
        + (" on CPU." if m["device"] == "cpu" else f" on {m['device']}."),
        "",
    ]
    targets = []
    if "memory" in report:
        lines += render_memory(report["memory"], m["device"], targets)
    if "batch" in report:
        lines += render_batch(report["batch"], targets)
    if "startup" in report:
        lines += render_startup(report["startup"], targets)
    if "diff" in report:
        lines += render_diff(report["diff"], m["device"], targets)
    if targets:
        lines += ["## Targets (issue #5)", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets]
        lines.append("")
    return "\n".join(lines)


def render_memory(mem: dict, device: str, targets: list) -> list[str]:
    key = "cuda_peak" if device == "cuda" else "peak_rss"
    what = "peak CUDA memory allocated during the call" if device == "cuda" else "peak RSS of the whole process"
    paths = ("ce", "naive", "body")
    lines = [
        "## Scoring memory and time: ce-inspect vs `model(input_ids, labels=labels)` + full log-softmax",
        "",
        f"Peak: {what}, one fresh process per cell, each after the same warm-up (loading the model, scoring "
        "a 12-token example). Extra: peak minus the same path's peak with a 16-token prompt and the same "
        "answer. *Body alone*: the model's transformer body on the same input (no output head, no cache), "
        "the activations any scoring must pay. Answer: scored tokens (random ids, the last one EOS). Time: "
        "median per call after the warm-up; per-call CPU seconds are in the JSON. On CPU, differences of a "
        "few tens of MiB (even a negative extra) are the allocator's: glibc keeps freed memory differently "
        "from one process to the next.",
        "",
        "| prompt | answer | ce-inspect peak | usual peak | ce-inspect extra | usual extra | body alone extra "
        "| extra ratio | ce-inspect time | usual time | body alone time | time ratio | |Δ mean loss| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {}
    for row in mem["rows"]:
        if row["prompt"] == 16 and row["scored"] == 32:
            base = {p: row[p].get(key) for p in paths}
    for row in mem["rows"]:
        failed = [row[p]["error"] for p in paths if "error" in row[p]]
        if failed:
            lines.append(f"| {row['prompt']:,} | {row['scored']:,} | failed: {failed[0]} |")
            continue
        extra = {p: row[p][key] - base[p] if base.get(p) is not None else None for p in paths}
        ratio = extra["ce"] / extra["naive"] if extra["naive"] else None
        t = {p: median(row[p]["times"]) for p in paths}
        dloss = abs(row["ce"]["mean_loss"] - row["naive"]["mean_loss"])
        beyond = " (beyond the model's 8,192 context: cost only)" if row["prompt"] + row["scored"] > 8192 else ""
        lines.append(
            f"| {row['prompt']:,}{beyond} | {row['scored']:,} | {mib(row['ce'][key])} | {mib(row['naive'][key])} "
            f"| {mib(extra['ce'])} | {mib(extra['naive'])} | {mib(extra['body'])} "
            f"| {'-' if ratio is None else f'{ratio:.1%}'} "
            f"| {t['ce']:.2f} s | {t['naive']:.2f} s | {t['body']:.2f} s | {t['ce'] / t['naive']:.2f}x | {dloss:.1e} |"
        )
        if row["prompt"] == 4096 and row["scored"] == 32 and ratio is not None:
            targets.append(
                (
                    "extra peak memory, 4,096- vs 16-token prompt: ce-inspect <= 12% of the usual way",
                    f"{mib(extra['ce'])} vs {mib(extra['naive'])} = {ratio:.1%} (body alone: {mib(extra['body'])})",
                    ratio <= 0.12,
                )
            )
    lines.append("")
    return lines


def render_batch(batch: dict, targets: list) -> list[str]:
    if "error" in batch:
        return ["## Batch throughput", "", f"Failed: {batch['error']}", ""]
    tokens = batch["scored_tokens"]
    t = {name: median(xs) for name, xs in batch["times"].items()}
    c = {name: median(xs) for name, xs in batch["cpu_s"].items()}
    labels = {
        "loop": "plain loop, one record at a time, the usual way (full logits + log-softmax)",
        "batch1": "`score_batch`, batch size 1",
        "batch4": "`score_batch`, batch size 4",
        "batch16": "`score_batch`, batch size 16",
        "batch16_sorted": "`score_batch`, batch size 16, records sorted by length",
    }
    lines = [
        "## Batch throughput (scored tokens per second)",
        "",
        f"{batch['records']} records, prompts of 8-64 tokens, answers of 5-33 scored tokens ({tokens:,} scored "
        f"tokens in all); right padding; median of {len(batch['times']['loop'])} interleaved repeats. "
        f"Largest |Δ mean loss| against the plain loop: {batch['max_abs_diff']:.1e}.",
        "",
        "| method | time | CPU time | scored tokens/s | vs plain loop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in labels.items():
        lines.append(
            f"| {label} | {t[name]:.2f} s | {c[name]:.2f} s | {tokens / t[name]:,.0f} | {t['loop'] / t[name]:.2f}x |"
        )
    lines += ["", f"`ce-inspect batch` (command line): {batch['cli_batch']}.", ""]
    targets.append(
        (
            "batch size 16: >= 2x the tokens/s of one at a time",
            f"{tokens / t['batch16']:,.0f} vs {tokens / t['loop']:,.0f} tokens/s = {t['loop'] / t['batch16']:.2f}x",
            t["loop"] / t["batch16"] >= 2,
        )
    )
    return lines


def render_startup(start: dict, targets: list) -> list[str]:
    s = start["samples"]
    wall = {k: median(v["wall"]) for k, v in s.items()}
    labels = {
        "help": "`ce-inspect --help`",
        "run": "`ce-inspect run` (default model, warm cache)",
        "floor": "floor: `bench/floor.py` (load the same model + one forward)",
        "import_torch": "`python -c 'import torch'` (reference)",
    }
    lines = [
        "## Start-up (wall time of the whole process)",
        "",
        f"Median of {len(s['run']['wall'])} interleaved runs, each a fresh process.",
        "",
        "| command | median | min | CPU time (median) | vs floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in labels.items():
        lines.append(
            f"| {label} | {wall[name]:.2f} s | {min(s[name]['wall']):.2f} s | {median(s[name]['cpu']):.2f} s "
            f"| {wall[name] / wall['floor']:.2f}x |"
        )
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in start["commands"].values()), ""]
    ratio = wall["run"] / wall["floor"]
    targets.append(
        (
            "`ce-inspect run` within 1.25x of the floor",
            f"{wall['run']:.2f} s vs {wall['floor']:.2f} s = {ratio:.2f}x",
            ratio <= 1.25,
        )
    )
    targets.append(("`ce-inspect --help` under 0.5 s", f"{wall['help']:.2f} s", wall["help"] < 0.5))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (a smoke test)")
    parser.add_argument("--long", action="store_true", help="add the 16,384-token prompt on CPU (slow)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--sections", default="memory,batch,startup")
    parser.add_argument("--prompts", default=None, help="memory section: prompt lengths, e.g. 4096,16384")
    parser.add_argument("--long-answer", type=int, default=None, help="memory section: long answer (0: none)")
    parser.add_argument("--reps", type=int, default=None, help="timed repeats per configuration (default 5, quick 2)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed runs per configuration")
    parser.add_argument("--startup-reps", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in every child (default: torch's own choice)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=None, help="output file stem (default: the device)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(*args.worker)
        return

    global THREADS
    THREADS = args.threads
    args.reps = args.reps or (2 if args.quick else 5)
    args.budget = args.budget or (10.0 if args.quick else 20.0)
    args.startup_reps = args.startup_reps or (2 if args.quick else 5)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    info = machine(args.device or "auto")
    device = args.device or ("cuda" if info.get("gpu") else "cpu")
    info["device"] = device

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report: dict = {
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": shlex.join(["python", "bench/bench.py", *sys.argv[1:]]),
        "load_before": load_average(),
    }
    started = time.perf_counter()
    sections_fns = (("memory", section_memory), ("batch", section_batch), ("startup", section_startup))
    for name, fn in (*sections_fns, ("diff", section_diff)):
        if name in sections:
            log(f"{name} ...")
            report[name] = fn(args, device, log)
    report["load_after"] = load_average()
    report["seconds"] = round(time.perf_counter() - started, 1)
    markdown = render(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or device
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown + "\n")
    print(markdown)
    log(f"done in {report['seconds']:.0f} s; wrote {args.out / stem}.md and .json")


if __name__ == "__main__":
    main()
