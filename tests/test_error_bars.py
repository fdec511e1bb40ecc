"""Error bars on data-set means: the standard error of a mean over examples (lm-eval's ``mean_stderr``) and the
seeded bootstrap over examples of the token-weighted figures, against independent computations."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

import ce_inspect
from ce_inspect.cli import main
from ce_inspect.dataset import BatchSettings
from ce_inspect.stats import bootstrap_stderrs, mean_stderr

WORDS = "the a cat sat on mat rivers freeze herders move in early autumn north winter long".split()


def ratio_stderr(num, den) -> float:
    """The analytic (delta-method) standard error of sum(num) / sum(den) over n examples drawn at random:
    sqrt(sum((num_i - r den_i)^2) / (n (n - 1))) / mean(den), written out independently of ce_inspect.stats."""
    n, r = len(num), sum(num) / sum(den)
    residual = sum((y - r * x) ** 2 for y, x in zip(num, den))
    return math.sqrt(residual / (n * (n - 1))) / (sum(den) / n)


def test_mean_stderr_is_the_sample_std_over_root_n():
    values = [0.5, 1.25, 3.0, 0.0, 2.2]
    assert mean_stderr(values) == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)), rel=1e-12)
    assert mean_stderr([1.0]) is None and mean_stderr([]) is None


def test_the_bootstrap_is_reproducible_with_a_seed_and_close_to_the_analytic_error():
    rng = random.Random(7)
    den = [rng.randint(1, 60) for _ in range(400)]
    num = [x * rng.uniform(1.0, 4.0) for x in den]  # a loss sum per example: tokens x a per-example mean
    ratios = {"loss": (num, den)}
    first = bootstrap_stderrs(ratios, 2000, seed=3)
    assert first == bootstrap_stderrs(ratios, 2000, seed=3)  # the same seed, the same figure
    assert first != bootstrap_stderrs(ratios, 2000, seed=4)
    assert first["loss"] == pytest.approx(ratio_stderr(num, den), rel=0.10)
    assert bootstrap_stderrs(ratios, 0, seed=3) == {"loss": None}
    assert bootstrap_stderrs({"loss": ([1.0], [2.0])}, 100, seed=3) == {"loss": None}  # one example: no spread


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    rng = random.Random(11)
    path = tmp_path_factory.mktemp("bars") / "texts.jsonl"
    rows = [{"text": " ".join(rng.choices(WORDS, k=rng.randint(2, 30)))} for _ in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_batch_summary_carries_each_standard_error(tiny_llama, texts, tmp_path):
    out = tmp_path / "out.jsonl"
    settings = BatchSettings(bootstrap=2000, seed=5)
    summary = ce_inspect.score_dataset(tiny_llama, texts, out, settings=settings).to_dict()
    lines = [json.loads(line)["summary"] for line in out.read_text().splitlines()]
    means = [s["mean"] for s in lines]
    assert summary["example_weighted_mean_loss_stderr"] == pytest.approx(
        statistics.stdev(means) / math.sqrt(len(means)), rel=1e-9
    )
    counts, sums = [s["count"] for s in lines], [s["sum"] for s in lines]
    assert summary["token_weighted_mean_loss_stderr"] == pytest.approx(ratio_stderr(sums, counts), rel=0.10)
    nll = [-s["sum_logprob"] for s in lines]
    assert summary["mean_nll_stderr"] == pytest.approx(ratio_stderr(nll, counts), rel=0.10)
    bits, scored_bytes = [x / math.log(2) for x in nll], [s["scored_bytes"] for s in lines]
    assert summary["bits_per_byte_stderr"] == pytest.approx(ratio_stderr(bits, scored_bytes), rel=0.10)
    assert summary["bootstrap"] == {"resamples": 2000, "seed": 5}
    again = ce_inspect.score_dataset(tiny_llama, texts, out, settings=settings, force=True).to_dict()
    assert again["token_weighted_mean_loss_stderr"] == summary["token_weighted_mean_loss_stderr"]  # seeded
    plain = ce_inspect.score_dataset(tiny_llama, texts, out, force=True).to_dict()
    assert "token_weighted_mean_loss_stderr" not in plain and "bootstrap" not in plain
    assert plain["example_weighted_mean_loss_stderr"] == summary["example_weighted_mean_loss_stderr"]


def test_the_terminal_shows_plus_minus_and_a_bad_count_is_a_usage_error(tiny_llama_dir, texts, tmp_path, capsys):
    args = ["batch", str(texts), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl")]
    assert main([*args, "--bootstrap", "200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "token-weighted mean loss" in out and out.count("±") >= 3
    assert "bootstrap" in out  # the note says how (its words wrap with the terminal)
    assert main([*args, "--force", "--bootstrap", "1"]) == 2
    assert "--bootstrap must be 0 (off) or at least 2 resamples" in capsys.readouterr().err


def test_choices_bits_per_byte_is_the_gold_choices_nll_over_their_bytes(tiny_llama, tmp_path):
    rows = [
        {"prompt": "The sky is", "choices": [" blue", " green", " a ☂ umbrella"], "label": 0},
        {"prompt": "2 + 2 =", "choices": [" 4", " five"], "label": 1},
        {"prompt": "Capital of France:", "choices": [" Paris", " Rome"], "label": 0},
    ]
    data, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = ce_inspect.choices_dataset(tiny_llama, data, out).to_dict()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    golds = [line["choices"][line["label"]] for line in lines]
    # Independently: each gold choice's scored tokens decoded, their UTF-8 bytes counted.
    tokenizer = tiny_llama.tokenizer
    n_bytes = sum(len(tokenizer.decode([t["token_id"] for t in g["tokens"]]).encode("utf-8")) for g in golds)
    nll = -sum(g["sum_logprob"] for g in golds)
    assert [g["scored_bytes"] for g in golds] == [len(r["choices"][r["label"]].encode("utf-8")) for r in rows]
    assert summary["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-12)
    resumed = ce_inspect.choices_dataset(tiny_llama, data, out, resume=True).to_dict()
    assert resumed["bits_per_byte"] == summary["bits_per_byte"]  # read back from the lines


@pytest.fixture(scope="module")
def candidate_dir(tmp_path_factory) -> Path:
    from conftest import build_model

    return build_model(tmp_path_factory.mktemp("bars-b"), seed=1)  # the same tokenizer, other weights


def test_diff_bootstrap_gives_the_data_set_means_their_errors(
    tiny_llama, tiny_llama_dir, candidate_dir, texts, tmp_path, capsys
):
    """``diff DATA --bootstrap N --seed S``: the token-weighted mean ΔNLL and KL over examples resampled with
    replacement, reproducible with the seed and within 10% of the delta-method error from the lines."""
    from ce_inspect import load

    cand = load(str(candidate_dir), device="cpu", quiet=True)
    out = tmp_path / "diff.jsonl"
    settings = BatchSettings(bootstrap=2000, seed=5)
    d = ce_inspect.diff_dataset(tiny_llama, cand, texts, out, settings=settings).to_dict()
    lines = [json.loads(line)["summary"] for line in out.read_text().splitlines()]
    counts = [s["count"] for s in lines]
    b = d["bootstrap"]
    assert (b["resamples"], b["seed"]) == (2000, 5)
    for key in ("dnll_mean", "kl_mean"):
        sums = [s[key] * s["count"] for s in lines]
        assert sum(sums) / sum(counts) == pytest.approx(d["summary"][key], rel=1e-6)  # the mean it is the error of
        assert b[f"{key}_stderr"] == pytest.approx(ratio_stderr(sums, counts), rel=0.10)
    again = ce_inspect.diff_dataset(tiny_llama, cand, texts, out, settings=settings, force=True).to_dict()
    assert again["bootstrap"] == b  # seeded
    assert "bootstrap" not in ce_inspect.diff_dataset(tiny_llama, cand, texts, out, force=True).to_dict()
    args = ["diff", str(texts), "-m", str(tiny_llama_dir), "--model-b", str(candidate_dir), "-o", str(out), "--force"]
    report = tmp_path / "diff.html"
    assert main([*args, "--bootstrap", "200", "--seed", "1", "--html", str(report)]) == 0
    assert "bootstrap over examples (200 resamples, seed 1)" in capsys.readouterr().out
    assert "bootstrap.kl_mean_stderr" in report.read_text(encoding="utf-8")
    assert (
        main(
            [
                "diff",
                "-m",
                str(tiny_llama_dir),
                "--model-b",
                str(candidate_dir),
                "-p",
                "a",
                "-a",
                "b",
                "--bootstrap",
                "9",
            ]
        )
        == 2
    )
    assert "--bootstrap goes with a data set" in capsys.readouterr().err
