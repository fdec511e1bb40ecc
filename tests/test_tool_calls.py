"""Tool-call conversations (issue 20): assistant turns that carry ``tool_calls`` and no content, ``tool`` messages,
a record's ``tools``: rendered by the chat template and scored as TRL's SFT preparation scores them.

The test template is Qwen2.5's layout (the one TRL ships in ``trl/chat_templates/qwen2_5.jinja``), shortened: the
tools in the system block, each call as ``<tool_call>`` JSON after the assistant's content, tool results in a user
turn. ``tagged`` adds TRL's ``{% generation %}`` markers (as ``qwen2_5_training.jinja`` does).
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import byte_tokenizer

from ce_inspect.cli import main
from ce_inspect.data import parse_record, read_records
from ce_inspect.errors import InputError
from ce_inspect.text import EOT, Layout, encode_messages, parse_messages, parse_tools, scored_turns


def tool_template(tagged: bool = False) -> str:
    opened, closed = ("{%- generation %}", "{%- endgeneration %}") if tagged else ("", "")
    return (
        "{%- if tools %}{{- '<|im_start|>system\\n' }}"
        "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- 'You are tiny.' }}{%- endif %}"
        "{{- '\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
        "{{- '\\n</tools><|im_end|>\\n' }}"
        "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\nYou are tiny.<|im_end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
        + opened
        + "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
        "{%- for call in message.tool_calls or [] %}"
        "{%- if call.function is defined %}{%- set call = call.function %}{%- endif %}"
        '{{- \'\\n<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' + (call.arguments | tojson) + \'}\\n'
        "</tool_call>' }}{%- endfor %}"
        "{{- '<|im_end|>' }}" + closed + "{{- '\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def conversation(city: str = "Paris", content=None) -> list[dict]:
    return [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": content, "tool_calls": [call(city)]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
        {"role": "assistant", "content": f"It is 21 degrees in {city}."},
    ]


ROWS = [
    {"messages": conversation("Paris"), "tools": TOOLS},
    {"messages": conversation("Rome", content="Let me look."), "tools": TOOLS},
]


# --- validation: one validator per concept -------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, ""])
def test_an_assistant_message_with_tool_calls_needs_no_content(content):
    msgs = parse_messages(conversation(content=content))
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [call("Paris")]}
    assert msgs[2] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"}
    assert scored_turns(msgs) == [1, 3]
    missing = conversation()
    del missing[1]["content"]
    assert parse_messages(missing)[1]["content"] == ""


@pytest.mark.parametrize(
    "message, error",
    [
        ({"role": "tool"}, r'message 1 \(tool\) has no "content" string \(a tool message carries the tool\'s result\)'),
        ({"role": "user", "content": "x", "tool_calls": [call("a")]}, "only an assistant message calls tools"),
        ({"role": "assistant", "content": None, "tool_calls": []}, '"tool_calls" must be a non-empty list'),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"function": {}}]},
            'tool call 0 has no function "name"',
        ),
        ({"role": "assistant", "tool_calls": [{"name": "f", "arguments": 3}]}, "neither an object nor JSON text"),
        ({"role": "assistant", "content": None}, r'message 1 \(assistant\) has no "content" string'),
    ],
)
def test_bad_tool_messages_are_one_line_naming_the_message(message, error):
    with pytest.raises(InputError, match=error):
        parse_messages([{"role": "user", "content": "hi"}, message])


def test_an_assistant_message_without_tool_calls_still_needs_its_answer():
    with pytest.raises(InputError, match="assistant message 1 is empty"):
        scored_turns(parse_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]))


def test_tools_are_a_list_of_objects_or_its_json_text():
    assert parse_tools(None) is None and parse_tools(TOOLS) == TOOLS and parse_tools(json.dumps(TOOLS)) == TOOLS
    with pytest.raises(InputError, match="field 'tools' is a string but not JSON"):
        parse_tools("[{")
    with pytest.raises(InputError, match="must be a list of tool objects"):
        parse_tools({"name": "f"})
    record = parse_record(1, {"messages": conversation(), "tools": json.dumps(TOOLS)})
    assert record.error is None and record.format == "messages" and record.tools == TOOLS


# --- encoding: the template renders the calls, the turn is scored up to its end ----------------------------


def scored_text(tok, encoded, turn: int) -> str:
    ids = [encoded.input_ids[j] for j in encoded.scored_positions if encoded.turns[j] == turn]
    return tok.decode(ids)


def test_a_tool_call_turn_is_scored_as_the_template_renders_its_calls():
    tok = byte_tokenizer(chat_template=tool_template())
    enc = encode_messages(tok, conversation(), Layout(chat=True), tools=TOOLS)
    text = tok.decode(list(enc.input_ids))
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # the tools, in the system block
    call_text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert scored_text(tok, enc, 1) == call_text
    assert scored_text(tok, enc, 2) == ""  # the tool's result is input, not trained
    assert scored_text(tok, enc, 3) == "It is 21 degrees in Paris.<|im_end|>"
    in_turn = [enc.segments[j] for j in enc.scored_positions if enc.turns[j] == 1]
    assert in_turn == ["assistant"] * (len(in_turn) - 1) + [EOT]
    assert enc.layout["scored_turns"] == [1, 3]
    assert any("1 tool(s) are given to the chat template" in n for n in enc.notes)
    assert any("assistant message(s) 1 call tools" in n for n in enc.notes)
    with_content = encode_messages(tok, conversation(content="Let me look."), Layout(chat=True), tools=TOOLS)
    assert scored_text(tok, with_content, 1) == "Let me look.\n" + call_text


def test_a_template_that_drops_tool_calls_is_refused():
    """ChatML without tool support (conftest's, SmolLM2's) renders only the content: the turn would be empty."""
    tok = byte_tokenizer()
    with pytest.raises(InputError, match="assistant message 1 calls tools, but this chat template does not render"):
        encode_messages(tok, conversation(content=""), Layout(chat=True))


# --- TRL's own preparation --------------------------------------------------------------------------------


@pytest.fixture
def tool_model_dir(tiny_llama_dir, tmp_path):
    """The tiny Llama with a tokenizer whose chat template renders tool calls."""
    folder = tmp_path / "tool-model"
    shutil.copytree(tiny_llama_dir, folder)
    tok = byte_tokenizer(chat_template=tool_template())
    tok.save_pretrained(folder)
    return folder


def trl_labels(tok, rows, tmp_path, assistant_only_loss: bool) -> list[dict]:
    pytest.importorskip("trl", reason="TRL is a test-only extra: pip install 'ce-inspect[trl]'")
    pytest.importorskip("datasets", reason="TRL's data preparation needs datasets")
    import logging

    from conftest import build_model
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(build_model(tmp_path / "trl-model"))
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        max_length=None,
        bf16=False,
        use_cpu=True,
        dataset_num_proc=None,
        assistant_only_loss=assistant_only_loss,
    )
    logging.getLogger("trl").setLevel(logging.ERROR)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer.train_dataset]


def ours(tok, rows, tmp_path, layout: Layout) -> list[dict]:
    from ce_inspect.data import encode_record
    from ce_inspect.model import LoadedModel

    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lm = LoadedModel(
        model=None, tokenizer=tok, name="tool", source="memory", device="cpu", dtype="float32", context_length=4096
    )
    out = []
    for record in read_records(path):
        enc = encode_record(lm, record, layout)
        out.append({"input_ids": list(enc.input_ids), "labels": list(enc.labels)})
    return out


@pytest.mark.parametrize("assistant_only_loss", [True, False], ids=["assistant-only-loss", "every-token"])
def test_tool_conversations_are_trls_ids_and_labels(assistant_only_loss, tmp_path):
    """TRL's SFTTrainer (tokenize_fn with the record's `tools`, then build_labels) against ce-inspect: with
    `assistant_only_loss` the template's generation mask (the chat layout uses it too), without it every token
    (`--tokenization trl`)."""
    tok = byte_tokenizer(chat_template=tool_template(tagged=assistant_only_loss))
    expected = trl_labels(tok, ROWS, tmp_path, assistant_only_loss)
    layout = Layout(chat=True) if assistant_only_loss else Layout(tokenization="trl")
    got = ours(tok, ROWS, tmp_path, layout)
    for row, a, b in zip(ROWS, got, expected, strict=True):
        assert a["input_ids"] == b["input_ids"], row
        assert a["labels"][1:] == b["labels"][1:], row  # nothing predicts position 0
    trained = tok.decode([t for t in expected[0]["labels"] if t != -100])
    assert "<tool_call>" in trained and ("tool_response" in trained) is not assistant_only_loss


# --- the command line --------------------------------------------------------------------------------------


def test_batch_scores_a_tool_call_conversation_it_used_to_refuse(capsys, tool_model_dir, tmp_path):
    short = [
        {"role": "user", "content": "Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"c": "Rome"}}}]},
        {"role": "tool", "content": "21"},
        {"role": "assistant", "content": "21."},
    ]
    rows = [{"messages": short}, {"messages": short, "tools": [{"name": "f"}]}]
    data = tmp_path / "tools.jsonl"  # short: the tiny model's context is 256 tokens
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(data), "-m", str(tool_model_dir), "-o", str(out)]) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(line["layout"]["scored_turns"] == [1, 3] for line in lines)
    texts = ["".join(t["token"] for t in line["tokens"]) for line in lines]
    assert all('"name": "f"' in text and "tool_response" not in text for text in texts), texts


def test_run_messages_scores_tool_calls_and_refuses_tools_it_cannot_pass(capsys, tool_model_dir, tmp_path):
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps(conversation("Rome")), encoding="utf-8")
    assert main(["run", "--messages", str(conv), "-m", str(tool_model_dir), "--json"]) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    assert doc["layout"]["scored_turns"] == [1, 3]
    with_tools = tmp_path / "tools.json"
    with_tools.write_text(json.dumps({"messages": conversation("Rome"), "tools": TOOLS}), encoding="utf-8")
    assert main(["run", "--messages", str(with_tools), "-m", str(tool_model_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "has 'tools', which --messages does not give the chat template" in err
