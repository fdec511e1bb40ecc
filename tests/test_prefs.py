"""`ce-inspect prefs` (issue 19): preference pairs as TRL's DPOTrainer prepares and scores them.

- The tokens: TRL's own preparation (``DPOTrainer._prepare_dataset``, the function the trainer maps over the data
  set, called directly, then ``DataCollatorForPreference``) gives exactly the ids and completion masks ce-inspect
  scores on both sides, plain, conversational and implicit-prompt, with and without ``max_length``.
- The figures: each side's ``*_logps`` against an independent forward pass (torch's log_softmax on TRL's ids) and
  against ``ce-inspect run``'s ``summary.sum_logprob``; every loss type against its formula; the same model as
  policy and reference gives zero margins and a sigmoid loss of ln 2.
- The pair checks fire on planted pairs and on nothing in clean sets; bad input is a one-line error naming the
  line, with no output; the library writes the CLI's lines, resumed too; the documents hold their TypedDicts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import types
from pathlib import Path

import pytest
import torch
from conftest import build_model
from test_contract import check_keys

import ce_inspect
from ce_inspect import load
from ce_inspect.cli import main
from ce_inspect.contract import PrefsLineDict, PrefsSummaryDict
from ce_inspect.errors import UsageError
from ce_inspect.prefs import REF_PREFERENCE_NATS, PairFigures
from ce_inspect.text import LENGTH_BIAS_MIN_PAIRS, LengthCounts, encode_preference, extract_prompt

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "prefs"
CLEAN = ("pairs.jsonl", "conversational.jsonl", "implicit.jsonl")


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return load(str(tiny_llama_dir), device="cpu", quiet=True)


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("prefs-ref") / "ref", seed=1)


@pytest.fixture(scope="module")
def ref(ref_dir):
    return load(str(ref_dir), device="cpu", quiet=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(name: str) -> list[dict]:
    return _lines(SAMPLES / name)


# --- TRL's own preparation ----------------------------------------------------------------------------------


def trl_prepared(tokenizer, rows: list[dict], tmp_path: Path, max_length=None, mode="keep_start") -> dict:
    """TRL's DPO preparation of ``rows``, by id: each side's (input_ids, completion_mask) as the collator builds
    them. Rows TRL drops (a prompt that fills ``max_length``) are absent."""
    pytest.importorskip("trl", reason="TRL is a test-only extra: pip install 'ce-inspect[trl]'")
    pytest.importorskip("datasets", reason="TRL's data preparation needs datasets")
    from datasets import Dataset
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)
    with pytest.warns() if mode == "keep_end" else contextlib.nullcontext():
        args = DPOConfig(
            output_dir=str(tmp_path / "trl"),
            report_to=[],
            max_length=max_length,
            truncation_mode=mode,
            use_cpu=True,
            bf16=False,
            dataset_num_proc=None,
        )
    trainer = types.SimpleNamespace(_tokenizer=tokenizer)  # all _prepare_dataset reads of the trainer
    prepared = DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train")
    collator = DataCollatorForPreference(
        pad_token_id=tokenizer.pad_token_id, max_length=max_length, truncation_mode=mode
    )
    out = {}
    for example in prepared:
        batch = collator.torch_call([{k: example[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        sides = []
        for k in range(2):
            n = int(batch["attention_mask"][k].sum())
            sides.append((batch["input_ids"][k][:n].tolist(), batch["completion_mask"][k][:n].tolist()))
        out[example["id"]] = sides
    return out


def _ours(tokenizer, row: dict, max_length=None, mode="keep_start"):
    return encode_preference(
        tokenizer, row.get("prompt"), row["chosen"], row["rejected"], max_length=max_length, truncation_mode=mode
    )


PARITY_ROWS = {
    "plain": [
        *_lines(SAMPLES / "pairs.jsonl"),
        {"id": "merge", "prompt": "Say t", "chosen": "he end", "rejected": "his"},  # a word across the boundary
        {"id": "eos", "prompt": "Closed", "chosen": " ends</s>", "rejected": " too"},  # TRL adds no second EOS
        {"id": "space", "prompt": "The capital of France is ", "chosen": "Paris.", "rejected": "Lyon."},
    ],
    "conversational": _lines(SAMPLES / "conversational.jsonl"),
    "implicit": _lines(SAMPLES / "implicit.jsonl"),
    "implicit plain": [
        {"id": "a", "chosen": "Q: sky? It is blue.", "rejected": "Q: sky? It is green."},
        {"id": "b", "chosen": "Same start", "rejected": "Same start, longer"},  # one side a prefix of the other
    ],
}


#: A max_length per form that cuts some sequences and leaves some prompts whole (the chat template's are longer).
CUT = {"plain": 20, "conversational": 60, "implicit": 60, "implicit plain": 12}


@pytest.mark.parametrize("form", list(PARITY_ROWS))
@pytest.mark.parametrize(("cut", "mode"), [(False, "keep_start"), (True, "keep_start"), (True, "keep_end")])
def test_both_sides_are_exactly_trls_ids_and_masks(lm, form, cut, mode, tmp_path):
    rows, max_length = PARITY_ROWS[form], CUT[form] if cut else None
    expected = trl_prepared(lm.tokenizer, rows, tmp_path, max_length, mode)
    for row in rows:
        ex = _ours(lm.tokenizer, row, max_length, mode)
        if row["id"] not in expected:  # TRL dropped it: the prompt fills max_length, nothing is trained
            assert mode == "keep_start" and {f.check for f in ex.findings} >= {"no-trained-tokens"}, row
            continue
        for side, (ids, mask) in zip((ex.chosen, ex.rejected), expected[row["id"]]):
            assert list(side.input_ids) == ids, row
            # Position 0 is never a target (the model's shift drops it), so masks compare from 1 on.
            assert [int(label != side.ignore_index) for label in side.labels][1:] == mask[1:], row
    assert len(expected) > 0


def test_extract_prompt_is_trls(lm):
    pytest.importorskip("trl")
    from trl import extract_prompt as trl_extract

    for row in [*PARITY_ROWS["implicit"], *PARITY_ROWS["implicit plain"], {"chosen": "ab c", "rejected": "ab d"}]:
        got = extract_prompt(row["chosen"], row["rejected"])
        want = trl_extract({"chosen": row["chosen"], "rejected": row["rejected"]})
        assert got == (want["prompt"], want["chosen"], want["rejected"]), row


@pytest.mark.default_model
@pytest.mark.parametrize("form", ["plain", "conversational", "implicit"])
def test_both_sides_are_trls_with_smollm2s_tokenizer(smollm2, form, tmp_path):
    rows = PARITY_ROWS[form]
    expected = trl_prepared(smollm2.tokenizer, rows, tmp_path)
    for row in rows:
        ex = _ours(smollm2.tokenizer, row)
        for side, (ids, mask) in zip((ex.chosen, ex.rejected), expected[row["id"]]):
            assert list(side.input_ids) == ids and [int(x != -100) for x in side.labels][1:] == mask[1:], row


# --- the figures ---------------------------------------------------------------------------------------------


def _independent_logps(model, ids: list[int], mask: list[int]) -> float:
    """Sum of log p(token) over the completion, from the model's logits and torch's log_softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # [seq, vocab]
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # [seq - 1]
    return float((logp.double() * torch.tensor(mask[1:], dtype=torch.float64)).sum())


def test_each_sides_logps_equal_an_independent_forward_pass_on_trls_ids(lm, ref, ref_dir, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    rows = PARITY_ROWS["plain"]
    data = _write(tmp_path / "plain.jsonl", rows)
    ce_inspect.prefs_dataset(lm, data, tmp_path / "out.jsonl", ref=ref)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    reference = AutoModelForCausalLM.from_pretrained(ref_dir)
    expected = trl_prepared(lm.tokenizer, rows, tmp_path)
    for line in _lines(tmp_path / "out.jsonl"):
        (c_ids, c_mask), (r_ids, r_mask) = expected[line["id"]]
        assert line["chosen_logps"] == pytest.approx(_independent_logps(policy, c_ids, c_mask), abs=1e-4)
        assert line["rejected_logps"] == pytest.approx(_independent_logps(policy, r_ids, r_mask), abs=1e-4)
        assert line["ref_chosen_logps"] == pytest.approx(_independent_logps(reference, c_ids, c_mask), abs=1e-4)
        assert line["ref_rejected_logps"] == pytest.approx(_independent_logps(reference, r_ids, r_mask), abs=1e-4)
        assert line["chosen"]["count"] == sum(c_mask[1:]) and line["rejected"]["count"] == sum(r_mask[1:])


def _run_sum_logprob(model_dir: Path, prompt: str, answer: str, tokenization: str) -> float:
    out = io.StringIO()
    args = ["run", "-m", str(model_dir), "-p", prompt, "-a", answer, "--tokenization", tokenization, "--json"]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())["summary"]["sum_logprob"]


@pytest.mark.parametrize("tokenization", ["trl", "separate", "joint"])
def test_each_sides_logps_equal_run_sum_logprob_for_prompt_and_side(lm, tiny_llama_dir, tokenization, tmp_path):
    rows = _rows("pairs.jsonl")[:2]
    out = tmp_path / "out.jsonl"
    ce_inspect.prefs_dataset(lm, SAMPLES / "pairs.jsonl", out, tokenization=tokenization)
    for row, line in zip(rows, _lines(out)):
        # TRL's DPO rule starts both completions at the shorter common prefix; here both sides agree on it.
        assert line["layout"]["prompt_tokens"] == line["layout"]["prompt_tokens_alone"] or tokenization != "trl"
        for side in ("chosen", "rejected"):
            want = _run_sum_logprob(tiny_llama_dir, row["prompt"], row[side], tokenization)
            assert line[f"{side}_logps"] == pytest.approx(want, abs=1e-5)
            assert line[side]["summary"]["sum_logprob"] == pytest.approx(want, abs=1e-5)


def _formula(loss_type: str, line: dict, beta: float, gamma: float = 0.5) -> float:
    """Each loss computed here, in torch, from the line's own log-prob sums and token counts."""
    f = torch.nn.functional
    c, r = (
        torch.tensor(line["chosen_logps"], dtype=torch.float64),
        torch.tensor(line["rejected_logps"], dtype=torch.float64),
    )
    nc, nr = line["chosen"]["count"], line["rejected"]["count"]
    if loss_type in ("sigmoid", "ipo"):
        rc, rr = line["ref_chosen_logps"], line["ref_rejected_logps"]
        if loss_type == "sigmoid":
            return float(-f.logsigmoid(beta * ((c - rc) - (r - rr))))
        return float(((c - rc) / nc - (r - rr) / nr - 1 / (2 * beta)) ** 2)
    ac, ar = c / nc, r / nr
    if loss_type == "simpo":
        return float(-f.logsigmoid(beta * (ac - ar) - gamma))
    log_odds = (ac - ar) - (torch.log1p(-torch.exp(ac)) - torch.log1p(-torch.exp(ar)))
    return float(-beta * f.logsigmoid(log_odds))


@pytest.mark.parametrize(("loss_type", "beta"), [("sigmoid", 0.1), ("ipo", 0.5), ("simpo", 2.0), ("orpo", 0.1)])
def test_every_loss_type_equals_its_formula(lm, ref, loss_type, beta, tmp_path):
    out = tmp_path / "out.jsonl"
    with_ref = ref if loss_type in ("sigmoid", "ipo") else None
    summary = ce_inspect.prefs_dataset(lm, SAMPLES / "pairs.jsonl", out, ref=with_ref, loss_type=loss_type, beta=beta)
    lines = _lines(out)
    for line in lines:
        assert line["loss"] == pytest.approx(_formula(loss_type, line, beta), abs=1e-5, rel=1e-5)
        if loss_type in ("sigmoid", "ipo"):
            rewards = (
                beta * (line["chosen_logps"] - line["ref_chosen_logps"]),
                beta * (line["rejected_logps"] - line["ref_rejected_logps"]),
            )
        else:
            rewards = (
                beta * line["chosen_logps"] / line["chosen"]["count"],
                beta * line["rejected_logps"] / line["rejected"]["count"],
            )
        assert (line["chosen_reward"], line["rejected_reward"]) == pytest.approx(rewards, abs=1e-9)
        assert line["margin"] == pytest.approx(rewards[0] - rewards[1], abs=1e-9)
    doc = summary.to_dict()
    losses = [line["loss"] for line in lines]
    mean = sum(losses) / len(losses)
    se = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1) / len(losses))
    assert doc["loss"]["mean"] == pytest.approx(mean) and doc["loss"]["se"] == pytest.approx(se)
    margins = [line["margin"] for line in lines]
    assert doc["metrics"]["rewards/margins"]["mean"] == pytest.approx(sum(margins) / len(margins))
    accuracy = sum(line["chosen_reward"] > line["rejected_reward"] for line in lines) / len(lines)
    assert doc["metrics"]["rewards/accuracies"]["mean"] == pytest.approx(accuracy)
    assert [w["line"] for w in doc["most_negative_margins"]] == [
        line["line"] for line in sorted(lines, key=lambda line: (line["margin"], line["line"]))
    ]


def test_the_same_model_as_policy_and_reference_gives_zero_margins_and_ln2(lm, tiny_llama_dir, tmp_path):
    same = load(str(tiny_llama_dir), device="cpu", quiet=True)  # loaded again: a second forward pass
    for name in CLEAN:
        out = tmp_path / f"{name}.out"
        summary = ce_inspect.prefs_dataset(lm, SAMPLES / name, out, ref=same)
        for line in _lines(out):
            assert line["margin"] == pytest.approx(0.0, abs=1e-9)
            assert line["loss"] == pytest.approx(math.log(2), abs=1e-9)
        assert summary.to_dict()["loss"]["mean"] == pytest.approx(math.log(2), abs=1e-9)


def test_the_losses_of_known_numbers():
    f = PairFigures("sigmoid", 0.1, -10.0, -12.0, 5, 6, -11.0, -11.0)
    assert f.margin == pytest.approx(0.1 * (1.0 - (-1.0))) and f.loss == pytest.approx(math.log1p(math.exp(-0.2)))
    ipo = PairFigures("ipo", 0.5, -10.0, -12.0, 5, 6, -11.0, -11.0)
    assert ipo.loss == pytest.approx((1 / 5 + 1 / 6 - 1.0) ** 2)
    simpo = PairFigures("simpo", 2.0, -10.0, -12.0, 5, 6, gamma=0.5)
    assert simpo.loss == pytest.approx(math.log1p(math.exp(-(2.0 * (-2.0 + 2.0) - 0.5))))


# --- the pair checks -----------------------------------------------------------------------------------------


def _findings(out: Path) -> dict:
    return {line["id"]: sorted({f["check"] for f in line["findings"]}) for line in _lines(out)}


def test_each_pair_check_fires_on_its_planted_pair_and_nothing_in_clean_sets(lm, tmp_path):
    out = tmp_path / "planted.jsonl"
    summary = ce_inspect.prefs_dataset(lm, SAMPLES / "planted.jsonl", out, max_length=24)
    assert _findings(out) == {
        "clean": [],
        "identical": ["identical"],
        "identical-after-truncation": ["identical"],
        "prompt-fills-max-length": ["identical", "no-trained-tokens"],
    }
    assert summary.to_dict()["checks"] == {
        "identical": 3,
        "no-trained-tokens": 1,
        "prompt-differs": 0,
        "side-is-prompt": 0,
        "length-bias": 0,
        "ref-prefers-rejected": 0,
    }
    ce_inspect.prefs_dataset(lm, SAMPLES / "planted-implicit.jsonl", out, force=True)
    assert _findings(out) == {"clean": [], "prompt-differs": ["prompt-differs"]}
    for name in CLEAN:
        clean = tmp_path / f"{name}.out"
        summary = ce_inspect.prefs_dataset(lm, SAMPLES / name, clean)
        assert set(map(tuple, _findings(clean).values())) == {()}, name
        assert summary.to_dict()["flagged"] == 0


def test_side_is_prompt_and_ref_prefers_rejected_fire_on_their_planted_pairs(lm, ref, tmp_path):
    out = tmp_path / "sides.jsonl"
    summary = ce_inspect.prefs_dataset(lm, SAMPLES / "planted-sides.jsonl", out, ref=ref).to_dict()
    assert _findings(out) == {
        "clean": [],
        "side-is-prompt": ["side-is-prompt"],
        "ref-prefers-rejected": ["ref-prefers-rejected"],
    }
    assert summary["checks"]["side-is-prompt"] == 1 and summary["checks"]["ref-prefers-rejected"] == 1
    for line in _lines(out):  # the rule on the line's own figures
        gap = line["ref_rejected_logps"] - line["ref_chosen_logps"]
        assert (gap > REF_PREFERENCE_NATS) == (line["id"] == "ref-prefers-rejected"), (line["id"], gap)
    ce_inspect.prefs_dataset(lm, SAMPLES / "planted-sides.jsonl", out, force=True)  # no reference model: not run
    assert _findings(out)["ref-prefers-rejected"] == []
    for name in CLEAN:
        clean = tmp_path / f"{name}.ref.out"
        assert ce_inspect.prefs_dataset(lm, SAMPLES / name, clean, ref=ref).to_dict()["flagged"] == 0, name
        assert set(map(tuple, _findings(clean).values())) == {()}, name


def test_side_is_prompt_on_a_conversation_echoing_the_last_prompt_message(lm):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is  2 + 2?"}]
    echo, answer = [{"role": "assistant", "content": "What is 2 + 2? "}], [{"role": "assistant", "content": "4."}]
    found = encode_preference(lm.tokenizer, prompt, answer, echo).findings
    assert [(f.check, "rejected" in f.message) for f in found] == [("side-is-prompt", True)]
    assert encode_preference(lm.tokenizer, prompt, answer, [{"role": "assistant", "content": "5."}]).findings == ()


def test_length_counts_thresholds():
    def counts(chosen_longer: int, rejected_longer: int, same: int = 0) -> LengthCounts:
        c = LengthCounts()
        for a, b in [(3, 1)] * chosen_longer + [(1, 3)] * rejected_longer + [(2, 2)] * same:
            c.add(a, b)
        return c

    assert counts(15, 5).longer == "chosen" and counts(15, 5).biased == 15  # 75%: fires
    assert counts(14, 6).longer is None and counts(14, 3, 3).longer is None  # 70%: does not
    assert counts(5, 15).longer == "rejected"  # either side
    assert counts(LENGTH_BIAS_MIN_PAIRS - 1, 0).finding() is None  # too few pairs to say
    assert "16 of 20 pairs" in counts(16, 4).finding().message


def test_length_bias_fires_on_a_biased_set_with_its_counts_and_not_on_a_balanced_one(lm, tmp_path):
    out = tmp_path / "bias.jsonl"
    summary = ce_inspect.prefs_dataset(lm, SAMPLES / "length-bias.jsonl", out).to_dict()
    lines = _lines(out)
    longer = sum(1 for line in lines if line["chosen"]["count"] > line["rejected"]["count"])
    shorter = sum(1 for line in lines if line["chosen"]["count"] < line["rejected"]["count"])
    assert (longer, shorter) == (16, 4)
    bias = summary["length_bias"]
    assert (bias["pairs"], bias["chosen_longer"], bias["rejected_longer"], bias["same_length"]) == (20, 16, 4, 0)
    assert bias["finding"]["check"] == "length-bias" and "16 of 20 pairs" in bias["finding"]["message"]
    assert summary["checks"]["length-bias"] == 16
    rows = _rows("length-bias.jsonl")
    balanced = [
        {**r, "chosen": r["rejected"], "rejected": r["chosen"]}
        if i % 2 and len(r["chosen"]) > len(r["rejected"])
        else r
        for i, r in enumerate(rows)
    ]
    for data in (_write(tmp_path / "balanced.jsonl", balanced), _write(tmp_path / "few.jsonl", rows[:19])):
        summary = ce_inspect.prefs_dataset(lm, data, tmp_path / "o.jsonl", force=True).to_dict()
        assert summary["length_bias"]["finding"] is None and summary["checks"]["length-bias"] == 0, data
    for name in CLEAN:
        assert ce_inspect.prefs_dataset(lm, SAMPLES / name).to_dict()["length_bias"]["finding"] is None


def test_fail_on_takes_the_new_checks(tiny_llama_dir, ref_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"

    def run(name: str, *args: str) -> int:
        base = ["prefs", str(SAMPLES / name), "-m", str(tiny_llama_dir), "-o", str(out), "--force"]
        return main([*base, *args])

    assert run("planted-sides.jsonl", "--fail-on", "side-is-prompt") == 3
    assert run("planted-sides.jsonl", "--fail-on", "ref-prefers-rejected") == 2  # no reference model
    assert run("planted-sides.jsonl", "--ref-model", str(ref_dir), "--fail-on", "ref-prefers-rejected") == 3
    assert run("length-bias.jsonl", "--fail-on", "length-bias") == 3
    assert "length-bias (16 pairs) failed" in capsys.readouterr().err
    assert run("pairs.jsonl", "--fail-on", "length-bias,side-is-prompt") == 0


def test_fail_on_exits_3_after_writing_everything(tiny_llama_dir, tmp_path, capsys):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = ["prefs", str(SAMPLES / "planted.jsonl"), "-m", str(tiny_llama_dir), "--max-length", "24"]
    assert main([*args, "-o", str(out), "--summary-json", str(summary), "--fail-on", "no-trained-tokens"]) == 3
    assert len(_lines(out)) == 4 and json.loads(summary.read_text())["checks"]["no-trained-tokens"] == 1
    assert "no-trained-tokens (1 pairs) failed (--fail-on); exit 3" in capsys.readouterr().err
    assert main([*args, "-o", str(out), "--force", "--fail-on", "prompt-differs"]) == 0
    assert main([*args, "-o", str(out), "--force", "--fail-on", "bogus"]) == 2


# --- bad input ----------------------------------------------------------------------------------------------

GOOD = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
CONV = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, {"prompt": "Q?", "chosen": " yes"}], "line 2: missing field 'rejected'"),
        ([GOOD, {"prompt": "Q?", "chosen": "", "rejected": " no"}], "line 2: field 'chosen' is empty"),
        ([{**CONV, "rejected": []}], "line 1: field 'rejected' is an empty message list"),
        ([{**GOOD, "chosen": CONV["chosen"]}], "line 1: mixes plain text and messages"),
        ([GOOD, CONV], "line 2: the data set mixes formats"),
        ([GOOD, {"chosen": " yes", "rejected": " no"}], "line 2: the data set mixes formats"),
    ],
)
def test_bad_input_is_one_line_naming_the_line_and_no_output(tiny_llama_dir, rows, message, tmp_path, capsys):
    data, out = _write(tmp_path / "bad.jsonl", rows), tmp_path / "out.jsonl"
    assert main(["prefs", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1], err
    assert not out.exists()


def test_a_reference_whose_tokenizer_differs_is_refused_naming_the_line(tiny_llama_dir, tmp_path, capsys):
    other = build_model(tmp_path / "no-bos", add_bos=False)  # the same vocabulary, no BOS: other tokens
    data, out = _write(tmp_path / "data.jsonl", [GOOD]), tmp_path / "out.jsonl"
    assert main(["prefs", str(data), "-m", str(tiny_llama_dir), "--ref-model", str(other), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("Error: ") and "line 1" in err and "reference's tokenizer" in err
    assert not out.exists()


def test_usage_errors(lm, ref, tiny_llama_dir, capsys):
    with pytest.raises(UsageError, match="`ref` is not used by `loss_type` simpo"):
        ce_inspect.prefs_dataset(lm, SAMPLES / "pairs.jsonl", ref=ref, loss_type="simpo")
    data = str(SAMPLES / "pairs.jsonl")
    assert main(["prefs", data, "-m", str(tiny_llama_dir), "--loss-type", "kto"]) == 2
    assert main(["prefs", data, "-m", str(tiny_llama_dir), "--beta", "0"]) == 2
    assert main(["prefs", data, "-m", str(tiny_llama_dir), "--loss-type", "orpo", "--ref-model", "x"]) == 2
    assert main(["prefs", data, "-m", str(tiny_llama_dir), "--tokenization", "separate", "--truncation-mode", "x"]) == 2
    capsys.readouterr()


# --- the library and the command line, the documents -----------------------------------------------------


def test_prefs_dataset_writes_the_lines_prefs_writes_and_resumes_them(
    lm, ref, tiny_llama_dir, ref_dir, tmp_path, capsys
):
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    data = SAMPLES / "planted.jsonl"
    args = ["prefs", str(data), "-m", str(tiny_llama_dir), "--ref-model", str(ref_dir), "--max-length", "24"]
    assert main([*args, "-o", str(by_cli)]) == 0, capsys.readouterr().err
    summary = ce_inspect.prefs_dataset(lm, data, by_lib, ref=ref, max_length=24)
    assert by_lib.read_bytes() == by_cli.read_bytes()
    full = by_cli.read_bytes()
    lines = full.splitlines(keepends=True)
    by_lib.write_bytes(b"".join(lines[:2]) + lines[2][:30])  # as `kill -9` leaves it
    resumed = ce_inspect.prefs_dataset(lm, data, by_lib, ref=ref, max_length=24, resume=True)
    assert by_lib.read_bytes() == full
    assert resumed.to_dict()["metrics"] == summary.to_dict()["metrics"]
    assert resumed.to_dict()["checks"] == summary.to_dict()["checks"]
    by_cli.write_bytes(b"".join(lines[:1]))
    assert main([*args, "-o", str(by_cli), "--resume"]) == 0
    assert by_cli.read_bytes() == full
    assert main([*args[:-2], "--max-length", "32", "-o", str(by_cli), "--resume"]) == 1  # another option
    assert "resume" in capsys.readouterr().err


def test_the_documents_hold_their_typeddicts_and_schemas(lm, ref, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schemas = {
        name: jsonschema.Draft202012Validator(json.loads((ROOT / "schema" / name).read_text()))
        for name in ("prefs-line.schema.json", "prefs-summary.schema.json")
    }
    for name, kwargs in [
        ("planted.jsonl", {"ref": ref, "max_length": 24}),
        ("conversational.jsonl", {"loss_type": "orpo"}),
        ("implicit.jsonl", {"loss_type": "simpo"}),
    ]:
        out = tmp_path / f"{name}.out"
        summary = ce_inspect.prefs_dataset(lm, SAMPLES / name, out, **kwargs).to_dict()
        check_keys(PrefsSummaryDict, summary, "prefs summary", set())
        assert not list(schemas["prefs-summary.schema.json"].iter_errors(summary))
        for line in _lines(out):
            check_keys(PrefsLineDict, line, "prefs line", set())
            assert not list(schemas["prefs-line.schema.json"].iter_errors(line))
        assert json.loads(json.dumps(summary)) == summary


@pytest.mark.parametrize("command", [["batch", "{data}"], ["diff", "--input", "{data}", "--dtype-b", "float32"]])
def test_batch_and_diff_refuse_a_preference_pair_naming_prefs(tiny_llama_dir, command, tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", [GOOD])
    args = [str(data) if a == "{data}" else a for a in command]
    assert main([*args, "-m", str(tiny_llama_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "line 1" in err and "`ce-inspect prefs` scores it" in err, err


# --- --export-ref: the records with the reference's sums, as TRL's precompute step names them ---------------


def test_export_ref_adds_the_reference_sums_and_trl_reads_them(lm, ref, tiny_llama_dir, ref_dir, tmp_path):
    out, export = tmp_path / "out.jsonl", tmp_path / "export.jsonl"
    data = _write(tmp_path / "d.jsonl", [*_rows("pairs.jsonl"), {"prompt": "x", "chosen": ""}])  # the last skipped
    summary = ce_inspect.prefs_dataset(lm, data, out, ref=ref, export_ref=export, skip_invalid=True)
    exported, lines = _lines(export), _lines(out)
    assert [{k: v for k, v in e.items() if not k.startswith("ref_")} for e in exported] == _rows("pairs.jsonl")
    for e, line in zip(exported, lines, strict=True):
        assert (e["ref_chosen_logps"], e["ref_rejected_logps"]) == (
            line["ref_chosen_logps"],
            line["ref_rejected_logps"],
        )
    # TRL 1.x: DPOTrainer's collator passes the columns through; with its (internal) precompute flag set, the
    # loss takes them instead of a reference forward pass, and gives ce-inspect's loss.
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, use_cpu=True, bf16=False,
                     per_device_train_batch_size=len(exported), dataset_num_proc=None)  # fmt: skip
    trainer = DPOTrainer(
        model=policy,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(exported),
        processing_class=lm.tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(exported))])
    trainer.precompute_ref_logps = True
    policy.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(policy, batch))
    assert loss == pytest.approx(summary.to_dict()["loss"]["mean"], abs=1e-5)


def test_export_ref_refuses_what_it_cannot_write(lm, tmp_path):
    with pytest.raises(UsageError, match="scores no reference"):
        ce_inspect.prefs_dataset(lm, SAMPLES / "pairs.jsonl", loss_type="orpo", export_ref=tmp_path / "e.jsonl")
    taken = tmp_path / "taken.jsonl"
    taken.write_text("someone's\n")
    with pytest.raises(ce_inspect.CeInspectError, match="export_ref"):
        ce_inspect.prefs_dataset(lm, SAMPLES / "pairs.jsonl", export_ref=taken)
    assert taken.read_text() == "someone's\n"


# --- audit on preference data: prefs's checks that need no model --------------------------------------------


def _tok(lm):
    return lambda: (lm.tokenizer, "tiny")


def _failed(report) -> dict[str, list]:
    return {c.name: [r.id for r in c.records] for c in report.checks if c.failed}


def test_audit_on_preference_data_finds_what_prefs_finds(lm, tmp_path):
    for name, max_length in [("planted.jsonl", 24), ("planted-sides.jsonl", None), ("planted-implicit.jsonl", None)]:
        out, lines = tmp_path / f"{name}.audit", tmp_path / f"{name}.prefs"
        report = ce_inspect.audit_without_model(_tok(lm), SAMPLES / name, out, max_length=max_length)
        ce_inspect.prefs_dataset(lm, SAMPLES / name, lines, max_length=max_length)
        by_prefs = _findings(lines)
        assert {line["id"]: sorted({f["check"] for f in line["findings"]}) for line in _lines(out)} == by_prefs
        expected: dict[str, list] = {}
        for rid, checks in by_prefs.items():
            for check in checks:
                expected.setdefault(check, []).append(rid)
        assert _failed(report) == expected, name
        names = [c.name for c in report.checks]
        assert names == ["no-trained-tokens", "loss-outlier", "identical", "prompt-differs", "side-is-prompt",
                         "length-bias"]  # fmt: skip
    for name in (*CLEAN, "length-bias.jsonl"):
        report = ce_inspect.audit_without_model(_tok(lm), SAMPLES / name)
        expected = {}
        if name == "length-bias.jsonl":
            summary = ce_inspect.prefs_dataset(lm, SAMPLES / name, tmp_path / "bias.jsonl").to_dict()
            lines = _lines(tmp_path / "bias.jsonl")
            expected = {"length-bias": [x["id"] for x in lines if x["chosen"]["count"] > x["rejected"]["count"]]}
            assert report.check("length-bias").note == summary["length_bias"]["finding"]["message"]
        assert _failed(report) == expected, name


def test_audit_fail_on_takes_the_pair_checks_and_sft_data_lists_none(lm, tiny_llama_dir, tmp_path, capsys):
    args = ["audit", str(SAMPLES / "planted-sides.jsonl"), "-m", str(tiny_llama_dir), "--no-model"]
    assert main([*args, "--fail-on", "side-is-prompt"]) == 3
    assert main([*args, "--fail-on", "identical"]) == 0
    assert main(["audit", str(SAMPLES / "length-bias.jsonl"), "-m", str(tiny_llama_dir), "--no-model",
                 "--fail-on", "length-bias"]) == 3  # fmt: skip
    capsys.readouterr()
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": "Q?", "answer": " yes"}])
    report = ce_inspect.audit_without_model(_tok(lm), sft)
    assert not {c.name for c in report.checks} & {"identical", "prompt-differs", "side-is-prompt", "length-bias"}
    mixed = _write(tmp_path / "mixed.jsonl", [{"prompt": "Q?", "answer": " yes"}, GOOD, {**GOOD, "rejected": "Q?"}])
    report = ce_inspect.audit_without_model(_tok(lm), mixed)
    assert "bos" in {c.name for c in report.checks} and _failed(report) == {"side-is-prompt": [None]}


# --- the reports: --html, --markdown ------------------------------------------------------------------------


def _report_doc(summary: dict, lines: dict):
    from test_report import resolve

    def doc(path: str):
        if path.startswith("line-"):
            head, rest = path.split(".", 1)
            return resolve(lines[int(head.removeprefix("line-"))], rest)
        return resolve(summary, path)

    return doc


def _check_page(html: str, summary: dict, lines: dict) -> None:
    from test_report import check_fields, check_tips, parse

    page = parse(html)
    doc = _report_doc(summary, lines)
    assert check_fields(page, doc) > 10 * len(lines)  # the summary's figures and every pair's
    check_tips(page, doc)  # every strip token: its text and figures are the line's
    shown = [field for field, _, _ in page.tips]
    assert len(shown) == len(set(shown))  # each token once
    for n, line in lines.items():
        assert f'<section class="pair" id="line-{n}">' in html
        at = line["layout"]["divergence"]
        for name in ("chosen", "rejected"):
            for k, t in enumerate(line[name]["tokens"]):
                # the tokens both sides share are shown once, from the chosen side
                once = name == "chosen" or (at is not None and t["index"] >= at)
                assert (f"line-{n}.{name}.tokens.{k}" in shown) == once, (n, name, k)
        for f in line["findings"]:
            assert f["check"] in html
    for name, m in summary["metrics"].items():
        assert (f"metrics.{name}.mean", f"{m['mean']:.4f}") in page.fields
        if m["se"] is not None:
            assert (f"metrics.{name}.se", f"{m['se']:.4f}") in page.fields


def test_prefs_reports_hold_every_pair_both_strips_and_the_json_figures(tiny_llama_dir, ref_dir, tmp_path, capsys):
    out, page, md, sj = (tmp_path / n for n in ("out.jsonl", "p.html", "p.md", "s.json"))
    data = _write(tmp_path / "d.jsonl", [*_rows("planted.jsonl"), *_rows("planted-sides.jsonl")[1:]])
    args = ["prefs", str(data), "-m", str(tiny_llama_dir), "--ref-model", str(ref_dir), "--max-length", "24"]
    assert main([*args, "-o", str(out), "--summary-json", str(sj), "--html", str(page), "--markdown", str(md)]) == 0
    summary, lines = json.loads(sj.read_text()), {line["line"]: line for line in _lines(out)}
    assert len(lines) == 6 and summary["flagged"] == 5
    _check_page(page.read_text(encoding="utf-8"), summary, lines)
    text = md.read_text(encoding="utf-8")
    assert text.startswith("<!-- ce-inspect report: prefs -->")
    for name, m in summary["metrics"].items():
        assert f"| {name.replace('/', '/')} | {m['mean']:.4f} |" in text
    for n, line in lines.items():
        assert f"**line {n}**" in text and f"margin {line['margin']:.4f} · loss {line['loss']:.4f}" in text
    # the lines on stdout (no --output): the report sees them as they are written
    capsys.readouterr()
    assert main([*args, "--html", str(page), "--force", "--summary-json", str(sj)]) == 0
    streamed = {json.loads(raw)["line"]: json.loads(raw) for raw in capsys.readouterr().out.splitlines()}
    assert streamed == lines
    _check_page(page.read_text(encoding="utf-8"), json.loads(sj.read_text()), lines)


def test_prefs_reports_leave_no_file_on_error(tiny_llama_dir, tmp_path, capsys):
    page, md = tmp_path / "p.html", tmp_path / "p.md"
    data = _write(tmp_path / "bad.jsonl", [GOOD, {"prompt": "Q?", "chosen": " yes"}])
    args = ["prefs", str(data), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl")]
    assert main([*args, "--html", str(page), "--markdown", str(md)]) == 1
    assert not page.exists() and not md.exists()
    page.write_text("not a report")  # not ce-inspect's: refused before anything loads, left as it is
    assert main(["prefs", str(SAMPLES / "pairs.jsonl"), "-m", "no-such-model", "--html", str(page), "--force"]) == 1
    assert page.read_text() == "not a report"
    capsys.readouterr()


# --- the terminal: the most negative margins with both sides from their divergence ---------------------------


def test_the_terminal_shows_both_sides_of_the_worst_margins_when_it_fits(tiny_llama_dir, ref_dir, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    from ce_inspect.cli.render_prefs import side_text

    out = tmp_path / "out.jsonl"
    args = ["prefs", str(SAMPLES / "planted-sides.jsonl"), "-m", str(tiny_llama_dir), "--ref-model", str(ref_dir)]
    monkeypatch.setenv("COLUMNS", "120")
    assert main([*args, "-o", str(out)]) == 0
    wide = capsys.readouterr().out
    lines = _lines(out)
    assert "from where they diverge" in wide
    for line in lines:  # each side's first tokens from the divergence, as the line has them
        for name in ("chosen", "rejected"):
            head = side_text(line, name).plain[:20]
            assert head in wide, (line["id"], name, head)
    assert main(args) == 0  # the lines on stdout: the table takes them as they are written
    streamed = capsys.readouterr()
    assert "from where they diverge" in streamed.err and side_text(lines[0], "chosen").plain in streamed.err
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*args, "-o", str(out), "--force"]) == 0
    assert "from where they diverge" not in capsys.readouterr().out
