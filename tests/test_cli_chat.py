"""`ce-inspect run` with --chat, --messages, --last-turn, --system, --tokenization, --top-k, --no-mask-prompt."""

from __future__ import annotations

import json

import pytest
from conftest import build_model, write_json
from typer.testing import CliRunner

from ce_inspect.cli import main
from ce_inspect.cli.app import app

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And the [bold]cat[/bold]?"},
    {"role": "assistant", "content": "The cat is in."},
]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def run_json(runner, *args: str) -> dict:
    result = runner.invoke(app, ["run", *args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_human(runner, *args: str) -> str:
    result = runner.invoke(app, ["run", *args, "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return write_json(tmp_path_factory.mktemp("chat") / "chat.json", CONVERSATION)


def test_chat_json(runner, tiny_llama_dir):
    d = run_json(runner, "-m", str(tiny_llama_dir), "--chat", "-p", "Hi", "-a", "the cat", "--top-k", "5")
    assert d["layout"]["kind"] == "chat"
    assert d["layout"]["default_system_prompt"] == "You are tiny."
    assert [t["segment"] for t in d["tokens"]][-1] == "eot"
    assert "".join(t["token"] for t in d["tokens"]) == "the cat<|im_end|>"
    assert all(len(t["top_k"]) == 5 for t in d["tokens"])
    assert d["turns"][0]["turn"] == 1 and d["turns"][0]["count"] == len(d["tokens"])
    assert any("default system prompt" in n for n in d["notes"])


def test_messages_json_scores_every_assistant_turn(runner, tiny_llama_dir, chat_file):
    d = run_json(runner, "-m", str(tiny_llama_dir), "--messages", str(chat_file), "--verify")
    assert [t["turn"] for t in d["turns"]] == [2, 4]
    assert {t["segment"] for t in d["tokens"]} == {"assistant", "eot"}
    assert not any(s["scored"] for s in d["sequence"] if s["segment"] in ("system", "user"))
    assert d["summary"]["verify_abs_diff"] < 1e-5

    last = run_json(runner, "-m", str(tiny_llama_dir), "--messages", str(chat_file), "--last-turn")
    assert [t["turn"] for t in last["turns"]] == [4]
    assert last["tokens"] == [t for t in d["tokens"] if t["turn"] == 4]


def test_messages_from_stdin(runner, tiny_llama_dir):
    result = runner.invoke(
        app,
        ["run", "-m", str(tiny_llama_dir), "--messages", "-", "--json", "--device", "cpu"],
        input=json.dumps({"messages": CONVERSATION}),
    )
    assert result.exit_code == 0, result.output
    assert [t["turn"] for t in json.loads(result.stdout)["turns"]] == [2, 4]


def test_human_chat_output_groups_by_turn(runner, tiny_llama_dir, chat_file):
    out = run_human(runner, "-m", str(tiny_llama_dir), "--messages", str(chat_file), "--top-k", "5")
    assert "top 5" in out
    assert "Per turn" in out and "2 assistant" in out and "4 assistant" in out
    # The heat strip starts each message on its own line, labelled, with the text shown verbatim.
    assert "3 user ▸ <|im_start|>user↵" in out
    assert "And␣the␣[bold]cat[/bold]?" in out


def test_human_shows_the_boundary_difference(runner, tiny_llama_dir):
    out = run_human(runner, "-m", str(tiny_llama_dir), "-p", "x\n\n", "-a", "y")
    assert "tokenization boundary: separate and joint differ" in out
    assert "scores depend on this choice" in out
    d = run_json(runner, "-m", str(tiny_llama_dir), "-p", "x\n\n", "-a", "y", "--tokenization", "joint")
    assert d["layout"]["tokenization"] == "joint" and d["layout"]["boundary"]["differs"]
    assert [t["token"] for t in d["tokens"]] == ["\n", "\n", "y", "</s>"]
    clean = run_human(runner, "-m", str(tiny_llama_dir), "-p", "Hi", "-a", " there")
    assert "tokenization boundary" not in clean


def test_no_mask_prompt_shows_the_parts(runner, tiny_llama_dir):
    out = run_human(runner, "-m", str(tiny_llama_dir), "-p", "the cat", "-a", " is in", "--no-mask-prompt")
    assert "┃" in out and "context tokens scored too" in out
    assert "part" in out and "prompt" in out and "answer" in out
    d = run_json(runner, "-m", str(tiny_llama_dir), "-p", "the cat", "-a", " is in", "--no-mask-prompt")
    assert {t["segment"] for t in d["tokens"]} == {"prompt", "answer", "eos"}
    assert d["summary"]["count"] == len(d["sequence"]) - 1  # every token after BOS


def test_system_option(runner, tiny_llama_dir):
    d = run_json(runner, "-m", str(tiny_llama_dir), "--chat", "--system", "Be brief.", "-p", "Hi", "-a", "Yo")
    assert d["layout"]["system"] == "Be brief." and d["layout"]["default_system_prompt"] is None
    assert "".join(s["token"] for s in d["sequence"] if s["segment"] == "system") == "Be brief."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--last-turn", "-p", "a", "-a", "b"], "--last-turn needs --messages"),
        (["--system", "x", "-p", "a", "-a", "b"], "--system needs --chat"),
        (["--chat", "--sep", ":", "-p", "a", "-a", "b"], "--sep does not apply"),
        (["--chat", "--tokenization", "joint", "-p", "a", "-a", "b"], "--tokenization joint applies"),
        (["--tokenization", "both", "-p", "a", "-a", "b"], "use separate, joint, trl"),
        (["--messages", "CHAT", "-p", "a"], "drop --prompt"),
    ],
)
def test_usage_errors_exit_2(runner, tiny_llama_dir, chat_file, args, message, capsys):
    args = [str(chat_file) if a == "CHAT" else a for a in args]
    code = main(["run", "-m", str(tiny_llama_dir), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("Error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "--messages PATH: not valid JSON (Expecting property name"),
        ('[{"content": "hi"}]', '--messages PATH: message 0 has no "role"'),
        ('[{"role": "user", "content": "hi"}]', "the conversation has no assistant message"),
    ],
)
def test_bad_messages_file_exit_1(tmp_path, tiny_llama_dir, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code = main(["run", "-m", str(tiny_llama_dir), "--messages", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("Error: " + message.replace("PATH", str(path)))
    assert len(captured.err.strip().splitlines()) == 1


def test_missing_messages_file(tmp_path, tiny_llama_dir, capsys):
    code = main(["run", "-m", str(tiny_llama_dir), "--messages", str(tmp_path / "nope.json")])
    assert code == 1 and "no such file" in capsys.readouterr().err


def test_model_without_chat_template(tmp_path, capsys):
    folder = build_model(tmp_path / "plain", "gpt2", add_bos=False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    code = main(["run", "-m", str(folder), "--chat", "-p", "a", "-a", "b", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "no chat template" in captured.err


def test_chat_sample_file_is_valid(tiny_llama_dir, runner):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "samples" / "chat.json"
    d = run_json(runner, "-m", str(tiny_llama_dir), "--messages", str(sample))
    messages = json.loads(sample.read_text())
    assert len(messages) >= 5
    assert [t["turn"] for t in d["turns"]] == [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert {t["segment"] for t in d["tokens"]} == {"assistant", "eot"}
