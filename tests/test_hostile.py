"""Hostile inputs: each row is an input a careless or hostile user gives, the exit code it must get and
the words its one-line error must contain. The table grows with every defect found; a row never goes.

Rows run in-process through ``ce_inspect.cli.main`` (fast), or in a real process (``process=True``)
where the defect was a process behaviour (stdin, signals, special files). In argument lists and file
contents, ``{llama}`` and ``{gpt2}`` are the tiny test models' folders and ``{tmp}`` the test's folder.
Files named in ``files`` are written under ``{tmp}`` before the run (``str`` as UTF-8, ``bytes`` as is).

Behaviours that a table row cannot express (a file's bytes after the run, a lock held by a second
process, figures against an independent computation) are tests of their own, below the table,
named after the item of the issue they hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ce_inspect.cli import main

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]
    code: int
    message: str  # must appear in stderr's "Error: ..." line ("" for a successful run)
    files: dict[str, str | bytes] = field(default_factory=dict)
    stdin: bytes | None = None  # None: no stdin redirection (in-process) / closed stdin is ``process`` + b""
    process: bool = False


# --- models and the cache (loading) ----------------------------------------------------------------------
LOADING_CASES: list[Case] = []

# --- input files, output files and resume ---------------------------------------------------------------
FILE_CASES: list[Case] = []

# --- text: Unicode, special tokens, options that change what is scored ----------------------------------
TEXT_CASES: list[Case] = []

# --- batch data sets and their formats -------------------------------------------------------------------
DATA_CASES: list[Case] = [
    Case(
        "record with no known format",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "d.jsonl line 1: no known format (fields: 'question', 'reply')",
        files={"d.jsonl": '{"question": "q", "reply": "r"}\n'},
    ),
    Case(
        "token id outside the vocabulary",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "d.jsonl line 1: 'input_ids' item 1 is 99999, outside the model's vocabulary",
        files={"d.jsonl": '{"input_ids": [1, 99999], "labels": [-100, 5]}\n'},
    ),
    Case(
        "label outside the vocabulary and not the ignore index",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "'labels' item 1 is -1: neither a token id",
        files={"d.jsonl": '{"input_ids": [1, 5], "labels": [-100, -1]}\n'},
    ),
    Case(
        "labels and ids of different lengths",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "d.jsonl line 2: field 'labels' has 1 items but 'input_ids' has 2",
        files={"d.jsonl": '{"input_ids": [1, 5], "labels": [-100, 5]}\n{"input_ids": [1, 5], "labels": [5]}\n'},
    ),
    Case(
        "mask that is not 0 or 1",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "field 'completion_mask': item 1 is 2, not 0 or 1",
        files={"d.jsonl": '{"input_ids": [1, 5], "completion_mask": [0, 2]}\n'},
    ),
    Case(
        "padded pre-tokenized record",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "the record is padded",
        files={"d.jsonl": '{"input_ids": [1, 5, 0], "labels": [-100, 5, 0], "attention_mask": [1, 1, 0]}\n'},
    ),
    Case(
        "pre-tokenized record longer than the context",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "the record is 300 tokens but the model's context is 256",
        files={"d.jsonl": '{"input_ids": [' + ", ".join(["5"] * 300) + "]}\n"},
    ),
    Case(
        "Parquet file without the datasets extra",
        ["batch", "d.parquet", "-m", "{llama}"],
        1,
        "reading Parquet (d.parquet) needs the datasets library: pip install 'ce-inspect[datasets]'",
        # A package that fails to import, first on the path of `python -m` (the working folder).
        files={"datasets/__init__.py": "raise ImportError('hidden by the test')\n", "d.parquet": b"PAR1"},
        process=True,
    ),
    Case(
        "JSON array cut in the middle",
        ["batch", "{tmp}/d.json", "-m", "{llama}"],
        1,
        "d.json record 2: not valid JSON",
        files={"d.json": '[{"prompt": "p", "answer": "a"}, {"prompt": "p", "answer": '},
    ),
    Case(
        "JSON that is not an array of records",
        ["batch", "{tmp}/d.json", "-m", "{llama}"],
        1,
        "d.json record 1: not a JSON object but a JSON number",
        files={"d.json": "[1, 2]"},
    ),
    Case(
        "--split on a single file",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}", "--split", "train"],
        1,
        "is a single file; --split applies to saved and Hub datasets",
        files={"d.jsonl": '{"prompt": "p", "answer": "a"}\n'},
    ),
    Case(
        "unknown --format",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}", "--format", "csv"],
        2,
        "use one of tokenized, conversations, messages, prompt-completion, prompt-answer, text",
        files={"d.jsonl": '{"prompt": "p", "answer": "a"}\n'},
    ),
    Case(
        "--format that the records do not have",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}", "--format", "messages"],
        1,
        "d.jsonl line 1: has both 'messages' and 'prompt'/'answer'; keep one",
        files={"d.jsonl": '{"prompt": "p", "answer": "a"}\n'},
    ),
    Case(
        "empty text record",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "d.jsonl line 1: field 'text' is empty",
        files={"d.jsonl": '{"text": ""}\n'},
    ),
    Case(
        "conversational completion of two messages without trl",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "is scored only with --tokenization trl",
        files={
            "d.jsonl": '{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", '
            '"content": "a"}, {"role": "user", "content": "b"}]}\n'
        },
    ),
    Case(
        "--tokenization trl with --sep",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}", "--tokenization", "trl", "--sep", "|"],
        2,
        "--tokenization trl reproduces TRL, which has no --sep",
        files={"d.jsonl": '{"prompt": "p", "answer": "a"}\n'},
    ),
    Case(
        "ShareGPT message without a value",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        'message 1 (assistant) has no "content" string',
        files={"d.jsonl": '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}\n'},
    ),
    Case(
        "Hub dataset that is not in the local cache",
        ["batch", "nobody/no-such-dataset", "-m", "{llama}"],
        1,
        "nobody/no-such-dataset: no such file, and not a Hub dataset in the local cache",
    ),
    # audit (issue 11, parts 2-3): bad data is named by its line, or skipped with --skip-invalid.
    Case(
        "audit: a record in no known format",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model"],
        1,
        "d.jsonl line 2 (id 'x'): no known format",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n{"id": "x", "question": "q"}\n'},
    ),
    Case(
        "audit: ids outside the vocabulary",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model"],
        1,
        "line 1: 'input_ids' item 1 is 70000, outside",
        files={"d.jsonl": '{"input_ids": [1, 70000, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: labels and ids of different lengths",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model"],
        1,
        "field 'labels' has 2 items but 'input_ids' has 3",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70]}\n'},
    ),
    Case(
        "audit: --skip-invalid skips and lists the bad record",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--skip-invalid"],
        0,
        "",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n{"labels": [1]}\n'},
    ),
    Case(
        "audit: unknown --fail-on check",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--fail-on", "eot,bos"],
        2,
        "unknown check 'eot'",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: --tokenizer without --no-model",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--tokenizer", "{llama}"],
        2,
        "--tokenizer applies with --no-model",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: --output is the input",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "-o", "{tmp}/d.jsonl"],
        1,
        "is the input file",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: an empty data set",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model"],
        1,
        "holds no records",
        files={"d.jsonl": "\n"},
    ),
    Case(
        "audit: --max-length 0",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--max-length", "0"],
        2,
        "--max-length",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
]

# --- diff, reports and other commands --------------------------------------------------------------------
COMMAND_CASES: list[Case] = []

CASES = LOADING_CASES + FILE_CASES + TEXT_CASES + DATA_CASES + COMMAND_CASES


def _fill(text: str, paths: dict[str, str]) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_case(case: Case, tmp_path: Path, paths: dict[str, str], capsys) -> tuple[int, str, str]:
    """Run one row; returns (exit code, stdout, stderr)."""
    paths = {**paths, "tmp": str(tmp_path)}
    for name, content in case.files.items():
        target = tmp_path / _fill(name, paths)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(_fill(content, paths), encoding="utf-8")
    args = [_fill(a, paths) for a in case.args]
    if case.process:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "ce_inspect", *args],
            cwd=tmp_path,
            env=env,
            input=case.stdin,
            stdin=None if case.stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=180,
        )
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(args)
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, tmp_path, tiny_llama_dir, tiny_gpt2_dir, capsys):
    code, out, err = run_case(case, tmp_path, {"llama": str(tiny_llama_dir), "gpt2": str(tiny_gpt2_dir)}, capsys)
    assert "Traceback" not in err, err
    assert code == case.code, (code, err)
    if case.code != 0:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, err  # one line, not a cascade
        assert case.message in errors[0], errors[0]
        assert out == "", out  # on failure stdout stays empty
