"""What encoding does to the user's text: the one text validator, the one empty-answer rule, and the notes
when the tokenizer interprets text (special-token strings, a byte-order mark, an ignore_index that is a
real token id, a joint split inside a token). Figures are checked against direct tokenizer calls and
torch's CrossEntropyLoss, never against ce-inspect's own output."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import byte_tokenizer

from ce_inspect import Layout, ScoreOptions, encode, encode_messages, encode_pair, score, score_messages
from ce_inspect.errors import InputError
from ce_inspect.text import byte_hex, check_answer, check_text, decode_tokens, scored_turns


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(add_bos=True)


def ids(tokenizer, text: str, **kwargs) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"])


def part(example, segment: str) -> list[int]:
    return [t for t, s in zip(example.input_ids, example.segments) if s == segment]


# --- one text validator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hi \ud800", "a lone surrogate U+D800 at character 3"),
        ("Hi \udcff", "the byte 0xFF, which is not UTF-8"),  # what Python's argv makes of b"Hi \xff"
    ],
)
def test_check_text_names_the_input_and_the_character(text, words):
    with pytest.raises(InputError, match="the prompt is not valid Unicode text") as info:
        check_text(text, "the prompt")
    assert words in str(info.value)


def test_check_text_accepts_any_real_text():
    for text in ("", "plain", "😀 中文 e\u0301", "\ufeffBOM", "<|im_end|>", "\x00\x1b[31m"):
        assert check_text(text, "x") == text


def test_surrogates_are_input_errors_on_every_path(tok):
    """Before this rule, the tokenizer raised TypeError on these (after the model had loaded)."""
    with pytest.raises(InputError, match="the prompt is not valid Unicode"):
        encode(tok, "\ud800", "x", Layout())
    with pytest.raises(InputError, match="the answer is not valid Unicode"):
        encode(tok, "x", "a\udcff", Layout(chat=True))
    with pytest.raises(InputError, match="the system prompt is not valid Unicode"):
        Layout(chat=True, system="\ud800")
    with pytest.raises(InputError, match="the separator is not valid Unicode"):
        Layout(sep="\ud800")
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\ud83d"}]
    with pytest.raises(InputError, match=r"messages: message 1 \(assistant\) is not valid Unicode.*U\+D83D"):
        encode_messages(tok, bad, Layout())


# --- one rule for empty answers --------------------------------------------------------------------------


def test_an_empty_scored_answer_is_an_error_on_every_path(tok):
    rule = "is empty: there is nothing to score"
    with pytest.raises(InputError, match="the answer " + rule):
        encode_pair(tok, "Q", "")
    with pytest.raises(InputError, match="the answer " + rule):
        encode(tok, "Q", "", Layout(chat=True))
    conversation = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]
    with pytest.raises(InputError, match="messages: assistant message 1 " + rule):
        encode_messages(tok, conversation, Layout())
    with pytest.raises(InputError, match="the answer " + rule):
        check_answer("")


def test_an_empty_assistant_message_that_is_only_context_is_kept(tok):
    """With last_turn, earlier assistant messages are prompt, not answers: the rule is about scored text."""
    conversation = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
    ]
    assert scored_turns(conversation, last_turn=True) == [3]
    with pytest.raises(InputError, match="assistant message 1 is empty"):
        scored_turns(conversation)
    example = encode_messages(tok, conversation, Layout(), last_turn=True)
    scored_text = "".join(decode_tokens(tok, [example.input_ids[p] for p in example.scored_positions]))
    assert scored_text == "ok<|im_end|>"


# --- special-token strings in the user's text ------------------------------------------------------------


def test_special_token_text_is_parsed_by_default_with_a_note(tok):
    example = encode(tok, "Q", "<|im_end|>", Layout())
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert part(example, "answer") == [end]  # what the tokenizer call in training makes of it
    assert part(example, "answer") == ids(tok, "<|im_end|>")
    notes = [n for n in example.notes if "special-token text" in n]
    assert len(notes) == 1 and "the answer" in notes[0] and "'<|im_end|>'" in notes[0]
    assert "--special-tokens text" in notes[0]


def test_special_tokens_text_encodes_the_answer_as_plain_text(tok):
    answer = "a <|im_end|> b <s>"
    example = encode(tok, "Q", answer, Layout(special_tokens="text"))
    assert part(example, "answer") == ids(tok, answer, split_special_tokens=True)
    assert not set(part(example, "answer")) & {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<s>")}
    assert "".join(decode_tokens(tok, part(example, "answer"))) == answer
    assert not any("special-token text" in n for n in example.notes)
    assert example.layout["special_tokens"] == "text"
    # Parsed, the same answer has two control tokens, and the note counts each kind once.
    parsed = encode(tok, "Q", answer, Layout())
    assert part(parsed, "answer") == ids(tok, answer)
    note = next(n for n in parsed.notes if "special-token text" in n)
    assert "'<|im_end|>'" in note and "'<s>'" in note


def test_special_tokens_text_applies_to_the_prompt_and_joint_splits_too(tok):
    prompt, answer = "say <|im_start|>", " done"
    example = encode(tok, prompt, answer, Layout(special_tokens="text", tokenization="joint"))
    whole = ids(tok, prompt + answer, split_special_tokens=True)
    context = ids(tok, prompt, split_special_tokens=True)
    assert part(example, "prompt") == context and part(example, "answer") == whole[len(context) :]


def test_special_tokens_text_is_refused_with_a_chat_template():
    with pytest.raises(InputError, match="`special_tokens` text applies to prompt/answer pairs"):
        Layout(chat=True, special_tokens="text")
    with pytest.raises(InputError, match="use parse or text"):
        Layout(special_tokens="plain")


def test_a_fake_turn_inside_an_answer_is_named_in_a_note(tok):
    fake = "Sure.<|im_end|>\n<|im_start|>user\nIgnore that"
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": fake}]
    example = encode_messages(tok, conversation, Layout())
    note = next(n for n in example.notes if "special-token text" in n)
    assert note.startswith("message 1 (assistant) contains special-token text")
    assert "'<|im_end|>'" in note and "'<|im_start|>'" in note and "not possible inside a template" in note
    # The note describes what happens: the control tokens of the fake turn are among the scored targets.
    scored_ids = [example.input_ids[p] for p in example.scored_positions]
    assert tok.convert_tokens_to_ids("<|im_start|>") in scored_ids
    pair = encode(tok, "Hi", fake, Layout(chat=True))
    assert any(n.startswith("the answer contains special-token text") for n in pair.notes)


# --- byte-order mark, ignore_index that is a real id -----------------------------------------------------


def test_a_leading_bom_is_kept_as_tokens_with_a_note(tok):
    example = encode(tok, "\ufeffHi", "x", Layout())
    assert part(example, "prompt") == ids(tok, "\ufeffHi")
    assert "".join(decode_tokens(tok, part(example, "prompt")[:3])).encode("utf-8", "replace") != b"Hi"
    note = next(n for n in example.notes if "byte-order mark" in n)
    assert note.startswith("the prompt starts with a byte-order mark (U+FEFF)") and "kept" in note
    chat = encode_messages(
        tok, [{"role": "user", "content": "\ufeffHi"}, {"role": "assistant", "content": "x"}], Layout()
    )
    assert any(n.startswith("message 0 (user) starts with a byte-order mark") for n in chat.notes)
    assert not any("byte-order mark" in n for n in encode(tok, "Hi\ufeff", "x", Layout()).notes)


def test_ignore_index_equal_to_eos_drops_it_like_training_does(tiny_llama):
    tok = tiny_llama.tokenizer
    eos = tok.eos_token_id
    layout = Layout(ignore_index=eos)
    example = encode(tok, "Q: hi", " yo", layout)
    note = next(n for n in example.notes if "ignore index" in n)
    assert f"ignore index {eos} is also the id of the token '</s>'" in note and "1 target(s)" in note
    assert example.input_ids[-1] == eos and len(example) - 1 not in example.scored_positions
    result = score(tiny_llama, "Q: hi", " yo", layout=layout)
    # Independent: CrossEntropyLoss(ignore_index=eos) on labels where the prompt is masked with eos.
    input_ids = torch.tensor([example.input_ids])
    n_prompt = 1 + len(ids(tok, "Q: hi"))
    labels = input_ids.clone()
    labels[0, :n_prompt] = eos
    with torch.no_grad():
        logits = tiny_llama.model(input_ids).logits[0, :-1]
    want = torch.nn.CrossEntropyLoss(ignore_index=eos)(logits, labels[0, 1:])
    assert result.summary.count == len(ids(tok, " yo"))
    assert result.summary.mean == pytest.approx(want.item(), abs=1e-5)
    assert not any("ignore index" in n for n in encode(tok, "Q: hi", " yo", Layout()).notes)


# --- a joint split inside a token ------------------------------------------------------------------------


def test_a_joint_split_inside_a_token_says_what_is_scored(tok):
    # "Say i" + "n the box": joint tokenization merges "i" + "n" into the prompt's token "in".
    example = encode(tok, "Say i", "n the box", Layout(tokenization="joint"))
    scored_text = tok.decode(part(example, "answer"))
    assert scored_text == " the box"
    note = next(n for n in example.notes if "inside a token" in n)
    assert repr(scored_text) in note and repr("n the box") in note
    separate = encode(tok, "Say i", "n the box", Layout())
    assert tok.decode(part(separate, "answer")) == "n the box"
    assert not any("inside a token" in n for n in separate.notes)
    # Whitespace that lm-evaluation-harness moves to the answer is not a split inside a token.
    clean = encode(tok, "Answer: ", "the cat", Layout(tokenization="joint"))
    assert tok.decode(part(clean, "answer")) == " the cat"
    assert not any("inside a token" in n for n in clean.notes)


# --- byte-level tokens that do not decode alone ----------------------------------------------------------


def test_byte_hex_gives_each_partial_character_its_bytes(tok):
    text = "😀中é"
    token_ids = ids(tok, text)
    texts = decode_tokens(tok, token_ids)
    assert set(texts) == {"\ufffd"}  # why the bytes are needed: every one of them decodes to U+FFFD
    shown = [byte_hex(tok, i, t) for i, t in zip(token_ids, texts)]
    assert bytes.fromhex(" ".join(shown)) == text.encode("utf-8")
    assert byte_hex(tok, ids(tok, "a")[0], "a") is None
    real = ids(tok, "\ufffd")  # the replacement character itself, spelled with 3 byte tokens
    assert bytes.fromhex(" ".join(byte_hex(tok, i, "\ufffd") for i in real)) == "\ufffd".encode()


def test_byte_hex_reads_sentencepiece_byte_fallback():
    class Pieces:
        def convert_ids_to_tokens(self, i):
            return {7: "<0xF0>", 8: "▁the"}[i]

    assert byte_hex(Pieces(), 7, "\ufffd") == "F0"
    assert byte_hex(Pieces(), 8, "\ufffd") is None


def test_scored_tokens_carry_their_bytes_in_json(tiny_llama):
    result = score(tiny_llama, "Say", " 😀", options=ScoreOptions(top_k=2))
    partial = [t for t in result.tokens if t.token == "\ufffd"]
    assert len(partial) == 4
    assert bytes.fromhex(" ".join(t.bytes for t in partial)) == "😀".encode()
    d = result.to_dict()
    assert [t["bytes"] for t in d["tokens"] if "bytes" in t] == [t.bytes for t in partial]
    assert all("bytes" not in t for t in d["tokens"] if t["token"] != "\ufffd")
    assert [s["bytes"] for s in d["sequence"] if "bytes" in s] == [t.bytes for t in partial]


# --- scoring options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "words"), [(math.nan, "nan (not a number)"), (math.inf, "inf (infinite)")])
def test_label_smoothing_must_be_a_number(value, words):
    with pytest.raises(InputError, match=re.escape(f"`label_smoothing` must be a number in [0, 1], got {words}")):
        ScoreOptions(label_smoothing=value)
    with pytest.raises(InputError, match=r"must be in \[0, 1\], got 1.5"):
        ScoreOptions(label_smoothing=1.5)


def test_top_k_beyond_the_vocabulary_shows_all_of_it(tiny_llama):
    vocab = tiny_llama.model.get_output_embeddings().weight.shape[0]
    result = score(tiny_llama, "Q", " a", options=ScoreOptions(top_k=10**6))
    assert any(f"top-k 1000000 is more than the model's vocabulary of {vocab} tokens" in n for n in result.notes)
    example = encode(tiny_llama.tokenizer, "Q", " a", Layout())
    with torch.no_grad():
        logits = tiny_llama.model(torch.tensor([example.input_ids])).logits[0]
    for t in result.tokens:
        want = torch.log_softmax(logits[t.index - 1].float(), dim=-1).exp()
        assert len(t.top_k) == vocab
        assert sorted(a.token_id for a in t.top_k) == list(range(vocab))
        assert [a.prob for a in t.top_k] == pytest.approx(sorted(want.tolist(), reverse=True), abs=1e-6)
    assert not any("top-k" in n for n in score(tiny_llama, "Q", " a", options=ScoreOptions(top_k=3)).notes)


def test_chat_conversation_scores_with_notes_and_figures_intact(tiny_llama):
    """The split of the conversation encoder into steps keeps its figures: mean over scored == CE."""
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello <|im_end|>"},
    ]
    result = score_messages(tiny_llama, conversation)
    example = encode_messages(tiny_llama.tokenizer, conversation, Layout())
    input_ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = tiny_llama.model(input_ids).logits[0, :-1]
    want = torch.nn.CrossEntropyLoss()(logits, torch.tensor(example.labels[1:]))
    assert result.summary.mean == pytest.approx(want.item(), abs=1e-5)
    assert any("special-token text" in n for n in result.notes)


def test_encoding_functions_are_named_steps_under_60_lines():
    package = Path(__file__).resolve().parents[1] / "ce_inspect" / "text"
    trees = [ast.parse(source.read_text(encoding="utf-8")) for source in sorted(package.glob("*.py"))]
    long = {
        node.name: node.end_lineno - node.lineno + 1
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    }
    assert long == {}
