"""``ce-inspect choices`` against lm-evaluation-harness's HF backend (``HFLM.loglikelihood``) on the same
questions and model object: the bundled SmolLM2-135M, 8 questions of 4 short choices after a context of
about 32, 128 and 500 tokens. ce-inspect runs a question's shared context once and its choices after it
from the KV cache (``HFScorer.score_groups``, when that saves ``SHARED_START_SAVING`` tokens); "full" is the
same command with that turned off (every choice a full sequence in one padded pass, as before). lm-eval runs
each (context, choice) as its own sequence. Every figure is checked against lm-eval's (1e-3) before any time
is reported. Times are the least of ``--reps`` runs, interleaved; the ratios are from this one run.

    .venv/bin/python bench/choices_speed.py            # writes bench/results/choices-cpu.md
    .venv/bin/python bench/choices_speed.py --reps 1   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ce_inspect
import ce_inspect.scoring.hf as hf
from ce_inspect.dataset import BatchSettings

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "ARCHITECTURE.md"
CHOICES = [" yes", " no", " it depends on the layer", " the runner"]
QUESTIONS = 8
SAVING = hf.SHARED_START_SAVING


def questions(tokenizer, tokens: int) -> list[dict]:
    """``QUESTIONS`` questions whose contexts are ``tokens`` tokens of this repository's prose, each its own."""
    ids = tokenizer.encode(SOURCE.read_text(encoding="utf-8"), add_special_tokens=False)
    out = []
    for q in range(QUESTIONS):
        context = tokenizer.decode(ids[q * tokens : (q + 1) * tokens]).strip()
        out.append({"prompt": context + "\nQuestion: is that the rule?\nAnswer:", "choices": CHOICES, "label": q % 4})
    return out


#: How ce-inspect runs: its rule (a shared start when it saves ``SHARED_START_SAVING`` tokens), always a
#: shared start, never (every choice a full sequence in one padded pass, as before the shared start).
MODES = {"default": SAVING, "always shared": 0, "never shared": 10**9}


def time_ours(lm, data: Path, saving: int) -> tuple[float, list[float]]:
    hf.SHARED_START_SAVING = saving
    out = data.with_suffix(".out.jsonl")
    start = time.perf_counter()
    ce_inspect.choices_dataset(lm, data, out, force=True, settings=BatchSettings(batch_size=4))
    seconds = time.perf_counter() - start
    hf.SHARED_START_SAVING = SAVING
    lines = [json.loads(raw) for raw in out.read_text(encoding="utf-8").splitlines()]
    return seconds, [c["sum_logprob"] for line in lines for c in line["choices"]]


def time_lmeval(hflm, rows: list[dict]) -> tuple[float, list[float]]:
    from lm_eval.api.instance import Instance

    args = [(q["prompt"], c) for q in rows for c in q["choices"]]
    requests = [Instance("loglikelihood", doc={}, arguments=a, idx=i) for i, a in enumerate(args)]
    start = time.perf_counter()
    results = hflm.loglikelihood(requests, disable_tqdm=True)
    return time.perf_counter() - start, [ll for ll, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--contexts", default="32,128,256,500", help="context lengths in tokens, comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "choices-cpu.md")
    args = parser.parse_args()
    import torch
    from lm_eval.models.huggingface import HFLM

    lm = ce_inspect.load(device="cpu", quiet=True)
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=4, device="cpu")
    folder = Path(tempfile.mkdtemp())
    warm = folder / "warm.jsonl"  # untimed: the first passes of a process (allocations, the checks) cost more
    warm.write_text("".join(json.dumps(r) + "\n" for r in questions(lm.tokenizer, 200)), encoding="utf-8")
    time_lmeval(hflm, questions(lm.tokenizer, 200))
    time_ours(lm, warm, 0)
    rows_out = []
    for tokens in (int(t) for t in args.contexts.split(",")):
        rows = questions(lm.tokenizer, tokens)
        data = folder / f"q{tokens}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        best = dict.fromkeys([*MODES, "lm-eval"], float("inf"))
        for _ in range(args.reps):  # interleaved: lm-eval, then ce-inspect each way, checked against it
            seconds, theirs = time_lmeval(hflm, rows)
            best["lm-eval"] = min(best["lm-eval"], seconds)
            for name, saving in MODES.items():
                seconds, lls = time_ours(lm, data, saving)
                worst = max(abs(a - b) for a, b in zip(lls, theirs, strict=True))
                assert worst <= 1e-3, f"{name}: a log-likelihood {worst:.2e} from lm-eval's"
                best[name] = min(best[name], seconds)
        context = len(lm.tokenizer.encode(rows[0]["prompt"]))
        print(f"~{context} context tokens: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), flush=True)
        rows_out.append((context, best))
    lines = [
        "# `choices` against lm-eval's HF backend",
        "",
        f"`python bench/choices_speed.py --reps {args.reps} --contexts {args.contexts}` on "
        f"{torch.get_num_threads()} CPU thread(s) (torch {torch.__version__}), SmolLM2-135M-Instruct float32, "
        f"{QUESTIONS} questions x 4 choices ({', '.join(repr(c) for c in CHOICES)}) after a context of the given "
        "tokens; ce-inspect `--batch-size 4`, lm-eval `HFLM(batch_size=4)` on the same model object. Every "
        "log-likelihood within 1e-3 of lm-eval's. Seconds: the least of the runs, interleaved, after one untimed "
        "warm-up of each (which also makes the once-per-model check of the shared start against the full pass).",
        "",
        "| context tokens | " + " | ".join(MODES) + " | lm-eval HFLM | default / lm-eval |",
        "|---:|" + "---:|" * (len(MODES) + 2),
    ]
    for context, best in rows_out:
        times = " | ".join(f"{best[k]:.2f} s" for k in [*MODES, "lm-eval"])
        lines.append(f"| {context} | {times} | {best['default'] / best['lm-eval']:.2f}x |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
