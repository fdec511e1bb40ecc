"""`--tokenization trl` against TRL itself: the ids and trained labels of TRL's own SFTTrainer data preparation.

TRL and `datasets` are a test-only extra (`pip install 'ce-inspect[trl]'`); without them these tests skip.
The reference is what `SFTTrainer(...)` leaves in `trainer.train_dataset` after its own `_prepare_dataset`
(add EOS, tokenize, common-prefix split, build labels), with its defaults for prompt-completion data
(`completion_only_loss` on) and `max_length=None` so that nothing is truncated.
"""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("trl", reason="TRL is a test-only extra: pip install 'ce-inspect[trl]'")
pytest.importorskip("datasets", reason="TRL's data preparation needs datasets: pip install 'ce-inspect[trl]'")

from ce_inspect.cli import main  # noqa: E402
from ce_inspect.data import encode_record, read_records  # noqa: E402
from ce_inspect.text import Layout  # noqa: E402


def pairs(eos: str, end_of_turn: str) -> list[tuple[str, str]]:
    return [
        ("The capital of France is ", "Paris."),  # the prompt ends in a space
        ("Q: what comes next?\n\n", "The answer."),  # the prompt ends in "\n\n"
        ("Say t", "he end"),  # a word split across the boundary
        ("Repeat the marker:", f" a {eos} b"),  # the EOS token's text inside the answer
        ("And the turn marker:", f" {end_of_turn} then"),  # a chat marker's text inside the answer
        ("Already closed", f" ends{eos}"),  # TRL appends no second EOS
        ("un", "believable"),
    ]


def plain_rows(eos: str, end_of_turn: str) -> list[dict]:
    return [{"prompt": p, "completion": c} for p, c in pairs(eos, end_of_turn)]


def conversational_rows(eos: str, end_of_turn: str) -> list[dict]:
    rows = [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
        for p, c in pairs(eos, end_of_turn)
    ]
    rows.append(
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And now?"},
            ],
            "completion": [{"role": "assistant", "content": "Now this."}],
        }
    )
    return rows


def trl_prepared(model, tokenizer, rows: list[dict], tmp_path) -> list[dict]:
    """TRL's own SFTTrainer data preparation of ``rows``: its train_dataset's input_ids and labels."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        max_length=None,
        bf16=False,
        use_cpu=True,
        dataset_num_proc=None,
    )
    logging.getLogger("trl").setLevel(logging.ERROR)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer.train_dataset]


def ours(lm, rows: list[dict], tmp_path) -> list[dict]:
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    layout = Layout(tokenization="trl")  # every record format takes TRL's rule
    out = []
    for record in read_records(path):
        assert record.error is None, record
        encoded = encode_record(lm, record, layout)
        out.append({"input_ids": list(encoded.input_ids), "labels": list(encoded.labels)})
    return out


def _check(lm, model, rows, tmp_path):
    expected = trl_prepared(model, lm.tokenizer, rows, tmp_path)
    got = ours(lm, rows, tmp_path)
    assert len(got) == len(expected) == len(rows)
    for row, a, b in zip(rows, got, expected):
        assert a["input_ids"] == b["input_ids"], row
        # Nothing predicts position 0 (the model's shift drops label 0), so labels compare from 1 on.
        assert a["labels"][1:] == b["labels"][1:], row


@pytest.fixture(scope="module")
def tiny_hf_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


@pytest.mark.parametrize("form", ["plain", "conversational"])
def test_trl_parity_tiny_tokenizer(form, tiny_llama, tiny_hf_model, tmp_path):
    tok = tiny_llama.tokenizer
    rows = (plain_rows if form == "plain" else conversational_rows)(tok.eos_token, "<|im_end|>")
    _check(tiny_llama, tiny_hf_model, rows, tmp_path)


@pytest.mark.default_model
@pytest.mark.parametrize("form", ["plain", "conversational"])
def test_trl_parity_smollm2_tokenizer(form, smollm2, tiny_hf_model, tmp_path):
    # TRL prepares data with the tokenizer alone; the tiny model only satisfies SFTTrainer's constructor.
    tok = smollm2.tokenizer
    rows = (plain_rows if form == "plain" else conversational_rows)(tok.eos_token, "<|im_end|>")
    _check(smollm2, tiny_hf_model, rows, tmp_path)


def test_trl_split_differs_from_separate_and_joint(tiny_llama, tiny_hf_model, tmp_path):
    """The reason `trl` exists: on these pairs neither `separate` nor `joint` trains what TRL trains."""
    from ce_inspect.text import encode

    rows = plain_rows(tiny_llama.tokenizer.eos_token, "<|im_end|>")
    expected = trl_prepared(tiny_hf_model, tiny_llama.tokenizer, rows, tmp_path)
    for tokenization in ("separate", "joint"):
        layout = Layout(tokenization=tokenization)
        same = [
            list(encode(tiny_llama.tokenizer, r["prompt"], r["completion"], layout).labels[1:]) == e["labels"][1:]
            for r, e in zip(rows, expected)
        ]
        assert not all(same), tokenization


def test_batch_trl_scores_trls_targets_and_warns_about_dropped_tail(
    tiny_llama_dir, tiny_hf_model, tiny_llama, tmp_path, capsys
):
    rows = plain_rows(tiny_llama.tokenizer.eos_token, "<|im_end|>")
    expected = trl_prepared(tiny_hf_model, tiny_llama.tokenizer, rows, tmp_path)
    capsys.readouterr()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tiny_llama_dir), "--tokenization", "trl", "-o", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    for line, e in zip(lines, expected):
        assert [t["token_id"] for t in line["sequence"]] == e["input_ids"]
        trained = [(i, t) for i, t in enumerate(e["labels"]) if t != -100 and i > 0]
        assert [(t["index"], t["token_id"]) for t in line["tokens"]] == trained
    dropped = [line for line in lines if any("TRL's rule" in n for n in line.get("notes", []))]
    assert dropped, "a pair whose prompt tail merges into the completion must say so"


def test_trl_parity_language_modelling(tiny_llama, tiny_hf_model, tmp_path):
    """`text` and `messages` data: TRL appends EOS text to `text`, renders `messages`, and trains every token."""
    eos = tiny_llama.tokenizer.eos_token
    texts = [{"text": "the cat sat "}, {"text": f"ends with eos{eos}"}, {"text": "x\n\n"}]
    _check(tiny_llama, tiny_hf_model, texts, tmp_path)
    conversations = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
        for p, c in pairs(eos, "<|im_end|>")
    ]
    _check(tiny_llama, tiny_hf_model, conversations, tmp_path)
