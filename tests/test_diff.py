"""`diff`: every figure against an independent full-logit computation (log_softmax over the whole vocabulary,
``torch.nn.functional.kl_div``), identity, sequential mode, the tokenizer refusal and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ce_inspect import Layout, ScoreOptions, load
from ce_inspect.cli import main
from ce_inspect.diff import diff, diff_messages
from ce_inspect.errors import InputError, NonFiniteError
from ce_inspect.text import encode
from tests.conftest import batch_tolerance, build_model

PROMPT = "Where is the capital of China? "
ANSWER = " The capital is Beijing, in the north; the answer is there."


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diff-models")
    return build_model(root / "ref", seed=0), build_model(root / "cand", seed=1)


@pytest.fixture(scope="module")
def ref_lm(pair_dirs):
    return load(str(pair_dirs[0]), device="cpu", quiet=True)


@pytest.fixture(scope="module")
def cand_lm(pair_dirs):
    return load(str(pair_dirs[1]), device="cpu", quiet=True)


def full_logp(lm, ids: list[int], vocab: int | None = None) -> torch.Tensor:
    """[seq, vocab] float32 log-probabilities from the model's full logits (the usual, memory-hungry way)."""
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    if vocab is not None:
        logits = logits[:, :vocab]
    return torch.log_softmax(logits, dim=-1)


def independent(ref, cand, prompt=PROMPT, answer=ANSWER, layout=None, vocab=None) -> dict:
    """Every per-token and summary figure, computed from both models' full logits with torch and numpy-style code."""
    example = encode(ref.tokenizer, prompt, answer, layout or Layout(), max_length=None)
    ids = example.input_ids
    positions = list(example.scored_positions)
    rows = [p - 1 for p in positions]
    targets = torch.tensor([ids[p] for p in positions])
    lr_full, lc_full = full_logp(ref, ids)[rows], full_logp(cand, ids)[rows]
    lr, lc = (full_logp(ref, ids, vocab)[rows], full_logp(cand, ids, vocab)[rows]) if vocab else (lr_full, lc_full)
    kl = torch.nn.functional.kl_div(lc, lr, log_target=True, reduction="none").sum(-1).double()
    kl_rev = torch.nn.functional.kl_div(lr, lc, log_target=True, reduction="none").sum(-1).double()
    nll_r = -lr_full.gather(1, targets[:, None]).squeeze(1).double()
    nll_c = -lc_full.gather(1, targets[:, None]).squeeze(1).double()
    dnll = nll_c - nll_r
    dp = torch.exp(-nll_c) - torch.exp(-nll_r)
    same = lr.argmax(-1) == lc.argmax(-1)
    n = len(positions)

    def se(x: torch.Tensor) -> float:  # llama.cpp: population standard deviation / sqrt(n - 1)
        return float(x.std(unbiased=False) / math.sqrt(n - 1))

    q = torch.tensor([0.999, 0.99, 0.95, 0.90, 0.5, 0.10, 0.05, 0.01, 0.001], dtype=torch.float64)
    quantiles = torch.quantile(kl, q, interpolation="linear").tolist()
    p = float(same.double().mean())
    mse = (dp**2).mean()
    return {
        "kl": kl.tolist(),
        "kl_reverse": kl_rev.tolist(),
        "dnll": dnll.tolist(),
        "same_top1": same.tolist(),
        "summary": {
            "kl_mean": float(kl.mean()),
            "kl_se": se(kl),
            "kl_reverse_mean": float(kl_rev.mean()),
            "dnll_mean": float(dnll.mean()),
            "dnll_se": se(dnll),
            "ref_loss_mean": float(nll_r.mean()),
            "cand_loss_mean": float(nll_c.mean()),
            "kl_max": float(kl.max()),
            "kl_min": float(kl.min()),
            **dict(
                zip(["kl_p999", "kl_p99", "kl_p95", "kl_p90", "kl_median", "kl_p10", "kl_p05", "kl_p01"], quantiles)
            ),
            "kl_p001": quantiles[-1],
            "dp_mean": float(dp.mean()),
            "dp_rms": float(mse.sqrt()),
            "dp_rms_se": 0.5 / float(mse.sqrt()) * se(dp**2),
            "same_top1_pct": 100 * p,
            "same_top1_se_pct": 100 * math.sqrt(p * (1 - p) / (n - 1)),
        },
    }


def assert_matches(result, expected, tol=1e-5) -> None:
    assert [t.kl for t in result.tokens] == pytest.approx(expected["kl"], abs=tol)
    assert [t.kl_reverse for t in result.tokens] == pytest.approx(expected["kl_reverse"], abs=tol)
    assert [t.dnll for t in result.tokens] == pytest.approx(expected["dnll"], abs=tol)
    assert [t.same_top1 for t in result.tokens] == expected["same_top1"]
    summary = result.summary.to_dict()
    for key, value in expected["summary"].items():
        assert summary[key] == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("chunk_tokens", [None, 3], ids=["one-chunk", "chunked-head"])
def test_every_figure_matches_full_logit_kl_div(ref_lm, cand_lm, chunk_tokens):
    options = ScoreOptions(chunk_tokens=chunk_tokens)
    result = diff(ref_lm, cand_lm, PROMPT, ANSWER, options=options)
    expected = independent(ref_lm, cand_lm)
    assert result.summary.count == len(expected["kl"]) > 20
    assert_matches(result, expected)
    # The random models disagree somewhere and agree somewhere, so the top-1 flags are really tested.
    assert 0 < result.summary.same_top1 or not any(expected["same_top1"])
    # Each side's token figures are what `run` reports for that model alone.
    from ce_inspect import score

    alone = score(cand_lm, PROMPT, ANSWER, options=options)
    assert [t.loss for t in result.candidate.tokens] == pytest.approx([t.loss for t in alone.tokens], abs=1e-6)
    assert [t.rank for t in result.candidate.tokens] == [t.rank for t in alone.tokens]


def test_same_model_against_itself_is_exactly_zero(ref_lm):
    result = diff(ref_lm, ref_lm, PROMPT, ANSWER)
    assert all(t.kl == 0.0 and t.kl_reverse == 0.0 and t.dnll == 0.0 and t.same_top1 for t in result.tokens)
    assert result.summary.kl_mean == 0.0
    assert result.summary.dnll_mean == 0.0
    assert result.summary.same_top1_pct == 100.0


def test_sequential_gives_the_same_figures(pair_dirs, ref_lm, cand_lm):
    both = diff(ref_lm, cand_lm, PROMPT, ANSWER, options=ScoreOptions(chunk_tokens=4))
    one_at_a_time = diff(
        lambda: load(str(pair_dirs[0]), device="cpu", quiet=True),
        lambda: load(str(pair_dirs[1]), device="cpu", quiet=True),
        PROMPT,
        ANSWER,
        options=ScoreOptions(chunk_tokens=4),
    )
    assert one_at_a_time.to_dict() == both.to_dict()


def test_sequential_releases_the_reference_before_loading_the_candidate(pair_dirs):
    import gc
    import weakref

    refs = []

    def load_ref():
        lm = load(str(pair_dirs[0]), device="cpu", quiet=True)
        refs.append(weakref.ref(lm.model))
        return lm

    def load_cand():
        gc.collect()
        assert refs[0]() is None, "the reference model is still alive when the candidate loads"
        return load(str(pair_dirs[1]), device="cpu", quiet=True)

    diff(load_ref, load_cand, PROMPT, ANSWER)


def test_chat_conversation_matches_independent(ref_lm, cand_lm):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, the tin."}]
    result = diff_messages(ref_lm, cand_lm, messages)
    from ce_inspect.text import encode_messages

    example = encode_messages(ref_lm.tokenizer, messages, Layout(), max_length=None)
    ids, rows = example.input_ids, [p - 1 for p in example.scored_positions]
    lr, lc = full_logp(ref_lm, ids)[rows], full_logp(cand_lm, ids)[rows]
    kl = torch.nn.functional.kl_div(lc, lr, log_target=True, reduction="none").sum(-1)
    assert [t.kl for t in result.tokens] == pytest.approx(kl.tolist(), abs=1e-5)
    assert [t.index for t in result.tokens] == list(example.scored_positions)


def test_padded_vocabulary_compares_the_shared_ids_and_says_so(tmp_path, ref_lm):
    padded = load(str(build_model(tmp_path / "padded", seed=0, vocab_size=300)), device="cpu", quiet=True)
    shared = len(ref_lm.tokenizer)
    result = diff(ref_lm, padded, PROMPT, ANSWER)
    assert result.summary.shared_vocab == shared
    assert any("vocabularies differ in size" in n for n in result.notes)
    assert_matches(result, independent(ref_lm, padded, vocab=shared))


def split_differently(folder: Path) -> Path:
    """Drop the ``h e`` merge from the folder's tokenizer, so " the" becomes other tokens (same vocabulary)."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    merges = data["model"]["merges"]
    data["model"]["merges"] = [m for m in merges if m not in ("h e", ["h", "e"]) and m[:1] != "Ġt"]
    path.write_text(json.dumps(data))
    return folder


def test_tokenizers_that_split_differently_are_refused(tmp_path, ref_lm):
    other = load(str(split_differently(build_model(tmp_path / "other", seed=1))), device="cpu", quiet=True)
    assert other.tokenizer.tokenize(" the") != ref_lm.tokenizer.tokenize(" the")
    with pytest.raises(InputError, match=r"tokenizers give different tokens from token \d+ on: reference \["):
        diff(ref_lm, other, PROMPT, ANSWER)


# --- the command line -------------------------------------------------------------------------------------


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_has_the_documented_keys_and_matches_the_library(pair_dirs, ref_lm, cand_lm, capsys):
    a, b = map(str, pair_dirs)
    code, out, err = cli(["diff", "-m", a, "--model-b", b, "-p", PROMPT, "-a", ANSWER, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["kind"] == "diff"
    token = doc["tokens"][0]
    assert {"kl", "dnll", "same_top1", "kl_reverse", "dp", "ref", "cand"} <= token.keys()
    # Each side carries the same token keys as `run --json`.
    code, run_out, _ = cli(["run", "-m", a, "-p", PROMPT, "-a", ANSWER, "--json"], capsys)
    run_doc = json.loads(run_out)
    assert token["ref"].keys() == run_doc["tokens"][0].keys()
    assert [t["ref"]["loss"] for t in doc["tokens"]] == [t["loss"] for t in run_doc["tokens"]]
    assert {"kl_mean", "dnll_mean", "same_top1_pct"} <= doc["summary"].keys()
    expected = independent(ref_lm, cand_lm)
    assert doc["summary"]["kl_mean"] == pytest.approx(expected["summary"]["kl_mean"], abs=1e-5)
    assert [t["dnll"] for t in doc["tokens"]] == pytest.approx(expected["dnll"], abs=1e-5)


def test_cli_sequential_equals_default(pair_dirs, capsys):
    a, b = map(str, pair_dirs)
    args = ["diff", "-m", a, "--model-b", b, "-p", PROMPT, "-a", ANSWER, "--json", "--chunk-tokens", "5"]
    code, together, _ = cli(args, capsys)
    code_seq, apart, _ = cli([*args, "--sequential"], capsys)
    assert code == code_seq == 0
    assert json.loads(apart) == json.loads(together)


def test_cli_human_output_shows_strip_table_and_summary(pair_dirs, capsys):
    a, b = map(str, pair_dirs)
    code, out, err = cli(
        ["diff", "-m", a, "--model-b", b, "-p", "[/bold] x", "-a", ANSWER, "--color-by", "dnll"], capsys
    )
    assert code == 0, err
    assert "[/bold]␣x" in out
    assert "Where the models disagree most" in out
    assert "mean KL(ref‖cand)" in out and "same top-1" in out


def test_cli_gates_exit_3_after_writing_all_output(pair_dirs, tmp_path, capsys):
    a, b = map(str, pair_dirs)
    out_file = tmp_path / "d.json"
    args = ["diff", "-m", a, "--model-b", b, "-p", PROMPT, "-a", ANSWER, "--json", "-o", str(out_file)]
    code, out, err = cli([*args, "--fail-above-kl", "0.001"], capsys)
    assert code == 3
    assert json.loads(out) == json.loads(out_file.read_text())
    assert err.strip().splitlines()[-1].startswith("Error: gate failed: mean KL")
    kl_mean = json.loads(out)["summary"]["kl_mean"]
    code, _, err = cli([*args, "--fail-above-kl", str(kl_mean + 1)], capsys)
    assert code == 0, err
    dnll = json.loads(out)["summary"]["dnll_mean"]
    code, _, _ = cli([*args, "--fail-above-dnll", str(dnll - 0.01)], capsys)
    assert code == 3


@pytest.mark.parametrize("value", ["abc", "nan", "inf", ""])
def test_cli_gate_values_that_are_not_numbers_are_usage_errors(pair_dirs, tmp_path, value, capsys):
    a, b = map(str, pair_dirs)
    out_file = tmp_path / "d.json"
    args = ["diff", "-m", a, "--model-b", b, "-p", "x", "-a", "y", "-o", str(out_file), "--fail-above-kl", value]
    code, out, err = cli(args, capsys)
    assert code == 2 and out == "" and not out_file.exists()
    assert len(err.strip().splitlines()) == 1 and "--fail-above-kl" in err


def test_run_fail_above_loss(pair_dirs, tmp_path, capsys):
    a = str(pair_dirs[0])
    out_file = tmp_path / "r.json"
    args = ["run", "-m", a, "-p", PROMPT, "-a", ANSWER, "--json", "-o", str(out_file)]
    code, out, _ = cli(args, capsys)
    mean = json.loads(out)["summary"]["mean"]
    out_file.unlink()
    code, out, err = cli([*args, "--fail-above-loss", str(mean - 0.001)], capsys)
    assert code == 3 and out_file.exists() and json.loads(out)["summary"]["mean"] == mean
    assert "gate failed: mean loss" in err
    assert cli([*args, "--fail-above-loss", str(mean + 0.001)], capsys)[0] == 0
    assert cli([*args, "--fail-above-loss", "nan"], capsys)[0] == 2


def test_cli_refusal_is_one_line_and_writes_nothing(pair_dirs, tmp_path, capsys):
    a = str(pair_dirs[0])
    other = str(split_differently(build_model(tmp_path / "other", seed=1)))
    out_file = tmp_path / "d.json"
    code, out, err = cli(["diff", "-m", a, "--model-b", other, "-p", PROMPT, "-a", ANSWER, "-o", str(out_file)], capsys)
    assert code == 1 and out == "" and not out_file.exists()
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "tokenizers give different tokens" in errors[0]


def test_batch_fail_above_loss_gates_the_token_weighted_mean(pair_dirs, tmp_path, capsys):
    a = str(pair_dirs[0])
    data = Path(__file__).resolve().parents[1] / "samples" / "pairs.jsonl"
    out_file, summary_file = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = ["batch", "-m", a, str(data), "-o", str(out_file), "--summary-json", str(summary_file), "--force"]
    args.append("--skip-invalid")  # one sample is longer than the tiny model's context
    assert cli(args, capsys)[0] == 0
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    losses = [t["loss"] for line in lines for t in line["tokens"]]
    mean = math.fsum(losses) / len(losses)
    code, _, err = cli([*args, "--fail-above-loss", str(mean - 0.001)], capsys)
    assert code == 3 and "gate failed: token-weighted mean loss" in err
    assert len(out_file.read_text().splitlines()) == len(lines) and summary_file.exists()
    assert cli([*args, "--fail-above-loss", str(mean + 0.001)], capsys)[0] == 0
    assert cli([*args, "--fail-above-loss", "inf"], capsys)[0] == 2


def test_dataset_lines_match_one_by_one_and_the_summary_is_token_weighted(pair_dirs, ref_lm, cand_lm, tmp_path, capsys):
    records = [
        {"id": "a", "prompt": "Where is it?", "answer": " In the north."},
        {"id": "b", "prompt": "Hi", "answer": " the answer is a longer one, with more tokens in it."},
        {"id": "c", "messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey there."}]},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out_file, summary_file = tmp_path / "out.jsonl", tmp_path / "summary.json"
    a, b = map(str, pair_dirs)
    args = ["diff", "-m", a, "--model-b", b, "--input", str(data), "-o", str(out_file), "-b", "3"]
    code, _, err = cli([*args, "--summary-json", str(summary_file)], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b", "c"]
    for record, line in zip(records[:2], lines):  # padded batch of 3 == each pair alone
        alone = diff(ref_lm, cand_lm, record["prompt"], record["answer"])
        assert [t["kl"] for t in line["tokens"]] == pytest.approx([t.kl for t in alone.tokens], abs=1e-5)
        assert [t["dnll"] for t in line["tokens"]] == pytest.approx([t.dnll for t in alone.tokens], abs=1e-5)
    alone = diff_messages(ref_lm, cand_lm, records[2]["messages"])
    assert [t["kl"] for t in lines[2]["tokens"]] == pytest.approx([t.kl for t in alone.tokens], abs=1e-5)
    summary = json.loads(summary_file.read_text())
    kls = [t["kl"] for line in lines for t in line["tokens"]]
    assert summary["kind"] == "diff_summary" and summary["summary"]["count"] == len(kls)
    assert summary["summary"]["kl_mean"] == pytest.approx(math.fsum(kls) / len(kls), abs=1e-12)
    by_kl = sorted(lines, key=lambda line: -line["summary"]["kl_mean"])
    assert [e["id"] for e in summary["worst_by_kl"]] == [line["id"] for line in by_kl]
    by_dnll = sorted(lines, key=lambda line: -line["summary"]["dnll_mean"])
    assert [e["id"] for e in summary["worst_by_dnll"]] == [line["id"] for line in by_dnll]
    # The gate reads the data-set mean, after every line and the summary are written.
    out_file.unlink()
    code, _, err = cli([*args, "--fail-above-kl", str(summary["summary"]["kl_mean"] - 1e-6)], capsys)
    assert code == 3 and len(out_file.read_text().splitlines()) == 3


def test_dataset_record_with_other_tokens_is_skipped_or_stops(pair_dirs, tmp_path, capsys):
    a = str(pair_dirs[0])
    other = str(split_differently(build_model(tmp_path / "other", seed=1)))
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"prompt": "x", "answer": " the"}) + "\n" + json.dumps({"prompt": "x", "answer": "yo"}) + "\n"
    )
    out_file = tmp_path / "out.jsonl"
    code, out, err = cli(["diff", "-m", a, "--model-b", other, "--input", str(data), "-o", str(out_file)], capsys)
    assert code == 1 and "line 1" in err and "tokenizers give different tokens" in err
    assert not out_file.exists()
    code, _, err = cli(
        ["diff", "-m", a, "--model-b", other, "--input", str(data), "-o", str(out_file), "--skip-invalid", "--force"],
        capsys,
    )
    assert code == 0, err
    assert [json.loads(line)["line"] for line in out_file.read_text().splitlines()] == [2]


def test_an_infinite_kl_is_an_error_not_a_number(ref_lm):
    """A candidate that gives probability 0 to a token the reference does not: KL is infinite, refused."""
    from ce_inspect.diff.compare import _Side, compare

    example = encode(ref_lm.tokenizer, "a", " b", Layout(), max_length=None)
    n, vocab = len(example.scored_positions), len(ref_lm.tokenizer)
    ref_logits = torch.zeros(n, vocab)
    cand_logits = torch.zeros(n, vocab)
    cand_logits[:, 7] = -math.inf

    def side(logits):
        targets = [example.labels[p] for p in example.scored_positions]
        return _Side(ref_lm, [example], targets, logits, lambda x: x, 4, vocab, [None])

    with pytest.raises(
        NonFiniteError,
        match=r"KL\(ref‖cand\) is infinite at scored token 1 of 3 \(target ' '\): the candidate model gives",
    ):
        compare(side(ref_logits), side(cand_logits), ScoreOptions())
    with pytest.raises(
        NonFiniteError, match=r"KL\(cand‖ref\) is infinite at .*: the reference model gives probability 0"
    ):
        compare(side(cand_logits), side(ref_logits), ScoreOptions())
    assert compare(side(ref_logits), side(ref_logits), ScoreOptions())[0].summary.kl_mean == 0.0


RESUME_RECORDS = [
    {"id": "a", "prompt": "Where is it?", "answer": " In the north."},
    {"id": "b", "prompt": "Hi", "answer": " the answer is a longer one, with more tokens in it."},
    {"id": "c", "messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey there."}]},
    {"id": "d", "prompt": "Two", "answer": " plus two is four."},
]


def _resume_setup(pair_dirs, tmp_path, capsys) -> tuple[list[str], Path, Path, list[str], dict]:
    """A full run's lines and summary (one example per pass, so a resumed run computes the same floats)."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RESUME_RECORDS))
    out_file, summary_file = tmp_path / "out.jsonl", tmp_path / "summary.json"
    a, b = map(str, pair_dirs)
    args = ["diff", "-m", a, "--model-b", b, "--input", str(data), "-o", str(out_file), "-b", "1", "--worst", "3"]
    code, _, err = cli([*args, "--summary-json", str(summary_file)], capsys)
    assert code == 0, err
    return (
        args,
        out_file,
        summary_file,
        out_file.read_text().splitlines(keepends=True),
        json.loads(summary_file.read_text()),
    )


def test_dataset_resume_gives_the_uninterrupted_output_and_summary(pair_dirs, tmp_path, capsys):
    args, out_file, summary_file, full_lines, full_summary = _resume_setup(pair_dirs, tmp_path, capsys)
    assert len(full_lines) == 4 and all(json.loads(line)["settings"]["model_b"] for line in full_lines)
    for k in (1, 3):
        # The first k lines, then a torn piece of the next (a kill mid-write): the piece is dropped.
        out_file.write_text("".join(full_lines[:k]) + full_lines[k][:40])
        code, _, err = cli([*args, "--resume", "--summary-json", str(summary_file), "--force"], capsys)
        assert code == 2 and "--resume or --force" in err  # both at once is a usage error
        summary_file.unlink()
        code, _, err = cli([*args, "--resume", "--summary-json", str(summary_file)], capsys)
        assert code == 0, err
        assert "incomplete last line" in err
        assert out_file.read_text().splitlines(keepends=True) == full_lines
        resumed = json.loads(summary_file.read_text())
        assert resumed["batching"]["examples"] == 4 - k  # only the missing examples ran
        assert {**resumed, "batching": None} == {**full_summary, "batching": None}
    # The data-set statistics are token-weighted over every line's tokens, resumed ones included.
    kls = [t["kl"] for line in full_lines for t in json.loads(line)["tokens"]]
    dnlls = [t["dnll"] for line in full_lines for t in json.loads(line)["tokens"]]
    assert full_summary["summary"]["count"] == len(kls)
    assert full_summary["summary"]["kl_mean"] == pytest.approx(math.fsum(kls) / len(kls), abs=1e-12)
    assert full_summary["summary"]["dnll_mean"] == pytest.approx(math.fsum(dnlls) / len(dnlls), abs=1e-12)
    assert full_summary["summary"]["kl_max"] == max(kls)


def test_dataset_resume_refuses_a_changed_candidate_or_option(pair_dirs, tmp_path, capsys):
    args, out_file, summary_file, full_lines, _ = _resume_setup(pair_dirs, tmp_path, capsys)
    kept = "".join(full_lines[:2])
    out_file.write_text(kept)
    other = str(build_model(tmp_path / "other", seed=2))
    changed_b = [other if arg == str(pair_dirs[1]) else arg for arg in args]
    for extra, flag in (([], "--model-b"), (["--top-k", "3"], "--top-k")):
        code, out, err = cli([*(changed_b if not extra else args), *extra, "--resume"], capsys)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("Error:") and flag in err, err
        assert out_file.read_text() == kept
    # Lines another command wrote are not diff lines: refused, untouched.
    code, _, err = cli(
        ["batch", str(tmp_path / "data.jsonl"), "-m", str(pair_dirs[0]), "-o", str(out_file), "--force"], capsys
    )
    assert code == 0, err
    batch_lines = out_file.read_text()
    code, _, err = cli([*args, "--resume"], capsys)
    assert code == 1 and "not a complete ce-inspect diff result" in err
    assert out_file.read_text() == batch_lines


def test_dataset_resume_needs_an_output_file(pair_dirs, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(RESUME_RECORDS[0]) + "\n")
    a, b = map(str, pair_dirs)
    code, out, err = cli(["diff", "-m", a, "--model-b", b, "--input", str(data), "--resume"], capsys)
    assert code == 2 and out == "" and "--output" in err
    code, out, err = cli(["diff", "-m", a, "--model-b", b, "-p", "x", "-a", " y", "--resume"], capsys)
    assert code == 2 and out == "" and "--resume goes with a data set (DATA or --input)" in err


def test_dataset_output_is_locked_against_a_second_writer(pair_dirs, tmp_path, capsys):
    """As batch: while one run writes --output (its lock held), a second diff onto it stops before loading."""
    from ce_inspect.files import output_lock

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(RESUME_RECORDS[0]) + "\n")
    out_file = tmp_path / "d.jsonl"
    a, b = map(str, pair_dirs)
    with output_lock(out_file, label="`output`"):
        code, out, err = cli(["diff", "-m", a, "--model-b", b, "--input", str(data), "-o", str(out_file)], capsys)
    assert code == 1 and out == "" and "another ce-inspect run" in err, err
    assert not out_file.exists()
    assert cli(["diff", "-m", a, "--model-b", b, "--input", str(data), "-o", str(out_file)], capsys)[0] == 0


# --- issue 22: diff --input scores the targets batch scores, on every record form ---------------------------

_CHAT = [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey there."}]
#: One record of every form ``data.FORMATS`` reads (and every source of tokenized labels); ids 5..40 are
#: in the tiny models' vocabulary. The first tokenized record's labels differ from its input ids where it
#: trains: ``batch`` scores the label there, and so must ``diff`` (its copy used to score the input id).
EVERY_FORM = [
    ("tokenized labels", {"input_ids": [1, 20, 21, 22, 23, 24, 25], "labels": [-100, -100, -100, 30, 31, 32, 33]}),
    ("tokenized labels equal", {"input_ids": [1, 20, 21, 22, 23], "labels": [-100, -100, 21, 22, 23]}),
    ("tokenized completion_mask", {"input_ids": [1, 9, 10, 11, 12], "completion_mask": [0, 0, 1, 1, 1]}),
    ("tokenized assistant_masks", {"input_ids": [1, 9, 10, 11, 12], "assistant_masks": [0, 1, 1, 0, 1]}),
    ("tokenized input_ids only", {"input_ids": [1, 7, 8, 9, 10]}),
    ("conversations", {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hey there."}]}),
    ("messages", {"messages": _CHAT}),
    ("prompt-completion", {"prompt": "Where is it?", "completion": " In the north."}),
    ("prompt-completion conversational", {"prompt": _CHAT[:1], "completion": _CHAT[1:]}),
    ("prompt-answer", {"prompt": "Hi", "answer": " the answer is a longer one."}),
    ("alpaca", {"instruction": "Name a colour.", "input": "One word.", "output": " Blue."}),
    ("text", {"text": "the cat sat on the mat"}),
]


def test_every_form_in_the_table_is_a_format_the_reader_knows():
    from ce_inspect.data import FORMATS, Fields, parse_record

    seen = {parse_record(1, record, Fields()).format for _, record in EVERY_FORM}
    # A new format must get a row above; preference pairs are `prefs`'s alone (tests/test_prefs.py: batch and
    # diff refuse them by name).
    assert seen == set(FORMATS) - {"preference"}


@pytest.mark.parametrize("tokenization", ["separate", "trl"])
def test_dataset_scores_the_targets_batch_scores_on_every_record_form(
    pair_dirs, ref_lm, tmp_path, tokenization, capsys
):
    """Issue 22: on every record form, `diff --input` scores the same (position, target id) pairs as `batch`
    with the same model and options, and its reference losses are batch's losses (within the float32 bound:
    the two commands may batch the records differently)."""
    data = tmp_path / "every-form.jsonl"
    data.write_text("".join(json.dumps({"id": name, **record}) + "\n" for name, record in EVERY_FORM))
    a, b = map(str, pair_dirs)
    common = ["-m", a, "--device", "cpu", "--tokenization", tokenization, "-b", "4"]
    code, _, err = cli(["batch", str(data), *common, "-o", str(tmp_path / "batch.jsonl")], capsys)
    assert code == 0, err
    code, _, err = cli(
        ["diff", "--input", str(data), *common, "--model-b", b, "-o", str(tmp_path / "diff.jsonl")], capsys
    )
    assert code == 0, err
    batched = [json.loads(line) for line in (tmp_path / "batch.jsonl").read_text().splitlines()]
    diffed = [json.loads(line) for line in (tmp_path / "diff.jsonl").read_text().splitlines()]
    assert [line["id"] for line in batched] == [line["id"] for line in diffed] == [name for name, _ in EVERY_FORM]
    from ce_inspect.data import Fields, encode_record, parse_record

    layout = Layout(tokenization=tokenization)
    encoded = [encode_record(ref_lm, parse_record(1, record, Fields()), layout) for _, record in EVERY_FORM]
    bound = batch_tolerance(ref_lm, encoded)
    for mine, theirs in zip(batched, diffed):
        targets = [(t["index"], t["token_id"]) for t in mine["tokens"]]
        assert targets and targets == [(t["index"], t["token_id"]) for t in theirs["tokens"]], mine["id"]
        losses = [t["ref"]["loss"] for t in theirs["tokens"]]
        assert losses == pytest.approx([t["loss"] for t in mine["tokens"]], abs=bound), mine["id"]
    first = batched[0]["tokens"]  # the trained labels, not the input ids at those positions
    assert [(t["index"], t["token_id"]) for t in first] == [(3, 30), (4, 31), (5, 32), (6, 33)]


@pytest.mark.parametrize("width", [60, 80, 140])
def test_the_disagreement_table_fits_the_terminal_with_its_borders(ref_lm, cand_lm, width):
    """Issue 20: at 80 columns diff's table lost its right border and its KL and ΔNLL columns ran off the
    line. Now the less important columns go first, as run's table does; target, KL and ΔNLL stay."""
    import io

    from rich.console import Console

    from ce_inspect.cli.render_diff import render_diff

    result = diff(ref_lm, cand_lm, PROMPT, ANSWER + " and a few more words to compare, token by token")
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    render_diff(result, worst=10, console=console)
    lines = console.file.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Where the models disagree most"))
    table = [line for line in lines[start + 1 :] if line[:1] in "┏┃┡│└"]
    assert len(table) >= 5, lines
    assert all(len(line) <= width and line[-1] in "┓┃┩│┘" for line in table), "\n".join(table)
    header = table[1]
    assert all(name in header for name in ("target", "KL", "ΔNLL")), header
    if width >= 140:
        assert all(name in header for name in ("#", "p ref→cand", "rank", "top ref", "top cand")), header
