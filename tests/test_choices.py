"""`ce-inspect choices`: every choice's log-likelihood as lm-evaluation-harness computes it, held to lm-eval's own
``HFLM.loglikelihood`` (the test-only ``lmeval`` extra) and to torch's log_softmax over the full logits; the
library writes the lines the command line writes, resumed too; bad questions are one-line errors naming the line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import batch_tolerance

import ce_inspect
from ce_inspect.choices import encode_question, lmeval_request, mean_stderr
from ce_inspect.cli import main
from ce_inspect.data import CHOICES, read_records
from ce_inspect.text import Layout

# Choices of differing lengths, with and without a shared leading space, a context ending in a space (lm-eval
# moves it to the continuation), lm-eval's field names, an empty context (lm-eval's prefix token stands in).
QUESTIONS = [
    {"id": "capital", "prompt": "The capital of China is", "choices": [" Beijing", " Shanghai", " a city"], "label": 0},
    {"query": "Q: 2+2=\nA:", "choices": [" 4", " five", "22", " four, I think"], "gold": 3},
    {"context": "the cat sat on the ", "choices": ["mat", "hat that is red", " rug"], "label": 1},
    {"prompt": "", "choices": ["the end", "in", "<s>x"], "label": 0},
    {"prompt": "Which is larger? ", "choices": ["ten", " ten", "the number eleven"], "label": 2},
    {"prompt": "Colours: red, green,", "choices": [" blue", "blue", " bl"], "label": 0},
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _context(q) -> str:
    return next(q[k] for k in ("prompt", "query", "context") if k in q)


def _label(q) -> int:
    return q["label"] if "label" in q else q["gold"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("choices") / "q.jsonl", QUESTIONS)


# --- parity: lm-eval's own HFLM.loglikelihood -----------------------------------------------------------------


def lmeval_stderr(arr):
    """lm-eval's ``mean_stderr`` (``lm_eval/api/metrics.py``: ``sample_stddev(arr) / math.sqrt(len(arr))``), copied:
    that module imports sacrebleu, which the no-deps lmeval extra leaves out."""
    mu = sum(arr) / len(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1)) / math.sqrt(len(arr))


def lmeval_run(lm, rows):
    """lm-eval's HFLM on the same model object and tokenizer: every (context, choice) request's
    (loglikelihood, is_greedy), the token requests it built, and acc / acc_norm by its rule."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface", reason="the lmeval extra: pip install lm-eval")
    import numpy as np
    from lm_eval.api.instance import Instance

    hflm = huggingface.HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=1, device="cpu")
    built = {}
    original = hflm._loglikelihood_tokens

    def spy(requests, **kwargs):
        built.update({args: (ctx, cont) for args, ctx, cont in requests})
        return original(requests, **kwargs)

    hflm._loglikelihood_tokens = spy
    args = [(_context(q), c) for q in rows for c in q["choices"]]
    requests = [Instance("loglikelihood", doc={}, arguments=a, idx=i) for i, a in enumerate(args)]
    results = hflm.loglikelihood(requests, disable_tqdm=True)
    acc, acc_norm, at = [], [], 0
    for q in rows:
        lls = [ll for ll, _ in results[at : at + len(q["choices"])]]
        at += len(q["choices"])
        acc.append(float(np.argmax(lls) == _label(q)))
        acc_norm.append(float(np.argmax(np.array(lls) / np.array([float(len(c)) for c in q["choices"]])) == _label(q)))
    figures = {
        "acc": sum(acc) / len(acc),
        "acc_norm": sum(acc_norm) / len(acc_norm),
        "acc_stderr": lmeval_stderr(acc),
        "acc_norm_stderr": lmeval_stderr(acc_norm),
    }
    return results, [built[a] for a in args], figures


def check_parity(lm, data: Path, out: Path, rows=QUESTIONS) -> None:
    results, built, figures = lmeval_run(lm, rows)
    summary = ce_inspect.choices_dataset(lm, data, out, force=True)
    ours = [c for line in _lines(out) for c in line["choices"]]
    assert len(ours) == len(results) == sum(len(q["choices"]) for q in rows)
    records = list(read_records(data, format=CHOICES))
    examples = [e for r in records for e in encode_question(lm, r, Layout(), None).examples]
    for choice, (ll, greedy), (ctx, cont), example in zip(ours, results, built, examples):
        assert list(example.input_ids) == ctx + cont  # the very tokens lm-eval ran
        assert [example.input_ids[p] for p in example.scored_positions] == cont  # and scored
        assert choice["sum_logprob"] == pytest.approx(ll, abs=1e-3), choice["text"]
        assert choice["is_greedy"] == greedy, choice["text"]
    d = summary.to_dict()
    assert (d["acc"], d["acc_norm"]) == (figures["acc"], figures["acc_norm"])  # exactly
    assert d["acc_stderr"] == pytest.approx(figures["acc_stderr"], rel=1e-12)
    assert d["acc_norm_stderr"] == pytest.approx(figures["acc_norm_stderr"], rel=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # a tokenizer that adds BOS, one that adds nothing
def test_every_choice_matches_lmeval_hflm_loglikelihood(arch, tiny_llama, tiny_gpt2, questions, tmp_path):
    check_parity(tiny_llama if arch == "llama" else tiny_gpt2, questions, tmp_path / "out.jsonl")


@pytest.mark.default_model
def test_every_choice_matches_lmeval_on_the_bundled_model(smollm2, questions, tmp_path):
    check_parity(smollm2, questions, tmp_path / "out.jsonl")
    greedy = {c["is_greedy"] for line in _lines(tmp_path / "out.jsonl") for c in line["choices"]}
    assert greedy == {True, False}  # is_greedy's parity is not vacuous: both answers occur


# Contexts long enough that a question's shared start runs once and its choices after it from the KV cache
# (``HFScorer.score_groups``, when it saves ``SHARED_START_SAVING`` tokens): choices that share their first
# words (the shared start then reaches into them), differ at once, or are one character.
PASSAGE = (
    "The river rises in the northern hills, runs south past three market towns and a ruined abbey, and "
    "reaches the sea at a wide estuary where fishing boats have landed their catch for six hundred years. "
)


def long_questions(passage: str) -> list[dict]:
    return [
        {
            "prompt": passage + "Question: where does the river reach the sea?\nAnswer:",
            "choices": [" at a wide estuary", " at a wide lake", " in the hills", " nowhere"],
            "label": 0,
        },
        {"query": passage + "How old is the fishing trade? ", "choices": ["six hundred years", "ten", "x"], "gold": 0},
        {"prompt": passage + "The abbey is", "choices": [" ruined", " ruined.", " new and tall", " gone"], "label": 0},
    ]


LONG_QUESTIONS = long_questions(PASSAGE)  # about 200 tokens of context for the tiny models' byte tokenizer
#: SmolLM2's tokenizer reads the passage in about 40 tokens: eight times it, for a start worth sharing.
LONG_QUESTIONS_SMOLLM2 = long_questions(PASSAGE * 8)


@pytest.fixture(scope="module")
def long_questions(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("choices") / "long.jsonl", LONG_QUESTIONS)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_long_context_runs_once_and_every_choice_still_matches_lmeval(
    arch, tiny_llama, tiny_gpt2, long_questions, tmp_path
):
    from ce_inspect.scoring.hf import worth_sharing

    lm = tiny_llama if arch == "llama" else tiny_gpt2
    groups = [encode_question(lm, r, Layout(), None).examples for r in read_records(long_questions, format=CHOICES)]
    assert all(worth_sharing(g) for g in groups)  # the shared-start path is the one tested
    check_parity(lm, long_questions, tmp_path / "out.jsonl", LONG_QUESTIONS)
    assert lm.shared_start is True  # checked against the full pass on the first question, and kept


@pytest.mark.default_model
def test_a_long_context_matches_lmeval_on_the_bundled_model(smollm2, tmp_path):
    from ce_inspect.scoring.hf import worth_sharing

    data = _write(tmp_path / "long.jsonl", LONG_QUESTIONS_SMOLLM2)
    groups = [encode_question(smollm2, r, Layout(), None).examples for r in read_records(data, format=CHOICES)]
    assert all(worth_sharing(g) for g in groups)
    check_parity(smollm2, data, tmp_path / "out.jsonl", LONG_QUESTIONS_SMOLLM2)
    assert smollm2.shared_start is True


def test_score_groups_equals_each_example_alone_and_falls_back_when_the_cache_differs(
    tiny_llama, long_questions, monkeypatch
):
    """Groups with and without a long shared start, and a group of one, each result equal to the example
    scored alone; a model whose KV cache gives other figures is caught by the first group's check and
    scored in full from then on."""
    from dataclasses import replace

    from ce_inspect.scoring import ScoreOptions, scorer_for
    from ce_inspect.scoring.forward import SharedStart

    records = list(read_records(long_questions, format=CHOICES))
    groups = [encode_question(tiny_llama, r, Layout(), None).examples for r in records]
    groups = [groups[0], groups[1][:1], *groups[1:]]
    options = ScoreOptions(top_k=3)
    lm = replace(tiny_llama, shared_start=None)
    tol = batch_tolerance(lm, [e for g in groups for e in g])  # a cached start sums in another order, as a batch
    got = scorer_for(lm).score_groups(groups, options)
    assert lm.shared_start is True
    for group, results in zip(groups, got):
        for example, result in zip(group, results, strict=True):
            alone = scorer_for(lm).score([example], options)[0]
            assert [t.token_id for t in result.tokens] == [t.token_id for t in alone.tokens]
            assert [t.loss for t in result.tokens] == pytest.approx([t.loss for t in alone.tokens], abs=tol)
            assert [t.rank for t in result.tokens] == [t.rank for t in alone.tokens]

    masked = replace(tiny_llama, shared_start=None, unmasked_padding=False)  # the padding masked, the start too
    for results, want in zip(scorer_for(masked).score_groups(groups, options), got):
        assert [t.loss for r in results for t in r.tokens] == pytest.approx(
            [t.loss for r in want for t in r.tokens], abs=tol
        )
    assert masked.shared_start is True

    fresh = SharedStart.fresh
    monkeypatch.setattr(SharedStart, "fresh", lambda self, batch: (self.cache.crop(-1), fresh(self, batch))[1])
    broken = replace(tiny_llama, shared_start=None)  # its cache loses the context's last token
    again = scorer_for(broken).score_groups(groups, options)
    assert broken.shared_start is False
    for results, want in zip(again, got):
        assert [t.loss for r in results for t in r.tokens] == pytest.approx(
            [t.loss for r in want for t in r.tokens], abs=tol
        )


def test_mutual_info_is_lmevals_acc_mutual_info(tiny_llama, questions, tmp_path):
    """lm-eval's acc_mutual_info: each choice's log-likelihood less its ("", choice) request's, argmax against
    the gold index; every unconditional log-likelihood equal to HFLM's for that request."""
    import numpy as np

    conditional, _, _ = lmeval_run(tiny_llama, QUESTIONS)
    bare = [{"prompt": "", "choices": q["choices"], "label": _label(q)} for q in QUESTIONS]
    unconditional, _, _ = lmeval_run(tiny_llama, bare)
    hits, at = [], 0
    for q in QUESTIONS:
        n = len(q["choices"])
        mi = [c[0] - u[0] for c, u in zip(conditional[at : at + n], unconditional[at : at + n])]
        hits.append(float(np.argmax(mi) == _label(q)))
        at += n
    assert 0 < sum(hits) < len(hits)  # neither all right nor all wrong: the comparison is not vacuous
    out = tmp_path / "out.jsonl"
    d = ce_inspect.choices_dataset(tiny_llama, questions, out, mutual_info=True).to_dict()
    choices = [c for line in _lines(out) for c in line["choices"]]
    for choice, (ll, _), (ll_u, _) in zip(choices, conditional, unconditional, strict=True):
        assert choice["unconditional_logprob"] == pytest.approx(ll_u, abs=1e-3)
        assert choice["mutual_info"] == pytest.approx(ll - ll_u, abs=2e-3)
    assert [float(line["correct_mutual_info"]) for line in _lines(out)] == hits
    assert d["acc_mutual_info"] == sum(hits) / len(hits)  # exactly
    assert d["acc_mutual_info_stderr"] == pytest.approx(lmeval_stderr(hits), rel=1e-12)
    with pytest.raises(ce_inspect.CeInspectError, match="resume"):  # the lines say how they were scored
        ce_inspect.choices_dataset(tiny_llama, questions, out, resume=True)
    plain = ce_inspect.choices_dataset(tiny_llama, questions, tmp_path / "plain.jsonl").to_dict()
    assert "acc_mutual_info" not in plain and "mutual_info" not in _lines(tmp_path / "plain.jsonl")[0]["choices"][0]


def test_the_questions_exercise_each_rule_of_lmevals_request(tiny_llama, tiny_gpt2):
    """The parity set is not trivial: the split moves a space, an empty context takes the prefix token, and
    where the tokenizer adds BOS the context carries it."""
    ctx, cont, added = lmeval_request(tiny_llama.tokenizer, "the cat sat on the ", "mat")
    assert added == 1 and ctx[0] == tiny_llama.tokenizer.bos_token_id
    assert tiny_llama.tokenizer.decode(cont).startswith(" ")  # the moved space
    ctx, cont, added = lmeval_request(tiny_gpt2.tokenizer, "", "in")
    assert (ctx, added) == ([tiny_gpt2.tokenizer.bos_token_id], 1)
    _, _, added = lmeval_request(tiny_gpt2.tokenizer, "x", " y")
    assert added == 0


# --- figures: torch's log_softmax over the full logits -----------------------------------------------------------


def test_figures_equal_log_softmax_of_the_full_logits(tiny_llama, questions, tmp_path):
    out = tmp_path / "out.jsonl"
    ce_inspect.choices_dataset(tiny_llama, questions, out, layout=Layout(), tokenization="separate", force=True)
    for line in _lines(out):
        record = next(r for r in read_records(questions, format=CHOICES) if r.line == line["line"])
        question = encode_question(tiny_llama, record, Layout(tokenization="separate"), "separate")
        sums = []
        for choice, example in zip(line["choices"], question.examples):
            ids = torch.tensor([example.input_ids])
            with torch.inference_mode():
                logp = torch.log_softmax(tiny_llama.model(ids).logits.float(), dim=-1)[0]  # [seq, vocab]
            positions = example.scored_positions
            expected = [logp[p - 1, example.input_ids[p]].item() for p in positions]
            assert [t["logprob"] for t in choice["tokens"]] == pytest.approx(expected, abs=1e-5)
            assert choice["sum_logprob"] == pytest.approx(math.fsum(expected), abs=1e-4)
            assert choice["mean_logprob"] == pytest.approx(math.fsum(expected) / len(expected), abs=1e-5)
            greedy = all(logp[p - 1].argmax().item() == example.input_ids[p] for p in positions)
            assert choice["is_greedy"] == greedy and choice["count"] == len(positions)
            assert choice["norm_logprob"] == pytest.approx(choice["sum_logprob"] / len(choice["text"]))
            sums.append(choice["sum_logprob"])
        assert line["pred"] == max(range(len(sums)), key=lambda i: (sums[i], -i))
        assert line["correct"] == (line["pred"] == line["label"])


def test_mean_stderr_is_the_sample_std_over_root_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mu = sum(values) / 4
    assert mean_stderr(values) == pytest.approx(math.sqrt(sum((v - mu) ** 2 for v in values) / 3) / 2)
    assert mean_stderr([1.0]) is None


# --- the library writes the lines the command line writes, resumed too -------------------------------------------


def test_choices_dataset_writes_the_lines_the_cli_writes_and_resumes_them(
    tiny_llama, tiny_llama_dir, questions, tmp_path, capsys
):
    by_cli, by_lib, summary_json = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl", tmp_path / "s.json"
    code = main(
        ["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(by_cli), "--summary-json", str(summary_json)]
    )
    assert code == 0, capsys.readouterr().err
    summary = ce_inspect.choices_dataset(tiny_llama, questions, by_lib)
    assert by_lib.read_bytes() == by_cli.read_bytes()
    assert summary.to_dict()["acc"] == json.loads(summary_json.read_text())["acc"]
    full = by_cli.read_bytes()
    kept = full.splitlines(keepends=True)
    by_lib.write_bytes(b"".join(kept[:2]) + kept[2][:40])  # as `kill -9` leaves it
    resumed = ce_inspect.choices_dataset(tiny_llama, questions, by_lib, resume=True)
    assert by_lib.read_bytes() == full
    d, r = summary.to_dict(), resumed.to_dict()
    assert r["resumed"] == 2 and (r["acc"], r["acc_norm"], r["questions"]) == (d["acc"], d["acc_norm"], d["questions"])
    by_cli.write_bytes(b"".join(kept[:3]))
    assert main(["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(by_cli), "--resume"]) == 0
    assert by_cli.read_bytes() == full


def test_a_changed_tokenization_refuses_to_resume(tiny_llama, questions, tmp_path):
    out = tmp_path / "out.jsonl"
    ce_inspect.choices_dataset(tiny_llama, questions, out)
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:2]))
    with pytest.raises(ce_inspect.CeInspectError, match="resume"):
        ce_inspect.choices_dataset(tiny_llama, questions, out, tokenization="joint", resume=True)


def test_one_forward_pass_scores_every_choice_of_a_question(tiny_llama, questions, tmp_path, monkeypatch):
    """The choices of a question are rows of one batch through the one scorer, never a pass each."""
    from ce_inspect.scoring.hf import HFScorer

    calls: list[int] = []
    original = HFScorer.score

    def spy(self, examples, options, **kwargs):
        calls.append(len(examples))
        return original(self, examples, options, **kwargs)

    monkeypatch.setattr(HFScorer, "score", spy)
    ce_inspect.choices_dataset(
        tiny_llama, questions, tmp_path / "out.jsonl", settings=ce_inspect.BatchSettings(batch_size=1)
    )
    assert sorted(calls) == sorted(len(q["choices"]) for q in QUESTIONS)


def test_the_cli_table_marks_gold_and_predictions_and_the_gate_trips(tiny_llama_dir, questions, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code = main(["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(out), "--fail-below-acc", "1"])
    captured = capsys.readouterr()
    lines = _lines(out)
    acc = sum(line["correct"] for line in lines) / len(lines)
    assert acc < 1 and code == 3 and "acc" in captured.err and "below --fail-below-acc 1" in captured.err
    assert "gold" in captured.out and "pred" in captured.out and "acc_norm" in captured.out
    assert "acc_mutual_info" not in captured.out
    code = main(["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(out), "--force", "--mutual-info"])
    assert code == 0 and "acc_mutual_info" in capsys.readouterr().out
    assert (
        main(["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(out), "--force", "--fail-below-acc", "0"])
        == 0
    )


# --- bad questions: one line naming the line, or skipped; never a partial output ---------------------------------

GOOD = {"prompt": "Q:", "choices": [" a", " b"], "label": 0}
BAD = [
    ("label out of range", {"prompt": "Q:", "choices": [" a", " b"], "label": 2}, "out of range for 2 choices"),
    ("negative label", {"prompt": "Q:", "choices": [" a", " b"], "gold": -1}, "out of range"),
    ("label not an integer", {"prompt": "Q:", "choices": [" a", " b"], "label": "0"}, "must be an integer"),
    ("label a boolean", {"prompt": "Q:", "choices": [" a", " b"], "label": True}, "must be an integer"),
    ("one choice", {"prompt": "Q:", "choices": [" a"], "label": 0}, "at least two"),
    ("empty choice", {"prompt": "Q:", "choices": [" a", ""], "label": 0}, "choice 1 is empty"),
    ("choices not strings", {"prompt": "Q:", "choices": [" a", 3], "label": 0}, "array of strings"),
    ("no choices", {"prompt": "Q:", "label": 0}, "missing field 'choices'"),
    ("no label", {"prompt": "Q:", "choices": [" a", " b"]}, "missing field for the right choice"),
    ("no context", {"choices": [" a", " b"], "label": 0}, "missing field for the context"),
    ("mixed contexts", {"prompt": "Q:", "query": "Q:", "choices": [" a", " b"], "label": 0}, "mixed fields"),
    ("mixed labels", {"prompt": "Q:", "choices": [" a", " b"], "label": 0, "gold": 0}, "mixed fields"),
    ("context not a string", {"prompt": 3, "choices": [" a", " b"], "label": 0}, "must be a string"),
]


@pytest.mark.parametrize(("name", "row", "words"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_question_is_one_line_naming_it_or_skipped(name, row, words, tiny_llama_dir, tmp_path, capsys):
    data = _write(tmp_path / "q.jsonl", [GOOD, row, GOOD])
    out = tmp_path / "out.jsonl"
    code = main(["choices", str(data), "-m", str(tiny_llama_dir), "-o", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code == 1 and len(errors) == 1 and "line 2" in errors[0] and words in errors[0], err
    assert "Traceback" not in err and not out.exists()
    summary = tmp_path / "s.json"
    code = main(
        [
            "choices",
            str(data),
            "-m",
            str(tiny_llama_dir),
            "-o",
            str(out),
            "--skip-invalid",
            "--summary-json",
            str(summary),
        ]
    )
    assert code == 0
    assert [line["line"] for line in _lines(out)] == [1, 3]
    skipped = json.loads(summary.read_text())["skipped"]
    assert [s["line"] for s in skipped] == [2] and words in skipped[0]["reason"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tokenization", "joint", "--chat"], "drop --tokenization"),
        (["--no-mask-prompt"], "--no-mask-prompt"),
        (["--fail-below-acc", "2"], "a fraction in [0, 1]"),
        (["--mutual-info", "--tokenization", "joint"], "--mutual-info is lm-eval's acc_mutual_info"),
        (["--mutual-info", "--chat"], "drop --tokenization/--chat"),
    ],
)
def test_options_that_make_no_sense_for_choices_are_usage_errors(
    args, words, tiny_llama_dir, questions, tmp_path, capsys
):
    code = main(["choices", str(questions), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl"), *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_messages_context_scores_each_choice_as_the_assistant_answer(tiny_llama, tmp_path):
    """As `run --chat` scores an answer: the choice's tokens and the end-of-turn token, the context masked."""
    from ce_inspect import score_messages

    conversation = [{"role": "user", "content": "Which is red?"}]
    data = _write(tmp_path / "q.jsonl", [{"messages": conversation, "choices": ["Mars", "Venus"], "label": 0}])
    out = tmp_path / "out.jsonl"
    ce_inspect.choices_dataset(tiny_llama, data, out)
    for choice in _lines(out)[0]["choices"]:
        alone = score_messages(tiny_llama, [*conversation, {"role": "assistant", "content": choice["text"]}])
        assert [t["token_id"] for t in choice["tokens"]] == [t.token_id for t in alone.tokens]
        assert choice["sum_logprob"] == pytest.approx(alone.summary.sum_logprob, abs=1e-4)
        assert choice["tokens"][-1]["segment"] == "eot"


def test_load_is_called_after_the_output_checks(tiny_llama, questions, tmp_path):
    taken = tmp_path / "taken.jsonl"
    taken.write_text("not ce-inspect's\n")
    calls = []
    with pytest.raises(ce_inspect.CeInspectError, match="already exists"):
        ce_inspect.choices_dataset(lambda: calls.append(1) or tiny_llama, questions, taken)
    assert calls == [] and taken.read_text() == "not ce-inspect's\n"
