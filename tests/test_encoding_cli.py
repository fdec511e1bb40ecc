"""The user's text through the command line: what TEXT_CASES in test_hostile.py cannot express (notes on
stderr, figures in the JSON document against direct tokenizer calls and torch)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from ce_inspect.cli import main


def run_json(capsys, *args: str) -> tuple[dict, str]:
    code = main(["run", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def answer_ids(doc: dict) -> list[int]:
    return [t["token_id"] for t in doc["sequence"] if t["segment"] == "answer"]


def test_special_tokens_text_scores_the_tokenizers_plain_ids(tiny_llama_dir, capsys):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    answer = "ok<|im_end|>\n<|im_start|>user"
    plain, _ = run_json(capsys, "-m", str(tiny_llama_dir), "-p", "Q", "-a", answer, "--special-tokens", "text")
    assert answer_ids(plain) == tok(answer, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not any(t["special"] for t in plain["tokens"] if t["segment"] == "answer")
    assert plain["layout"]["special_tokens"] == "text"
    parsed, err = run_json(capsys, "-m", str(tiny_llama_dir), "-p", "Q", "-a", answer)
    assert answer_ids(parsed) == tok(answer, add_special_tokens=False)["input_ids"]
    note = next(n for n in parsed["notes"] if "special-token text" in n)
    assert f"note: {note}" in err.splitlines()  # with --json, every note is on stderr too


def test_notes_for_a_bom_and_an_ignore_index_that_is_eos(tiny_llama_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfHi")
    doc, err = run_json(
        capsys, "-m", str(tiny_llama_dir), "--prompt-file", str(tmp_path / "p.txt"), "-a", " x", "--ignore-index", "2"
    )
    assert any(n.startswith("the prompt starts with a byte-order mark") for n in doc["notes"])
    assert any("ignore index 2 is also the id of the token '</s>'" in n for n in doc["notes"])
    assert "byte-order mark" in err and "ignore index 2" in err
    assert doc["tokens"][-1]["token_id"] != 2 and doc["summary"]["ignore_index"] == 2
    assert doc["sequence"][-1]["token_id"] == 2 and doc["sequence"][-1]["scored"] is False


def test_top_k_past_the_vocabulary_is_clamped_with_a_note(tiny_llama_dir, capsys):
    doc, err = run_json(capsys, "-m", str(tiny_llama_dir), "-p", "Q", "-a", " a", "--top-k", "100000")
    vocab = len(AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert all(len(t["top_k"]) == vocab for t in doc["tokens"])
    assert sum(a["prob"] for a in doc["tokens"][0]["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert any("top-k 100000 is more than the model's vocabulary" in n for n in doc["notes"])
    assert err.count("top-k 100000 is more than the model's vocabulary") == 1


def test_byte_tokens_show_their_bytes_in_the_table_and_strip(tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["run", "-m", str(tiny_llama_dir), "-p", "Q", "-a", " 😀中"]) == 0
    out = capsys.readouterr().out
    expected = [f"<{b:02X}>" for b in "😀中".encode()]
    for shown in expected:
        assert shown in out
    assert "<F0><9F><98><80><E4><B8><AD>" in out.replace("\n", "").replace(" ", "").replace("│", "")
    assert "\ufffd" not in out


def test_joint_split_inside_a_token_note_in_json(tiny_llama_dir, capsys):
    doc, err = run_json(capsys, "-m", str(tiny_llama_dir), "-p", "Say i", "-a", "n the box", "--tokenization", "joint")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    scored_text = tok.decode([t["token_id"] for t in doc["tokens"] if t["segment"] == "answer"])
    assert scored_text == " the box"
    assert any("inside a token" in n and "' the box'" in n for n in doc["notes"])


def test_label_smoothing_is_checked_before_the_model_loads(tmp_path, capsys):
    code = main(["run", "-m", str(tmp_path / "none"), "-p", "Q", "-a", "x", "--label-smoothing", "nan"])
    err = capsys.readouterr().err
    # A missing model would be exit 1; the usage error comes first.
    assert code == 2 and err.count("Error:") == 1 and "got nan (not a number)" in err


def test_fake_turn_in_messages_is_scored_as_assistant_text_with_a_note(tiny_llama_dir, tmp_path, capsys):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A<|im_end|>\n<|im_start|>user\nB"}]
    (tmp_path / "m.json").write_text(json.dumps(messages))
    doc, _ = run_json(capsys, "-m", str(tiny_llama_dir), "--messages", str(tmp_path / "m.json"))
    note = next(n for n in doc["notes"] if "special-token text" in n)
    assert note.startswith("message 1 (assistant)")
    # What the note warns of: the template's rendering is one string, so the fake turn's markers are targets.
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert [t["token_id"] for t in doc["sequence"]] == ids
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert start in [t["token_id"] for t in doc["tokens"]]


def test_batch_notes_top_k_past_the_vocabulary_once_on_stderr(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q", "answer": " a"}\n{"prompt": "R", "answer": " b"}\n')
    assert main(["batch", "-m", str(tiny_llama_dir), str(data), "--top-k", "100000", "--batch-size", "1"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    vocab = len(AutoTokenizer.from_pretrained(tiny_llama_dir))
    examples = [d for d in lines if "tokens" in d]
    assert len(examples) == 2 and all(len(t["top_k"]) == vocab for d in examples for t in d["tokens"])
    assert all(any("top-k 100000" in n for n in d["notes"]) for d in examples)
    assert err.count("top-k 100000 is more than the model's vocabulary") == 1
