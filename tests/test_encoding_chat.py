"""Chat layout: which tokens a chat template makes trainable, located without trusting ce-inspect's own code.

Expected spans are rebuilt here from ``apply_chat_template`` token ids (the generation-prompt prefix and
the answer's own tokens), so a bug in the char-offset bookkeeping of ``encoding`` cannot hide.
"""

from __future__ import annotations

import pytest
from conftest import CHATML, byte_tokenizer

from ce_inspect import Layout, encode, encode_chat, encode_messages, parse_messages
from ce_inspect.errors import InputError
from ce_inspect.text import IGNORE_INDEX, decode_tokens

# A second template shape: Llama-2 style, BOS and EOS written by the template, no generation prompt,
# a space the template adds before the answer and before EOS.
LLAMA2 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# ChatML whose assistant turns are marked with {% generation %}, including the newline after <|im_end|>.
GENERATION = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + MORE }}{% endgeneration %}{{ AFTER }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And the cat?"},
    {"role": "assistant", "content": "The cat is in."},
]


def ids_of(tok, messages, **kwargs) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def expected_turn(tok, messages, k) -> tuple[int, list[int]]:
    """(start, ids) of assistant message ``k`` as training scores it: the tokens after the generation
    prompt, through the end-of-turn token (for ChatML: the answer's own tokens + <|im_end|>)."""
    start = len(ids_of(tok, messages[:k], add_generation_prompt=True))
    answer = tok(messages[k]["content"], add_special_tokens=False)["input_ids"]
    return start, list(answer) + [tok.convert_tokens_to_ids("<|im_end|>")]


def scored(example) -> list[int]:
    return [i for i, label in enumerate(example.labels) if label != example.ignore_index]


@pytest.fixture(scope="module")
def chatml():
    return byte_tokenizer(add_bos=False)


def test_chat_pair_scores_exactly_the_answer_and_end_of_turn(chatml):
    example = encode(chatml, "What is the cat?", "the cat is in.", Layout(chat=True))
    messages = [{"role": "user", "content": "What is the cat?"}, {"role": "assistant", "content": "the cat is in."}]
    full = ids_of(chatml, messages)
    start, want = expected_turn(chatml, messages, 1)
    assert list(example.input_ids) == full
    assert scored(example) == list(range(start, start + len(want)))
    assert [example.input_ids[i] for i in scored(example)] == want
    assert [example.segments[i] for i in scored(example)] == ["assistant"] * (len(want) - 1) + ["eot"]
    # The newline after <|im_end|> is template text and not trained.
    assert example.segments[-1] == "template" and example.labels[-1] == IGNORE_INDEX
    assert example.layout["end_of_turn"] == "<|im_end|>"


def test_default_system_prompt_is_shown_as_injected(chatml):
    example = encode_chat(chatml, "Hi", "Hello.", Layout(chat=True))
    assert example.layout["default_system_prompt"] == "You are tiny."
    assert any("default system prompt" in note and "You are tiny." for note in example.notes)
    texts = decode_tokens(chatml, example.input_ids)
    system = "".join(t for t, s in zip(texts, example.segments) if s == "system")
    assert system == "You are tiny."
    # Injected text belongs to no message, and none of it is scored.
    injected = [i for i, turn in enumerate(example.turns) if turn is None]
    assert injected and injected == list(range(len(injected)))
    assert all(example.labels[i] == IGNORE_INDEX for i in injected)


def test_explicit_system_replaces_the_default(chatml):
    example = encode(chatml, "Hi", "Hello.", Layout(chat=True, system="Be brief."))
    assert example.layout["default_system_prompt"] is None
    assert not any("default system prompt" in note for note in example.notes)
    assert None not in example.turns
    texts = decode_tokens(chatml, example.input_ids)
    assert "".join(t for t, s in zip(texts, example.segments) if s == "system") == "Be brief."
    assert "You are tiny." not in "".join(texts)


def test_second_template_llama2_style_with_bos():
    tok = byte_tokenizer(add_bos=True, chat_template=LLAMA2)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "the cat"}]
    example = encode(tok, "Hi", "the cat", Layout(chat=True))
    full = ids_of(tok, messages)
    start = len(ids_of(tok, messages[:1], add_generation_prompt=True))
    assert list(example.input_ids) == full
    assert full.count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    # Everything after the generation prompt through </s>: what the model generates after [/INST].
    assert scored(example) == list(range(start, len(full)))
    assert example.input_ids[scored(example)[-1]] == tok.eos_token_id
    assert example.segments[scored(example)[-1]] == "eot"
    assert "".join(decode_tokens(tok, [example.input_ids[i] for i in scored(example)])) == " the cat </s>"
    assert any("template adds them" in note for note in example.notes)  # the space before </s>


def test_every_assistant_turn_is_scored_and_no_other_token(chatml):
    example = encode_messages(chatml, CONVERSATION, Layout())
    want: list[int] = []
    for k in (2, 4):
        start, ids = expected_turn(chatml, CONVERSATION, k)
        want += list(range(start, start + len(ids)))
    assert scored(example) == want
    assert list(example.input_ids) == ids_of(chatml, CONVERSATION)
    assert {example.turns[i] for i in want} == {2, 4}
    assert {example.segments[i] for i in want} == {"assistant", "eot"}
    for i, segment in enumerate(example.segments):
        if segment in ("system", "user"):
            assert example.labels[i] == IGNORE_INDEX
    assert example.turn_roles == ("system", "user", "assistant", "user", "assistant")
    assert example.layout["scored_turns"] == [2, 4]


def test_turn_indices_follow_the_messages(chatml):
    example = encode_messages(chatml, CONVERSATION, Layout())
    texts = decode_tokens(chatml, example.input_ids)
    for k, message in enumerate(CONVERSATION):
        content = "".join(
            t for t, s, turn in zip(texts, example.segments, example.turns) if turn == k and s == message["role"]
        )
        assert content == message["content"]
    assert list(example.turns) == sorted(example.turns)  # turns are contiguous and in order


def test_last_turn_scores_only_the_last_assistant_message(chatml):
    example = encode_messages(chatml, CONVERSATION, Layout(), last_turn=True)
    start, ids = expected_turn(chatml, CONVERSATION, 4)
    assert scored(example) == list(range(start, start + len(ids)))


def test_no_mask_prompt_scores_every_token_and_keeps_the_parts(chatml):
    example = encode_messages(chatml, CONVERSATION, Layout(mask_prompt=False))
    assert scored(example) == list(range(1, len(example)))
    assert {"system", "user", "assistant", "eot", "template"} <= set(example.segments)


def test_no_eos_masks_the_end_of_turn_token(chatml):
    with_eot = encode_chat(chatml, "Hi", "Hello.", Layout(chat=True))
    without = encode_chat(chatml, "Hi", "Hello.", Layout(chat=True, add_eos=False))
    assert scored(without) == scored(with_eot)[:-1]
    assert without.segments[scored(with_eot)[-1]] == "eot"


def test_generation_mask_is_used_and_cross_checked():
    agreeing = GENERATION.replace("MORE", "''").replace("AFTER", "'\n'")
    tok = byte_tokenizer(add_bos=False, chat_template=agreeing)
    example = encode_messages(tok, CONVERSATION, Layout())
    assert example.layout["template_mask"] == {"used": True, "agrees": True, "only_template": [], "only_prefix": []}
    reference = encode_messages(byte_tokenizer(add_bos=False), CONVERSATION, Layout())
    assert example.labels == reference.labels

    # A template that also marks the newline after <|im_end|>: its mask is what training uses.
    wider = GENERATION.replace("MORE", "'\n'").replace("AFTER", "''")
    tok = byte_tokenizer(add_bos=False, chat_template=wider)
    example = encode_messages(tok, CONVERSATION, Layout())
    report = example.layout["template_mask"]
    assert report["used"] and not report["agrees"] and report["only_prefix"] == []
    newlines = [i + 1 for i in scored(reference) if reference.segments[i] == "eot"]
    assert report["only_template"] == newlines
    assert scored(example) == sorted(scored(reference) + newlines)
    assert any("{% generation %} mask" in note for note in example.notes)


def test_template_that_is_not_prefix_consistent_fails_clearly():
    # The generation prompt says "assistant", the rendered turn says "bot".
    broken = CHATML.replace(
        "{{ '<|im_start|>' + message['role'] + '\n'",
        "{{ '<|im_start|>' + ('bot' if message['role'] == 'assistant' else message['role']) + '\n'",
    )
    tok = byte_tokenizer(add_bos=False, chat_template=broken)
    with pytest.raises(InputError, match="not prefix-consistent.*not a prefix of the full rendering"):
        encode(tok, "Hi", "Hello.", Layout(chat=True))


def test_answer_merging_with_the_generation_prompt_fails_clearly(chatml):
    # "assistant\n" + "\n the": the byte-level BPE merges the two newlines into one token across the boundary.
    with pytest.raises(InputError, match="token level.*merges"):
        encode(chatml, "Hi", "\n the cat", Layout(chat=True))


def test_no_chat_template_fails_clearly():
    tok = byte_tokenizer(add_bos=False, chat_template=None)
    with pytest.raises(InputError, match="no chat template"):
        encode(tok, "Hi", "Hello.", Layout(chat=True))
    with pytest.raises(InputError, match="no chat template"):
        encode_messages(tok, CONVERSATION, Layout())


def test_template_error_is_an_input_error():
    strict = "{{ raise_exception('Conversation roles must alternate') }}"
    tok = byte_tokenizer(add_bos=False, chat_template=strict)
    with pytest.raises(InputError, match="chat template failed.*roles must alternate"):
        encode(tok, "Hi", "Hello.", Layout(chat=True))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "non-empty JSON list"),
        ({"role": "user"}, "non-empty JSON list"),
        (["hi"], "message 0 is not an object"),
        ([{"content": "hi"}], 'message 0 has no "role"'),
        ([{"role": "user", "content": 3}], 'no "content" string'),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "not text"),
    ],
)
def test_parse_messages_rejects_malformed_conversations(data, match):
    with pytest.raises(InputError, match=match):
        parse_messages(data, "chat.json")


def test_parse_messages_accepts_hf_records_and_text_parts():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    assert parse_messages(record) == [{"role": "user", "content": "ab"}]


def test_conversation_errors(chatml):
    with pytest.raises(InputError, match="no assistant message"):
        encode_messages(chatml, [{"role": "user", "content": "Hi"}], Layout())
    with pytest.raises(InputError, match="opens with an assistant message"):
        encode_messages(chatml, [{"role": "assistant", "content": "Hi"}], Layout())
    with pytest.raises(InputError, match="already starts with a system message"):
        encode_messages(chatml, CONVERSATION, Layout(chat=True, system="x"))
    with pytest.raises(InputError, match="`last_turn`"):
        encode_messages(chatml, CONVERSATION, Layout(mask_prompt=False), last_turn=True)
    with pytest.raises(InputError, match="`sep`"):
        encode_messages(chatml, CONVERSATION, Layout(sep="\n"))


def test_conversation_longer_than_the_context_fails(chatml):
    from ce_inspect.errors import SequenceTooLongError

    with pytest.raises(SequenceTooLongError, match="context is 20"):
        encode_messages(chatml, CONVERSATION, Layout(), max_length=20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chat": True, "sep": "\n"}, "`sep`"),
        ({"chat": True, "tokenization": "joint"}, "`tokenization` joint"),
        ({"chat": True, "truncate_prompt": True}, "`truncate_prompt`"),
        ({"system": "x"}, "`system` needs `chat`"),
        ({"tokenization": "merged"}, "use separate, joint or trl"),
    ],
)
def test_layout_rejects_conflicting_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        Layout(**kwargs)


def test_markup_like_content_is_kept_verbatim(chatml):
    messages = [{"role": "user", "content": "[bold]x[/bold]"}, {"role": "assistant", "content": "[/red] ok"}]
    example = encode_messages(chatml, messages, Layout())
    texts = decode_tokens(chatml, [example.input_ids[i] for i in scored(example)])
    assert "".join(texts) == "[/red] ok<|im_end|>"
