"""``--rolling``: text records as lm-evaluation-harness's ``loglikelihood_rolling``, checked against lm-eval's own
``HFLM.loglikelihood_rolling`` (the test-only ``lmeval`` extra) on the tiny models and the bundled one, and the
window plan against lm-eval's ``get_rolling_token_windows`` + ``make_disjoint_window``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ce_inspect
from ce_inspect.cli import main
from ce_inspect.text import Layout, encode_rolling, lmeval_tok_encode, prefix_token_id, rolling_plan

SENTENCE = "the winter in the north is long; there the rivers freeze and the herders move in early autumn. "
TEXTS = [
    "a",  # one token
    "the cat",
    SENTENCE,
    SENTENCE * 3,
    "  leading spaces and the end\n\n",
    "<s>starts with the BOS text " + SENTENCE,  # lm-eval then adds no special tokens
    SENTENCE * 9,  # past the tiny models' context of 256: several windows at the default
]


def _write(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def lmeval_rolling(lm, texts, max_length: int | None) -> list[float]:
    """lm-eval's HFLM on the same model object and tokenizer: each text's ``loglikelihood_rolling``."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface", reason="the lmeval extra: pip install lm-eval")
    from lm_eval.api.instance import Instance

    hflm = huggingface.HFLM(
        pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=3, device="cpu", max_length=max_length
    )
    requests = [Instance("loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]
    return hflm.loglikelihood_rolling(requests, disable_tqdm=True)


def check_parity(lm, texts, window: int | None, tmp_path: Path) -> list[dict]:
    data, out = _write(tmp_path / "t.jsonl", texts), tmp_path / "out.jsonl"
    want = lmeval_rolling(lm, texts, window)
    ce_inspect.score_dataset(lm, data, out, layout=Layout(rolling=True, rolling_window=window), force=True)
    lines = _lines(out)
    assert len(lines) == len(want) == len(texts)
    for text, line, total in zip(texts, lines, want):
        body, _ = lmeval_tok_encode(lm.tokenizer, text)
        assert line["summary"]["count"] == len(body), text  # every token lm-eval encodes, scored once
        assert line["summary"]["sum_logprob"] == pytest.approx(total, abs=1e-3), text
        assert line["layout"]["rolling"]["window"] == (window or lm.context_length)
    return lines


@pytest.mark.parametrize("window", [None, 31, 1])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # a tokenizer that adds BOS, one that adds nothing
def test_every_rolling_total_matches_lmeval_hflm(arch, window, tiny_llama, tiny_gpt2, tmp_path):
    lm = tiny_llama if arch == "llama" else tiny_gpt2
    lines = check_parity(lm, TEXTS if window != 1 else TEXTS[:5], window, tmp_path)  # 1: a window per token
    assert max(line["layout"]["window_count"] for line in lines) >= 3  # the parity covers several windows


@pytest.mark.default_model
def test_every_rolling_total_matches_lmeval_on_the_bundled_model(smollm2, tmp_path):
    check_parity(smollm2, [SENTENCE, SENTENCE * 4, "Hello"], 64, tmp_path)


@pytest.mark.parametrize("window", [1, 2, 7, 31])
@pytest.mark.parametrize("n", [1, 2, 6, 7, 8, 30, 31, 32, 33, 100])
def test_the_plan_is_lmevals_disjoint_windows(n, window):
    """Each of our windows is lm-eval's (context + continuation) for the same window, and they tile the text."""
    utils = pytest.importorskip("lm_eval.utils", reason="the lmeval extra: pip install lm-eval")
    tokens = list(range(10, 10 + n))
    sequence = [0, *tokens]  # the prefix token, then the text
    theirs = [
        ctx + cont
        for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(tokens, 0, window, 1))
    ]
    plan = rolling_plan(len(sequence), window)
    assert [sequence[begin:end] for begin, end, _ in plan] == theirs
    scored = [p for _, end, first in plan for p in range(first, end)]
    assert scored == list(range(1, len(sequence)))  # every token of the text once, in order
    assert all(end - begin <= window + 1 for begin, end, _ in plan)  # window inputs, then the last target


def test_the_encoding_is_the_prefix_then_lmevals_tok_encode(tiny_llama, tiny_gpt2):
    for lm in (tiny_llama, tiny_gpt2):  # a tokenizer that adds BOS, one that adds nothing; both name a BOS
        tok = lm.tokenizer
        assert prefix_token_id(tok) == tok.bos_token_id == 1
        example = encode_rolling(tok, "the cat", window=8, ignore_index=-100, context=256)
        assert example.input_ids[0] == 1
        assert list(example.input_ids[1:]) == tok.encode("the cat")  # the tokenizer's own special tokens kept
        assert example.scored_positions == list(range(1, len(example)))
    with_bos = encode_rolling(tiny_llama.tokenizer, "<s>x", window=8, ignore_index=-100, context=256)
    assert list(with_bos.input_ids[1:]) == tiny_llama.tokenizer.encode("<s>x", add_special_tokens=False)


def test_the_cli_line_says_what_it_did(tiny_llama_dir, tmp_path, capsys):
    data = _write(tmp_path / "t.jsonl", [SENTENCE * 3])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--rolling", "--rolling-window", "40", "-o", str(out)]
    assert main(args) == 0
    (line,) = _lines(out)
    assert line["layout"]["rolling"] == {"window": 40, "prefix_token_id": 1, "special_tokens": 1}
    assert line["layout"]["window_count"] == -(-line["summary"]["count"] // 40)
    assert any("loglikelihood_rolling" in n and "no EOS appended" in n for n in line["notes"])
    assert any("disjoint windows of 40 predicted tokens" in n for n in line["notes"])


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--rolling", "--stride", "8"], 2, "--rolling and --stride are two window protocols"),
        (["--rolling-window", "8"], 2, "--rolling-window needs --rolling"),
        (["--rolling", "--rolling-window", "300"], 2, "longer than the model's context of 256"),
        (["--rolling", "--tokenization", "trl"], 2, "drop --tokenization trl"),
    ],
)
def test_conflicting_options_are_usage_errors(extra, code, words, tiny_llama_dir, tmp_path, capsys):
    data = _write(tmp_path / "t.jsonl", ["x"])
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), *extra]) == code
    assert words in capsys.readouterr().err


def test_a_pair_under_rolling_is_one_line_naming_it(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "--rolling", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "--rolling scores text records only" in err
    assert not out.exists()


def test_a_file_written_before_these_options_resumes(tiny_llama_dir, tmp_path):
    """An output whose lines' settings predate --rolling and --entropy (no such keys) resumes: they were off."""
    data = _write(tmp_path / "t.jsonl", ["the cat", "sat on", "the mat"])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out)]) == 0
    lines = _lines(out)[:2]  # an interrupted run: two of three lines
    for line in lines:
        for key in ("rolling", "rolling_window", "entropy"):
            assert key in line["settings"]
            del line["settings"][key]
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--resume"]) == 0
    assert len(_lines(out)) == 3
    lines[0]["settings"]["rolling"] = True  # a file written with it on does not resume without it
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "-o", str(out), "--resume"]) == 1
