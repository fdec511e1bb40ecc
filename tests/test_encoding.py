"""The training layout: BOS, prompt, separator, answer, EOS; labels masked with ignore_index."""

from __future__ import annotations

import pytest
from conftest import byte_tokenizer

from ce_inspect import IGNORE_INDEX, Layout, encode, encode_pair
from ce_inspect.errors import InputError, SequenceTooLongError
from ce_inspect.text import special_prefix


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def tok_no_bos():
    return byte_tokenizer(add_bos=False)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_layout_with_bos_sep_and_eos(tok):
    e = encode_pair(tok, "Q: hi", " A: yo", sep="\n")
    expected = [tok.bos_token_id] + ids(tok, "Q: hi") + ids(tok, "\n") + ids(tok, " A: yo") + [tok.eos_token_id]
    assert list(e.input_ids) == expected
    n_masked = 1 + len(ids(tok, "Q: hi")) + 1
    assert list(e.labels[:n_masked]) == [IGNORE_INDEX] * n_masked
    assert list(e.labels[n_masked:]) == expected[n_masked:]
    assert e.segments[0] == "bos" and e.segments[-1] == "eos" and e.segments[n_masked - 1] == "sep"
    assert e.scored_positions == list(range(n_masked, len(expected)))


def test_prompt_and_answer_are_tokenized_separately(tok):
    # "the" merges to one token inside a word; split across the boundary it must stay two tokens.
    e = encode_pair(tok, "t", "he")
    answer_ids = [i for i, s in zip(e.input_ids, e.segments) if s == "answer"]
    assert answer_ids == ids(tok, "he")
    assert [i for i, s in zip(e.input_ids, e.segments) if s == "prompt"] == ids(tok, "t")


def test_no_bos_when_the_tokenizer_adds_none(tok_no_bos):
    assert special_prefix(tok_no_bos) == []
    e = encode_pair(tok_no_bos, "abc", "d")
    assert e.segments[0] == "prompt"


def test_no_eos_and_custom_ignore_index(tok):
    e = encode_pair(tok, "abc", " d", add_eos=False, ignore_index=-1)
    assert e.input_ids[-1] != tok.eos_token_id
    assert e.labels[0] == -1 and IGNORE_INDEX not in e.labels
    assert e.scored_positions == [i for i, s in enumerate(e.segments) if s == "answer"]


def test_eos_is_scored(tok):
    e = encode_pair(tok, "abc", " d")
    assert e.labels[-1] == tok.eos_token_id


def test_empty_answer_is_an_error(tok):
    with pytest.raises(InputError, match="empty"):
        encode_pair(tok, "abc", "")


def test_answer_without_tokens_is_an_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word = Tokenizer(models.WordLevel({"<unk>": 0, "hi": 1, "</s>": 2}, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(InputError, match="yields no tokens"):
        encode_pair(tokenizer, "hi", "   ")


def test_empty_prompt_without_bos_is_an_error(tok_no_bos):
    with pytest.raises(InputError, match="prompt is empty"):
        encode_pair(tok_no_bos, "", "abc")


def test_empty_prompt_with_bos_is_fine(tok):
    e = encode_pair(tok, "", "abc")
    assert e.scored_positions[0] == 1


def test_too_long_is_an_error_unless_truncating(tok):
    prompt, answer = "x" * 50, "yz"
    with pytest.raises(SequenceTooLongError, match="context is 20"):
        encode_pair(tok, prompt, answer, max_length=20)
    e = encode_pair(tok, prompt, answer, max_length=20, truncate_prompt=True)
    assert len(e) == 20
    assert e.truncated_prompt_tokens == len(ids(tok, prompt)) + 1 + 2 + 1 - 20
    assert e.segments[0] == "bos" and e.notes and "dropped" in e.notes[0]
    assert [i for i, s in zip(e.input_ids, e.segments) if s == "answer"] == ids(tok, answer)


def test_answer_alone_too_long(tok):
    with pytest.raises(SequenceTooLongError, match="even with the whole prompt dropped"):
        encode_pair(tok, "abc", "y" * 30, max_length=10, truncate_prompt=True)


def test_layout_object_dispatch(tok):
    """``encode`` with a Layout builds the pair or the chat example, each checked against the tokenizer alone."""
    pair = encode(tok, "abc", " d", Layout(sep="|", add_eos=False, ignore_index=-1))
    assert list(pair.input_ids) == [tok.bos_token_id] + ids(tok, "abc") + ids(tok, "|") + ids(tok, " d")
    n_answer = len(ids(tok, " d"))
    assert list(pair.labels) == [-1] * (len(pair.input_ids) - n_answer) + ids(tok, " d")

    chat = encode(tok, "abc", " d", Layout(chat=True, system="S"))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "abc"}]
    rendered = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": " d"}], tokenize=True, return_dict=True
    )["input_ids"]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    start = len(prompt["input_ids"])
    end = rendered.index(tok.convert_tokens_to_ids("<|im_end|>"), start)  # the answer and its end of turn
    assert list(chat.input_ids) == list(rendered)
    assert [j for j, label in enumerate(chat.labels) if label != IGNORE_INDEX] == list(range(start, end + 1))
