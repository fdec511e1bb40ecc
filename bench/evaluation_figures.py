"""The numbers of docs/evaluation.md: ``--rolling`` beside lm-eval's own ``HFLM.loglikelihood_rolling`` on the
bundled model, and the error bars and entropy of ``batch`` on a few paragraphs.

    .venv/bin/python bench/evaluation_figures.py   # needs the lmeval extra (make setup installs it)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import ce_inspect
from ce_inspect.dataset import BatchSettings
from ce_inspect.scoring import ScoreOptions
from ce_inspect.text import Layout

SOURCE = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"
WINDOW = 512


def main() -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    whole = SOURCE.read_text(encoding="utf-8")
    text = whole[:6000]
    paragraphs = [p for p in whole.split("\n\n") if len(p) > 200][:40]
    folder = Path(tempfile.mkdtemp())
    (folder / "long.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    (folder / "paras.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs), encoding="utf-8")
    lm = ce_inspect.load(device="cpu", quiet=True)

    start = time.perf_counter()
    layout = Layout(rolling=True, rolling_window=WINDOW)
    summary = ce_inspect.score_dataset(lm, folder / "long.jsonl", folder / "long.out.jsonl", layout=layout).to_dict()
    ours_s = time.perf_counter() - start
    line = json.loads((folder / "long.out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=8, device="cpu", max_length=WINDOW)
    start = time.perf_counter()
    request = Instance("loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (theirs,) = hflm.loglikelihood_rolling([request], disable_tqdm=True)
    theirs_s = time.perf_counter() - start
    ours = line["summary"]["sum_logprob"]
    print(f"rolling: ours {ours:.5f}, lm-eval {theirs:.5f}, |diff| {abs(ours - theirs):.2e}")
    tokens, windows = line["summary"]["count"], line["layout"]["window_count"]
    print(f"  {tokens} tokens, {windows} windows; {ours_s:.1f} s vs {theirs_s:.1f} s")
    print(f"  bits per byte {summary.get('bits_per_byte')}, word perplexity {summary.get('word_perplexity')}")

    settings, options = BatchSettings(bootstrap=1000, seed=0), ScoreOptions(entropy=True)
    bars = ce_inspect.score_dataset(lm, folder / "paras.jsonl", None, settings=settings, options=options).to_dict()
    keys = ("token_weighted_mean_loss", "example_weighted_mean_loss", "bits_per_byte")
    print(f"error bars over {len(paragraphs)} paragraphs (--bootstrap 1000 --seed 0):")
    for key in keys:
        print(f"  {key} {bars[key]:.4f} ± {bars[f'{key}_stderr']:.4f}")
    print(f"  mean entropy {bars['mean_entropy']:.4f} nats")


if __name__ == "__main__":
    main()
