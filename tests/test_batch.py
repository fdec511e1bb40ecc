"""The batch engine: records, batching, order, the data-set summary against plain torch, resume, whole lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import batch_tolerance

from ce_inspect import Layout, ScoreOptions, load, score_encoded
from ce_inspect.data import Fields, Record, encode_record, read_records
from ce_inspect.dataset import (
    BatchSettings,
    JsonlSink,
    output_conflict,
    plan_batches,
    read_resume,
    run_scan,
    scan_dataset,
)
from ce_inspect.errors import InputError, InvalidRecordError, ResumeError

# Very different lengths on purpose: 1-character prompts next to ~170-character ones, 1- to ~60-token answers.
RECORDS = [
    {"id": "a", "prompt": "Where is the capital of China?", "answer": " The capital is Beijing."},
    {"id": "b", "prompt": "x", "answer": "y"},
    {
        "id": "c",
        "prompt": "Summarize: " + "the meeting moved to Wednesday because the speaker was ill. " * 3,
        "answer": " Moved.",
    },
    {
        "id": 4,
        "prompt": "Q",
        "answer": " A long answer that goes on and on, with commas, numbers 1 2 3, and more words.",
    },
    {"prompt": "no id here", "answer": " fine"},
    {"id": "f", "prompt": "Translate: bonjour", "answer": " hello"},
    {"id": "g", "prompt": "What is 17 + 25?", "answer": " 42"},
]


def write_jsonl(path: Path, rows, blank_after: int | None = None) -> Path:
    lines = []
    for k, row in enumerate(rows):
        lines.append(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
        if blank_after is not None and k == blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_to_file(lm, data: Path, out: Path, resume=None, **settings):
    scan = scan_dataset(lm, data, skip_invalid=settings.pop("skip_invalid", False), resume=resume)
    with JsonlSink.open(out, resume=resume) as sink:
        summary = run_scan(lm, scan, sink, settings=BatchSettings(**settings))
    return summary, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def alone(lm, row, layout=Layout(), options=ScoreOptions()):
    encoded = encode_record(lm, Record(1, prompt=row["prompt"], answer=row["answer"]), layout)
    return score_encoded(lm, encoded, options)


def encoded(lm, rows, layout=Layout()):
    return [encode_record(lm, Record(k, prompt=r["prompt"], answer=r["answer"]), layout) for k, r in enumerate(rows)]


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    return load(str(tiny_gpt2_dir), device="cpu", quiet=True)


# --- records --------------------------------------------------------------------------------------------


def test_read_records_line_numbers_and_reasons(tmp_path):
    rows = [
        {"id": "ok", "prompt": "p", "answer": "a"},
        "",
        '{"prompt": "p", "answer": "a"',
        "[1, 2]",
        {"prompt": "p"},
        {"prompt": "p", "answer": 3},
        {"id": 1.5, "prompt": "p", "answer": "a"},
        {"prompt": "p", "answer": "a", "messages": []},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": "hi"}], "id": 9},
        "   ",
        {"question": "q", "response": "r", "key": "k1"},
    ]
    records = list(read_records(write_jsonl(tmp_path / "d.jsonl", rows)))
    by_line = {r.line: r for r in records}
    assert sorted(by_line) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 12]  # blank lines are not records, numbering is the file's
    assert by_line[1] == Record(1, "ok", prompt="p", answer="a")
    assert by_line[3].error == "not valid JSON (Expecting ',' delimiter at column 30)"
    assert by_line[4].error == "not a JSON object but a JSON array"
    assert by_line[5].error == "missing field 'answer'"
    assert by_line[6].error == "field 'answer' must be a string, not number"
    assert by_line[7].error == "field 'id' must be a string or an integer, not number"
    assert "has both" in by_line[8].error
    assert "message 0" in by_line[9].error
    assert by_line[10].messages == [{"role": "user", "content": "hi"}] and by_line[10].id == 9
    assert by_line[12].error.startswith("no known format (fields: 'question', 'response', 'key')")

    custom = list(read_records(tmp_path / "d.jsonl", Fields(prompt="question", answer="response", id="key")))
    assert custom[-1] == Record(12, "k1", prompt="q", answer="r")


def test_read_records_bom_and_bad_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "p", "answer": "a"}\n{"prompt": "\xff", "answer": "a"}\n')
    first, second = read_records(path)
    assert first.error is None and first.answer == "a"
    assert second.line == 2 and second.error.startswith("not UTF-8")


def test_read_records_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


# --- batching -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch_size,max_tokens", [(1, None), (3, None), (8, None), (None, 40), (2, 40), (None, 5), (100, 10**6)]
)
def test_plan_batches(batch_size, max_tokens):
    lengths = [5, 30, 12, 12, 7, 50, 3, 3, 3, 29, 1]
    batches = plan_batches(lengths, batch_size, max_tokens)
    assert plan_batches(lengths, batch_size, max_tokens, max_padding=0.0) == [
        b for b in plan_batches(lengths, batch_size, max_tokens, max_padding=0.0) if len({lengths[i] for i in b}) == 1
    ]  # no padding allowed: every batch holds one length
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every example exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        if batch_size is not None:
            assert len(b) <= batch_size
        if max_tokens is not None and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= max_tokens
    if batch_size is not None and max_tokens is None:
        assert all(len(b) == batch_size for b in batches[:-1])


def test_batch_settings_reject_nonsense():
    for bad in (dict(batch_size=0), dict(max_tokens=0), dict(padding_side="middle"), dict(sort_window=0)):
        with pytest.raises(InputError):
            BatchSettings(**bad)


def test_batch_settings_take_the_device_defaults_for_what_is_unset():
    from ce_inspect.dataset import DEFAULT_MAX_ROWS, DEFAULT_MAX_TOKENS

    cpu = BatchSettings().resolved("cpu")
    assert (cpu.batch_size, cpu.max_tokens) == (DEFAULT_MAX_ROWS["cpu"], DEFAULT_MAX_TOKENS["cpu"])
    gpu = BatchSettings(batch_size=4).resolved("cuda:1")
    assert (gpu.batch_size, gpu.max_tokens) == (4, DEFAULT_MAX_TOKENS["accelerator"])
    assert BatchSettings(batch_size=1, max_tokens=99).resolved("cpu") == BatchSettings(batch_size=1, max_tokens=99)


def long_tailed_lengths(n: int, seed: int = 0) -> list[int]:
    """Mostly short examples, a few long ones: the shape of real prompt/answer data."""
    import random

    rng = random.Random(seed)
    return [min(int(rng.lognormvariate(3.5, 0.8)) + 2, 4000) for _ in range(n)] + [1500]


@pytest.mark.parametrize("max_tokens,rows", [(2048, 64), (512, 8), (16384, 256)])
def test_token_budget_pads_little_on_long_tailed_lengths(max_tokens, rows):
    lengths = long_tailed_lengths(500)
    batches = plan_batches(lengths, rows, max_tokens, 0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded <= 0.1
    assert all(1 - sum(lengths[i] for i in b) / (len(b) * max(lengths[i] for i in b)) <= 0.1 for b in batches)
    # Bands of similar length, not a batch per example: the band count grows with log(longest / shortest).
    bands = math.ceil(math.log(max(lengths) / min(lengths)) / -math.log(0.9))
    assert len(batches) <= len(lengths) // rows + bands + 1
    for b in batches:
        assert len(b) <= rows and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens)
    # The 1,500-token example never drags short ones into its batch.
    (alone,) = [b for b in batches if len(lengths) - 1 in b]
    assert all(lengths[i] * 2 > 1500 for i in alone)
    # Against a fixed batch size in input order, what `batch` used to do with 8 rows.
    fixed = sum(len(lengths[k : k + 8]) * max(lengths[k : k + 8]) for k in range(0, len(lengths), 8))
    assert padded < fixed * 0.6


# --- batched == alone -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(batch_size=8, padding_side="right", max_padding=None),  # one batch, padded to its longest
        dict(batch_size=8, padding_side="left", max_padding=None),
        dict(batch_size=3, padding_side="left", sort_window=4),
        dict(batch_size=None, max_tokens=120, padding_side="right"),
        dict(batch_size=1),
    ],
    ids=["bs8-right", "bs8-left", "bs3-left-window4", "maxtok120", "bs1"],
)
def test_batched_equals_alone(request, tmp_path, model, settings):
    lm = request.getfixturevalue(model)
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS, blank_after=2)
    summary, lines = run_to_file(lm, data, tmp_path / "out.jsonl", **settings)
    # Output order is input order, with the file's line numbers (a blank line after the third record).
    assert [d["line"] for d in lines] == [1, 2, 3, 5, 6, 7, 8]
    assert [d["id"] for d in lines] == [r.get("id") for r in RECORDS]
    if settings.get("batch_size") == 8:
        assert summary.batching.batches == 1  # all lengths in one padded forward pass
    tol = batch_tolerance(lm, encoded(lm, RECORDS))  # float32 rounding: ~1e-4 here, ~1e-6 measured
    for row, line in zip(RECORDS, lines):
        ref = alone(lm, row)
        assert [t["token_id"] for t in line["tokens"]] == [t.token_id for t in ref.tokens]
        assert [t["index"] for t in line["tokens"]] == [t.index for t in ref.tokens]
        for got, want in zip(line["tokens"], ref.tokens):
            assert got["loss"] == pytest.approx(want.loss, abs=tol)
            assert got["logprob"] == pytest.approx(want.logprob, abs=tol)
            assert got["rank"] == want.rank
        assert line["summary"]["mean"] == pytest.approx(ref.summary.mean, abs=tol)
        assert {k: v for k, v in line.items() if k not in ("id", "line", "settings")}.keys() == ref.to_dict().keys()


def test_batched_equals_alone_gemma2_softcap(tmp_path):
    """Gemma-2 has logit soft-capping and, with left padding, needs position ids from the mask."""
    from conftest import build_model

    lm = load(str(build_model(tmp_path / "gemma2", "gemma2")), device="cpu", quiet=True)
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    tol = batch_tolerance(lm, encoded(lm, RECORDS))
    for side in ("left", "right"):
        _, lines = run_to_file(lm, data, tmp_path / f"{side}.jsonl", batch_size=8, padding_side=side)
        for row, line in zip(RECORDS, lines):
            ref = alone(lm, row)
            for got, want in zip(line["tokens"], ref.tokens):
                assert got["loss"] == pytest.approx(want.loss, abs=tol)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_right_padding_goes_unmasked_where_it_changes_nothing(tmp_path, arch):
    """Right padding is left unmasked (SDPA's causal kernel, no [batch, seq, seq] mask) once a probe shows the
    model's real positions ignore it; the figures equal each example alone and the masked pass's."""
    from conftest import build_model

    from ce_inspect import encode
    from ce_inspect.scoring import score_batch

    lm = load(str(build_model(tmp_path / arch, arch, add_bos=arch != "gpt2")), device="cpu", quiet=True)
    examples = [encode(lm.tokenizer, row["prompt"], row["answer"], Layout()) for row in RECORDS]
    assert len({len(e) for e in examples}) > 1  # padded
    unmasked = score_batch(lm, examples)
    assert lm.unmasked_padding is True
    lm.unmasked_padding = False  # as for a model the probe refused: the mask and the positions go in
    masked = score_batch(lm, examples)
    tol = batch_tolerance(lm, examples)
    for example, a, b in zip(examples, unmasked, masked):
        ref = score_encoded(lm, example)
        for x, y, z in zip(a.tokens, b.tokens, ref.tokens):
            assert x.loss == pytest.approx(z.loss, abs=tol) and x.loss == pytest.approx(y.loss, abs=tol)
            assert x.rank == y.rank == z.rank


class _LeakyModel(torch.nn.Module):
    """Logits at every position see the mean of all the row's tokens: a model whose real positions see the
    padding after them (a prefix-LM, or custom code gone wrong)."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, use_cache=False, **_):
        states = self.embed(input_ids)
        return type("Out", (), {"logits": states + states.mean(1, keepdim=True)})


def test_right_padding_stays_masked_for_a_model_whose_positions_see_it():
    from types import SimpleNamespace

    from ce_inspect.scoring.forward import _unmasked_padding_ok

    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    attention = (ids != 0).long()
    leaky = SimpleNamespace(model=_LeakyModel(), name="leaky", unmasked_padding=None)
    assert _unmasked_padding_ok(leaky, ids, attention) is False and leaky.unmasked_padding is False
    causal = SimpleNamespace(model=torch.nn.Identity(), name="broken", unmasked_padding=None)
    assert _unmasked_padding_ok(causal, ids, attention) is False  # a model the probe cannot run: keep the mask


# --- the data-set summary against plain torch -----------------------------------------------------------


def plain_torch_losses(model_dir: Path, rows, add_bos: bool):
    """Each example's shifted logits and labels from the model and tokenizer alone, no ce-inspect code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    logits_all, labels_all, own = [], [], []
    for row in rows:
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prefix = [tok.bos_token_id] if add_bos else []
        ids = torch.tensor([prefix + prompt + answer])
        labels = torch.tensor([[-100] * (len(prefix) + len(prompt)) + answer])
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        logits_all.append(out.logits[0, :-1])  # [seq-1, vocab]
        labels_all.append(labels[0, 1:])  # [seq-1]
        own.append(out.loss.item())
    return torch.cat(logits_all), torch.cat(labels_all), own


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_summary_matches_cross_entropy_over_flattened_data_set(request, tmp_path, arch):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    lm = load(str(model_dir), device="cpu", quiet=True)
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    summary, lines = run_to_file(lm, data, tmp_path / "out.jsonl", batch_size=3, worst=4)

    logits, labels, own = plain_torch_losses(model_dir, RECORDS, add_bos=arch == "llama")
    token_mean = torch.nn.CrossEntropyLoss(reduction="mean")(logits, labels).item()
    token_sum = torch.nn.CrossEntropyLoss(reduction="sum")(logits, labels).item()
    tol = batch_tolerance(lm, encoded(lm, RECORDS))  # batches of 3 against each example alone
    assert summary.token_weighted_mean_loss == pytest.approx(token_mean, abs=tol)
    assert summary.loss_sum == pytest.approx(token_sum, abs=tol * summary.scored_tokens)
    assert summary.scored_tokens == int((labels != -100).sum())
    assert summary.example_weighted_mean_loss == pytest.approx(sum(own) / len(own), abs=tol)
    # The two means are different figures on a data set of unequal lengths; the summary must not mix them up.
    assert abs(summary.token_weighted_mean_loss - summary.example_weighted_mean_loss) > 1e-3
    assert summary.perplexity == pytest.approx(math.exp(token_mean), rel=2 * tol)
    assert summary.examples == len(RECORDS) and not summary.skipped

    # Worst lists are the true top-N of what the output lines hold.
    means = sorted(((d["summary"]["mean"], d["line"]) for d in lines), reverse=True)[:4]
    assert [(e.mean, e.line) for e in summary.worst_examples] == means
    all_tokens = sorted(((t["loss"], d["line"], t["index"]) for d in lines for t in d["tokens"]), reverse=True)[:4]
    assert [(t.loss, t.line, t.index) for t in summary.worst_tokens] == all_tokens


def test_summary_label_smoothing_keeps_nll_apart(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS[:3])
    scan = scan_dataset(tiny_llama, data)
    with JsonlSink.open(tmp_path / "o.jsonl") as sink:
        s = run_scan(tiny_llama, scan, sink, options=ScoreOptions(label_smoothing=0.1))
    assert s.mean_nll is not None and s.token_weighted_mean_loss is not None
    assert s.token_weighted_mean_loss != pytest.approx(s.mean_nll, abs=1e-4)
    assert s.perplexity == pytest.approx(math.exp(s.mean_nll))


# --- invalid lines --------------------------------------------------------------------------------------


def test_invalid_line_stops_before_any_output(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"id": "e", "prompt": "p", "answer": ""}, RECORDS[1]])
    with pytest.raises(InvalidRecordError, match=r"d.jsonl line 2 \(id 'e'\): the answer is empty.*--skip-invalid"):
        scan_dataset(tiny_llama, data)


def test_too_long_line_is_invalid(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"prompt": "p" * 400, "answer": "a"}])
    with pytest.raises(InvalidRecordError, match="line 2: the example is .* tokens but the model's context is 256"):
        scan_dataset(tiny_llama, data)


def test_skip_invalid_reports_and_skips(tiny_llama, tmp_path):
    rows = [RECORDS[0], "{oops", {"id": "e", "prompt": "p", "answer": ""}, {"prompt": "p" * 400, "answer": "a"}]
    rows += [RECORDS[1]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    summary, lines = run_to_file(tiny_llama, data, tmp_path / "o.jsonl", skip_invalid=True)
    assert [d["line"] for d in lines] == [1, 5]
    assert [(s.line, s.id) for s in summary.skipped] == [(2, None), (3, "e"), (4, None)]
    assert summary.skipped[0].reason.startswith("not valid JSON")
    assert "too" in summary.skipped[2].reason or "context" in summary.skipped[2].reason
    assert summary.to_dict()["skipped_count"] == 3 and summary.examples == 2


def test_example_with_nothing_scored_is_invalid(tiny_llama, tmp_path):
    y = tiny_llama.tokenizer("y", add_special_tokens=False)["input_ids"]
    assert len(y) == 1
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "answer": "y"}])
    with pytest.raises(InvalidRecordError, match="line 1: no token of it is scored"):
        scan_dataset(tiny_llama, data, layout=Layout(add_eos=False, ignore_index=y[0]))


def test_empty_input_is_an_error(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="holds no records"):
        scan_dataset(tiny_llama, write_jsonl(tmp_path / "d.jsonl", ["", "  "]))


# --- output: streaming, whole lines, resume -------------------------------------------------------------


def test_lines_are_written_as_they_are_produced(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    out = tmp_path / "o.jsonl"
    seen = []
    scan = scan_dataset(tiny_llama, data)
    with JsonlSink.open(out) as sink:
        run_scan(
            tiny_llama,
            scan,
            sink,
            settings=BatchSettings(batch_size=1, sort_window=2),
            on_batch=lambda n, t: seen.append(len(out.read_bytes().splitlines())),
        )
    # One batch per example, windows of two: when batch k ends, every line of the earlier windows is on disk.
    assert len(seen) == len(RECORDS)
    assert all(seen[k] >= 2 * (k // 2) for k in range(len(seen))), seen
    assert seen[-1] < len(RECORDS)
    assert len(out.read_text().splitlines()) == len(RECORDS)


class _Interrupting:
    """A raw file that takes a few bytes of the next write, then gets Ctrl-C."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(bytes(data[:7]))
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_sink_interrupted_mid_line_leaves_whole_lines(tmp_path):
    out = tmp_path / "o.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with JsonlSink.open(out) as sink:
            sink.write({"a": 1})
            sink.write({"b": "é"})
            sink._stream = _Interrupting(sink._stream)
            sink.write({"c": 3})
    assert out.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'


def test_resume_after_torn_line_gives_one_line_per_record(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    full_summary, full = run_to_file(tiny_llama, data, tmp_path / "full.jsonl", batch_size=3)
    raw = (tmp_path / "full.jsonl").read_bytes().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(raw[:3]) + raw[3][: len(raw[3]) // 2])  # killed while writing the fourth line

    state = read_resume(part)
    assert sorted(state.examples) == [1, 2, 3] and state.torn_bytes == len(raw[3]) // 2
    summary, lines = run_to_file(tiny_llama, data, part, resume=state, batch_size=2)
    assert [d["line"] for d in lines] == [d["line"] for d in full]
    assert lines[:3] == full[:3]  # kept as they were
    tol = batch_tolerance(tiny_llama, encoded(tiny_llama, RECORDS))  # batches of 2, not 3: other sums
    for got, want in zip(lines[3:], full[3:]):
        assert [t["loss"] for t in got["tokens"]] == pytest.approx([t["loss"] for t in want["tokens"]], abs=tol)
    assert summary.resumed == 3 and summary.examples == len(RECORDS)
    assert summary.token_weighted_mean_loss == pytest.approx(full_summary.token_weighted_mean_loss, abs=tol)
    assert summary.example_weighted_mean_loss == pytest.approx(full_summary.example_weighted_mean_loss, abs=tol)
    assert [(t.line, t.index) for t in summary.worst_tokens] == [(t.line, t.index) for t in full_summary.worst_tokens]
    assert summary.batching.examples == len(RECORDS) - 3


def test_resume_inside_a_sort_window_forms_the_batches_of_an_uninterrupted_run(tiny_llama, tmp_path):
    """Interrupted after any line, a resumed run plans its windows and batches with the lines it keeps, as
    the run that wrote them did: it runs exactly the batches of the uninterrupted run that hold a line still
    to write (a batch mixing kept and new lines is scored whole), so the new lines sum as they would have
    (figures within the float32 bound on any machine; identical on this one)."""
    from ce_inspect.scoring import score_batch

    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    settings = dict(batch_size=2, sort_window=4, max_padding=None)  # windows of lines 1-4 and 5-7

    def run(out: Path, resume=None):
        batches: list[tuple[int, ...]] = []  # the lines of each batch, as the score function sees them

        def score(examples):
            batches.append(tuple(sorted(by_ids[e.input_ids] for e in examples)))
            return score_batch(tiny_llama, examples)

        scan = scan_dataset(tiny_llama, data, resume=resume)
        with JsonlSink.open(out, resume=resume) as sink:
            summary = run_scan(tiny_llama, scan, sink, settings=BatchSettings(**settings), score=score)
        return summary, batches, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    by_ids = {e.input_ids: k + 1 for k, e in enumerate(encoded(tiny_llama, RECORDS))}
    assert len(by_ids) == len(RECORDS)
    _, full_batches, full = run(tmp_path / "full.jsonl")
    assert len(full_batches) == 4 and all(len(b) == 2 for b in full_batches[:3])  # 2 + 2 in window 1, 2 + 1
    tol = batch_tolerance(tiny_llama, encoded(tiny_llama, RECORDS))
    raw = (tmp_path / "full.jsonl").read_bytes().splitlines(keepends=True)
    for kept in range(1, len(RECORDS)):
        part = tmp_path / f"part{kept}.jsonl"
        part.write_bytes(b"".join(raw[:kept]))
        summary, batches, lines = run(part, resume=read_resume(part))
        assert batches == [b for b in full_batches if max(b) > kept], kept
        assert lines[:kept] == full[:kept] and [d["line"] for d in lines] == [d["line"] for d in full]
        for got, want in zip(lines[kept:], full[kept:]):
            assert [t["loss"] for t in got["tokens"]] == pytest.approx([t["loss"] for t in want["tokens"]], abs=tol)
        assert summary.resumed == kept and summary.batching.examples == len(RECORDS) - kept


def test_resume_of_a_finished_run_scores_nothing(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    first, _ = run_to_file(tiny_llama, data, tmp_path / "o.jsonl")
    again, lines = run_to_file(tiny_llama, data, tmp_path / "o.jsonl", resume=read_resume(tmp_path / "o.jsonl"))
    assert len(lines) == len(RECORDS) and again.batching.batches == 0 and again.resumed == len(RECORDS)
    assert again.token_weighted_mean_loss == first.token_weighted_mean_loss


def test_resume_with_skipped_lines(tiny_llama, tmp_path):
    rows = [RECORDS[0], "{bad", RECORDS[1], RECORDS[2]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _, full = run_to_file(tiny_llama, data, tmp_path / "o.jsonl", skip_invalid=True)
    out = tmp_path / "o.jsonl"
    out.write_text("\n".join(json.dumps(d) for d in full[:2]) + "\n")  # lines 1 and 3 done, line 2 skipped
    with pytest.raises(InvalidRecordError, match="line 2"):
        scan_dataset(tiny_llama, data, resume=read_resume(out))
    summary, lines = run_to_file(tiny_llama, data, out, resume=read_resume(out), skip_invalid=True)
    assert [d["line"] for d in lines] == [1, 3, 4]
    assert [s.line for s in summary.skipped] == [2] and summary.resumed == 2


def test_resume_refuses_output_of_another_input(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    run_to_file(tiny_llama, data, tmp_path / "o.jsonl")
    state = read_resume(tmp_path / "o.jsonl")
    other_ids = write_jsonl(tmp_path / "ids.jsonl", [{**r, "id": f"z{k}"} for k, r in enumerate(RECORDS)])
    with pytest.raises(ResumeError, match="has id 'z0' but .* holds id 'a'"):
        scan_dataset(tiny_llama, other_ids, resume=state)
    other_text = write_jsonl(tmp_path / "text.jsonl", [{**RECORDS[0], "answer": " Shanghai."}] + RECORDS[1:])
    with pytest.raises(ResumeError, match="does not encode to the tokens"):
        scan_dataset(tiny_llama, other_text, resume=state)
    shorter = write_jsonl(tmp_path / "short.jsonl", RECORDS[:3])
    with pytest.raises(ResumeError, match="input line 4, which .* does not have"):
        scan_dataset(tiny_llama, shorter, resume=state)
    with pytest.raises(ResumeError, match="label_smoothing"):
        scan_dataset(tiny_llama, data, resume=state, options=ScoreOptions(label_smoothing=0.1))
    with pytest.raises(ResumeError, match='with "add_eos": true, this run has "add_eos": false'):
        scan_dataset(tiny_llama, data, resume=state, layout=Layout(add_eos=False))


def test_resume_refuses_a_file_that_is_not_batch_output(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"line": 1}\n{"not": "ours"}\n{"x": 2}\n')
    with pytest.raises(ResumeError, match="line 1 of .* is not a complete ce-inspect batch result"):
        read_resume(out)


def test_output_conflicts(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    assert "is the same file as the input file" in output_conflict(data, data, resume=True, force=True)
    existing = write_jsonl(tmp_path / "o.jsonl", [])
    assert "already exists" in output_conflict(existing, data, resume=False, force=False)
    assert output_conflict(existing, data, resume=True, force=False) is None
    assert output_conflict(existing, data, resume=False, force=True) is None
    assert output_conflict(tmp_path / "new.jsonl", data, resume=False, force=False) is None
    assert "folder" in output_conflict(tmp_path, data, resume=False, force=True)


# --- chat records ---------------------------------------------------------------------------------------

CHAT = [
    {"id": "c1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
    {
        "id": "c2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of China?"},
            {"role": "assistant", "content": "Beijing."},
            {"role": "user", "content": "And France?"},
            {"role": "assistant", "content": "Paris, the largest city of the country."},
        ],
    },
]


def test_chat_records_batched_equal_alone_and_the_models_loss(tiny_llama, tmp_path):
    from ce_inspect.text import encode_messages

    data = write_jsonl(tmp_path / "chat.jsonl", CHAT + [RECORDS[0]])  # chat and pair records may mix
    scan = scan_dataset(tiny_llama, data)
    with JsonlSink.open(tmp_path / "o.jsonl") as sink:
        run_scan(tiny_llama, scan, sink, options=ScoreOptions(verify=True), settings=BatchSettings(batch_size=3))
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [d["id"] for d in lines] == ["c1", "c2", "a"]
    for row, line in zip(CHAT, lines):
        encoded = encode_messages(tiny_llama.tokenizer, row["messages"], Layout(), max_length=tiny_llama.context_length)
        ref = score_encoded(tiny_llama, encoded)
        tol = batch_tolerance(tiny_llama, [encoded])
        assert [t["loss"] for t in line["tokens"]] == pytest.approx([t.loss for t in ref.tokens], abs=tol)
        assert line["summary"]["verify_abs_diff"] < 1e-4  # the model's own loss on the same labels


# --- the real model -------------------------------------------------------------------------------------


@pytest.mark.default_model
def test_default_model_samples_batched_agree_with_one_by_one(smollm2, tmp_path):
    """SmolLM2 (30 layers, float32): tokens, per-example and data-set means agree across batchings within
    the float32 bound (1.9e-2 nats; measured: 2e-5 on an AMD EPYC, where the body's matmuls sum a row in
    another order for another batch shape, and 0 on Intel with MKL_CBWR; see docs/batch.md, Numerics)."""
    data = Path(__file__).resolve().parents[1] / "samples" / "pairs.jsonl"
    one_summary, one = run_to_file(smollm2, data, tmp_path / "one.jsonl", batch_size=1)
    # Heavily padded batches (55% of positions; the tiny models cover left padding).
    summary, many = run_to_file(smollm2, data, tmp_path / "eight.jsonl", batch_size=8, max_padding=None)
    assert len(many) == len(one) >= 12 and summary.batching.batches == 2
    tol = batch_tolerance(smollm2, [e for e, _ in scan_records(smollm2, data)])
    assert tol < 0.05  # well below the loss changes a wrong target or a leaked pad gives (> 0.5 nats)
    for a, b in zip(one, many):
        assert (a["line"], a["id"]) == (b["line"], b["id"])
        assert b["summary"]["mean"] == pytest.approx(a["summary"]["mean"], abs=tol)
        for ta, tb in zip(a["tokens"], b["tokens"]):
            assert tb["token_id"] == ta["token_id"]
            assert tb["loss"] == pytest.approx(ta["loss"], abs=tol)
    assert summary.token_weighted_mean_loss == pytest.approx(one_summary.token_weighted_mean_loss, abs=tol)


def scan_records(lm, data: Path):
    """(Encoded, Record) of every record of ``data``."""
    return [(encode_record(lm, r, Layout()), r) for r in read_records(data)]


def test_the_float32_bound_follows_the_widths_and_depth():
    """``loss_tolerance`` is 2 (loss from logits) x 2 (two summation orders) x 5 (lambda) x sqrt(roundings on a
    token's path) x 2**-24 x the largest |logit| (docs/batch.md, Numerics), computed here by hand for SmolLM2's
    shape: 30 layers x (6 x 576 + 64 + 129 positions + 1536) + 576 for the head."""
    from transformers import LlamaConfig

    from ce_inspect.numerics import loss_tolerance

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9)
    by_hand = 2 * 2 * 5 * math.sqrt(30 * (6 * 576 + 64 + 129 + 1536) + 576) * 2**-24 * 40.0
    assert loss_tolerance(config, 40.0, 129) == pytest.approx(by_hand, rel=1e-12)
    assert 0.018 < by_hand < 0.019
    # Deeper, wider and longer: more roundings, a larger bound; twice the logits, twice the bound.
    assert loss_tolerance(config, 40.0, 1024) > loss_tolerance(config, 40.0, 129)
    assert loss_tolerance(config, 80.0, 129) == pytest.approx(2 * by_hand)


def test_the_float32_bound_holds_and_is_not_vacuous_on_the_tiny_models(tiny_llama, tiny_gpt2):
    """On this machine's BLAS and thread count: every token of every record in one padded batch (left and
    right) is within the bound of the record alone, and the bound is small (< 1e-3 nats) while above
    what float32 can resolve at these losses."""
    from ce_inspect.scoring import score_batch

    for lm in (tiny_llama, tiny_gpt2):
        examples = encoded(lm, RECORDS)
        tol = batch_tolerance(lm, examples)
        alone_losses = [[t.loss for t in score_encoded(lm, e).tokens] for e in examples]
        largest = max(max(x) for x in alone_losses)
        assert largest * 2**-24 < tol < 1e-3, (tol, largest)
        for side in ("left", "right"):
            batched = score_batch(lm, examples, padding_side=side)
            worst = max(abs(t.loss - a) for r, x in zip(batched, alone_losses) for t, a in zip(r.tokens, x))
            assert worst <= tol, (side, worst, tol)
