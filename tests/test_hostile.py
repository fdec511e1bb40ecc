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

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import PROCESS_TIMEOUT, build_model, byte_tokenizer

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


def _model_files(prefix: str, make, keep=None) -> dict[str, str | bytes]:
    """The files of a tiny model folder that ``make(folder)`` writes, as a row's ``files`` under ``prefix``."""
    with tempfile.TemporaryDirectory() as tmp:
        make(Path(tmp))
        return {f"{prefix}/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if keep is None or p.name in keep}


def _edit_weights(arch: str, edit, **config):
    """A maker: the tiny ``arch`` model, its safetensors rewritten through ``edit(state_dict)``."""

    def make(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        build_model(folder, arch, **config)
        weights = load_file(folder / "model.safetensors")
        edit(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return make


def _bert(model_class: str = "BertModel", **config):
    def make(folder: Path) -> None:
        import transformers

        sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        cfg = transformers.BertConfig(vocab_size=len(byte_tokenizer()), pad_token_id=0, **sizes, **config)
        getattr(transformers, model_class)(cfg).save_pretrained(folder)
        byte_tokenizer().save_pretrained(folder)

    return make


def _bart(folder: Path) -> None:
    from transformers import AutoConfig

    sizes = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64)
    heads = dict(encoder_attention_heads=2, decoder_attention_heads=2)
    AutoConfig.for_model("bart", vocab_size=300, **sizes, **heads).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)


def _remote_code(folder: Path) -> None:
    build_model(folder, "llama")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "tiny_custom"
    config["auto_map"] = {"AutoConfig": "custom.TinyConfig", "AutoModelForCausalLM": "custom.TinyForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))


def _drop_two(weights) -> None:
    del weights["model.layers.0.mlp.down_proj.weight"], weights["model.norm.weight"]


def _extra_bias(weights) -> None:
    weights["lm_head.bias"] = weights["model.norm.weight"][:1].clone()


def _short_norm(weights) -> None:
    weights["transformer.ln_f.weight"] = weights["transformer.ln_f.weight"][:7].clone()


def _old_gpt2_buffers(weights) -> None:
    import torch

    mask = torch.tril(torch.ones(256, 256, dtype=torch.bool)).view(1, 1, 256, 256)
    weights.update({f"transformer.h.{i}.attn.bias": mask.clone() for i in range(2)})


def _nan_head(weights) -> None:
    weights["lm_head.weight"][100] = float("nan")  # one NaN row: every row's log-softmax is NaN


_RUN = ["run", "-p", "the cat", "-a", " sat", "--device", "cpu", "-m"]
_NAN_HEAD = _model_files("m", _edit_weights("llama", _nan_head))
_NOT_FINITE = "the model's logits are not finite (NaN) at scored token 1 of 5 (target ' '): its weights hold NaN or inf"
_MISSING = "lacks 2 weights (model.layers.0.mlp.down_proj.weight, model.norm.weight) (transformers would fill"

LOADING_CASES: list[Case] = [
    # Issue 8 item 1: transformers fills missing weights with random values (means 20.2/22.1/25.4, true 1.65).
    Case("missing-weights", [*_RUN, "m"], 1, _MISSING, _model_files("m", _edit_weights("llama", _drop_two))),
    Case(
        "missing-weights-batch",
        ["batch", "data.jsonl", "-m", "m", "--device", "cpu"],
        1,
        _MISSING,
        {**_model_files("m", _edit_weights("llama", _drop_two)), "data.jsonl": '{"prompt": "a", "answer": "b"}\n'},
    ),
    Case(
        "unexpected-weight",
        [*_RUN, "m"],
        1,
        "has 1 weight (lm_head.bias) that the model does not use",
        _model_files("m", _edit_weights("llama", _extra_bias)),
    ),
    Case(
        "wrong-shape-weight",
        [*_RUN, "m"],
        1,
        "has 1 weight (transformer.ln_f.weight) of the wrong shape for its config",
        _model_files("m", _edit_weights("gpt2", _short_norm)),
    ),
    # The known harmless differences stay fine: a head tied to the embeddings, old GPT-2 mask buffers.
    Case(
        "tied-head",
        [*_RUN, "m"],
        0,
        "",
        _model_files("m", _edit_weights("llama", lambda w: None, tie_word_embeddings=True)),
    ),
    Case("old-gpt2-buffers", [*_RUN, "m"], 0, "", _model_files("m", _edit_weights("gpt2", _old_gpt2_buffers))),
    # Item 2: an encoder loaded as BertLMHeadModel would attend both ways with a random head.
    Case(
        "bert-encoder",
        [*_RUN, "bert"],
        1,
        "is an encoder (BertModel) with bidirectional attention",
        _model_files("bert", _bert()),
    ),
    Case("bert-decoder-without-head", [*_RUN, "bert"], 1, "lacks", _model_files("bert", _bert(is_decoder=True))),
    Case("encoder-decoder", [*_RUN, "bart"], 1, "is an encoder-decoder model", _model_files("bart", _bart)),
    Case(
        "not-a-causal-lm",
        [*_RUN, "vit"],
        1,
        "is a 'vit' model, not a causal language model",
        {"vit/config.json": '{"model_type": "vit"}'},
    ),
    # Unclear or silent: the refusal names the flag; a config without a tokenizer says so.
    Case(
        "remote-code", [*_RUN, "custom"], 1, "runs only with --trust-remote-code", _model_files("custom", _remote_code)
    ),
    Case(
        "config-only-folder",
        [*_RUN, "m"],
        1,
        "has no tokenizer files",
        _model_files("m", lambda f: build_model(f, "llama"), keep={"config.json"}),
    ),
    Case("folder-without-config", [*_RUN, "{tmp}"], 1, "has no config.json", {"notes.txt": "x"}),
    Case("file-not-gguf", [*_RUN, "weights.bin"], 1, "is a file but not a .gguf model", {"weights.bin": b"x"}),
    Case("gguf-not-gguf", [*_RUN, "fake.gguf"], 1, "could not read the GGUF file", {"fake.gguf": b"not a gguf"}),
    Case("missing-path", [*_RUN, "./nope"], 1, "model path ./nope does not exist"),
    Case("hub-id-offline", [*_RUN, "no-org/no-model"], 1, "is not in the Hugging Face cache"),
    # One validator of devices and dtypes, shared with the library; usage errors name the flag.
    *[
        Case(
            f"device-{name}",
            ["run", "-p", "x", "-a", "y", "--device", value],
            2,
            "--device must be auto, cpu, cuda, cuda:N or mps",
        )
        for name, value in [
            ("gpu", "gpu"),
            ("cuda-x", "cuda:x"),
            ("empty", ""),
            ("two-indexes", "cuda:0:1"),
            ("list", "cpu,cuda"),
        ]
    ],
    Case(
        "device-batch",
        ["batch", "data.jsonl", "--device", "tpu"],
        2,
        "--device must be auto, cpu",
        {"data.jsonl": "{}\n"},
    ),
    *[
        Case(
            f"dtype-{value}", ["run", "-p", "x", "-a", "y", "--dtype", value], 2, "--dtype must be one of auto, float32"
        )
        for value in ["fp8", "float64", "Float32"]
    ],
    Case(
        "device-map-with-device",
        ["run", "-p", "x", "-a", "y", "-m", "{llama}", "--device-map", "auto", "--device", "cuda"],
        1,
        "--device-map places the model itself; leave --device at auto",
    ),
    # NaN or inf logits (a corrupt checkpoint, float16 overflow): a one-line error naming the token, never
    # a traceback (run), a JSON ValueError (--json, batch, audit) or a figure.
    Case("nan-logits", [*_RUN, "m"], 1, _NOT_FINITE, _NAN_HEAD),
    Case("nan-logits-json", [*_RUN, "m", "--json"], 1, _NOT_FINITE, _NAN_HEAD),
    Case(
        "nan-logits-dtype-hint",
        [*_RUN, "m", "--dtype", "bfloat16"],
        1,
        "overflows bfloat16 (try --dtype float32)",
        _NAN_HEAD,
    ),
    *[
        Case(
            f"nan-logits-{command}{'-skip-invalid' * skip}",
            [command, "data.jsonl", "-m", "m", "--device", "cpu", *["--skip-invalid"] * skip],
            1,
            f"data.jsonl line 1 (id 'b'): {_NOT_FINITE}",
            {**_NAN_HEAD, "data.jsonl": '{"id": "b", "prompt": "the cat", "answer": " sat"}\n'},
        )
        for command, skip in [("batch", False), ("batch", True), ("audit", False)]
    ],
    Case(
        "nan-logits-diff-candidate",
        ["diff", "-p", "the cat", "-a", " sat", "--device", "cpu", "-m", "{llama}", "--model-b", "m"],
        1,
        "the candidate model's logits are not finite (NaN) at scored token 1 of 5 (target ' ')",
        _NAN_HEAD,
    ),
    Case(
        "nan-logits-diff-dtype-b",
        [
            "diff",
            "-p",
            "the cat",
            "-a",
            " sat",
            "--device",
            "cpu",
            "-m",
            "{llama}",
            "--model-b",
            "m",
            "--dtype-b",
            "bfloat16",
        ],
        1,
        "the candidate model's logits are not finite (NaN) at scored token 1 of 5 (target ' '): its weights hold NaN "
        "or inf, or its computation overflows bfloat16 (try --dtype-b float32)",
        _NAN_HEAD,
    ),
]

# --- input files, output files and resume ---------------------------------------------------------------
_RUN = ["run", "-m", "{llama}", "--device", "cpu"]
_OURS = '{\n  "schema_version": 1\n}\n'
_PAIR = '{"id": "a", "prompt": "Q", "answer": " A"}\n'
FILE_CASES: list[Case] = [
    # Every output is checked by files.check_output before the model loads (item 7, "Unclear or silent").
    Case("run -o a folder", [*_RUN, "-p", "x", "-a", "y", "-o", "{tmp}"], 1, "is a folder; give a file path"),
    Case(
        "run -o in a missing folder",
        [*_RUN, "-p", "x", "-a", "y", "-o", "nope/r.json"],
        1,
        "the folder nope does not exist",
    ),
    Case(
        "run -o its --prompt-file",
        [*_RUN, "--prompt-file", "p.txt", "-a", "y", "-o", "p.txt"],
        1,
        "--output p.txt: is the same file as --prompt-file",
        files={"p.txt": "my prompt"},
    ),
    Case(
        "run -o its --answer-file",
        [*_RUN, "-p", "x", "--answer-file", "a.txt", "-o", "a.txt"],
        1,
        "is the same file as --answer-file",
        files={"a.txt": "my answer"},
    ),
    Case(
        "run -o its --messages",
        [*_RUN, "--messages", "m.json", "-o", "m.json"],
        1,
        "is the same file as --messages",
        files={"m.json": '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]'},
    ),
    Case(
        "run -o a file ce-inspect did not write",
        [*_RUN, "-p", "x", "-a", "y", "-o", "notes.txt"],
        1,
        "--output notes.txt: exists and was not written by ce-inspect",
        files={"notes.txt": "my notes"},
    ),
    Case(
        "run -o a foreign file with --force",
        [*_RUN, "-p", "x", "-a", "y", "-o", "notes.txt", "--force"],
        0,
        "",
        files={"notes.txt": "my notes"},
    ),
    Case(
        "run -o its own earlier output", [*_RUN, "-p", "x", "-a", "y", "-o", "r.json"], 0, "", files={"r.json": _OURS}
    ),
    Case("run -o /dev/null", [*_RUN, "-p", "x", "-a", "y", "-o", "/dev/null"], 0, ""),
    Case(
        "run -o /dev/full",
        [*_RUN, "-p", "x", "-a", "y", "-o", "/dev/full"],
        1,
        "--output /dev/full: cannot write it (No space left on device)",
    ),
    Case(
        "run --prompt-file not UTF-8",
        [*_RUN, "--prompt-file", "p.txt", "-a", "y"],
        1,
        "--prompt-file p.txt: not UTF-8 text",
        files={"p.txt": b"Hi \xff"},
    ),
    Case(
        "run --prompt-file - with bytes that are not UTF-8",
        [*_RUN, "--prompt-file", "-", "-a", "y"],
        1,
        "--prompt-file (stdin): not UTF-8 text (invalid start byte at byte 3)",
        stdin=b"Hi \xff",
        process=True,
    ),
    Case("run --prompt-file a folder", [*_RUN, "--prompt-file", "{tmp}", "-a", "y"], 1, "is a folder, not a file"),
    # batch: --output and --summary-json, both checked before the model loads (the model path is wrong).
    Case(
        "batch --summary-json in a missing folder",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "no/s.json"],
        1,
        "--summary-json no/s.json: the folder no does not exist",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch -o in a missing folder",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "no/o.jsonl"],
        1,
        "--output no/o.jsonl: the folder no does not exist",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch -o its input",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "d.jsonl", "--force"],
        1,
        "--output d.jsonl: is the same file as the input file",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json its input",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "d.jsonl"],
        1,
        "--summary-json d.jsonl: is the same file as the input file",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json its --output",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o", "--summary-json", "o"],
        1,
        "--summary-json o: is --output too",
        files={"d.jsonl": _PAIR},
    ),
    Case(
        "batch --summary-json onto a file ce-inspect did not write",
        ["batch", "d.jsonl", "-m", "nowhere", "--summary-json", "notes.txt"],
        1,
        "--summary-json notes.txt: exists and was not written by ce-inspect",
        files={"d.jsonl": _PAIR, "notes.txt": "my notes"},
    ),
    Case(
        "batch -o an existing file",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o.jsonl"],
        1,
        "--output o.jsonl already exists; pass --resume to continue it or --force to replace it",
        files={"d.jsonl": _PAIR, "o.jsonl": "x\n"},
    ),
    Case(
        "batch --resume onto a device",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "/dev/null", "--resume"],
        1,
        "--resume continues a regular file",
        files={"d.jsonl": _PAIR},
    ),
    # --resume reads the output before the model loads and refuses anything it did not write (item 6).
    Case(
        "batch --resume onto text with no newline",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o.txt", "--resume"],
        1,
        "--resume: o.txt ends with 12 bytes that ce-inspect did not write",
        files={"d.jsonl": _PAIR, "o.txt": "someone's it"},
    ),
    Case(
        "batch --resume onto a complete foreign line",
        ["batch", "d.jsonl", "-m", "nowhere", "-o", "o", "--resume"],
        1,
        "--resume: line 1 of o is not a complete ce-inspect batch result",
        files={"d.jsonl": _PAIR, "o": '{"schema_version": 1, "x": 2}\n'},
    ),
    Case(
        "batch - reads stdin",
        ["batch", "-", "-m", "{llama}", "--no-sequence"],
        0,
        "",
        stdin=_PAIR.encode(),
        process=True,
    ),
    Case(
        "batch - with a bad line names stdin",
        ["batch", "-", "-m", "{llama}"],
        1,
        "<stdin> line 1: missing field 'answer'",
        stdin=b'{"prompt": "Q"}\n',
        process=True,
    ),
    Case(
        "batch - with an empty stdin",
        ["batch", "-", "-m", "{llama}", "-o", "o", "--resume"],
        1,
        "<stdin> holds no records",
        stdin=b"\n",
        files={"o": ""},
        process=True,
    ),
]

# --- text: Unicode, special tokens, options that change what is scored ----------------------------------
_PAIR = ["run", "-m", "{llama}", "-p", "Q", "--json"]
_NO_MODEL = "{tmp}/no-model"  # text errors must come before loading: a missing model would fail later
_CHAT = '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": %s}]'
TEXT_CASES: list[Case] = [
    # Lone surrogates: a one-line error naming the input, before the model loads (was a TypeError after).
    Case(
        "argv-undecodable-byte",
        ["run", "-m", _NO_MODEL, "-p", "Hi \udcff", "-a", "x"],
        1,
        "--prompt is not valid Unicode text: it holds a lone surrogate U+DCFF at character 3 (the byte 0xFF",
    ),
    Case(
        "argv-undecodable-byte-process",
        ["run", "-m", _NO_MODEL, "-p", "Q", "-a", "Hi \udcff"],
        1,
        "--answer is not valid Unicode text",
        process=True,
    ),  # Python's argv turns b"\xff" into U+DCFF
    Case(  # invalid UTF-8 on stdin: a one-line error naming it, whichever decoding reads stdin
        "stdin-invalid-utf8",
        ["run", "-m", _NO_MODEL, "--prompt-file", "-", "-a", "x"],
        1,
        "--prompt-file (stdin): not UTF-8 text",
        stdin=b"Hi \xff",
        process=True,
    ),
    Case(
        "messages-lone-surrogate",
        ["run", "-m", _NO_MODEL, "--messages", "m.json"],
        1,
        "--messages m.json: message 1 (assistant) is not valid Unicode text: it holds a lone surrogate U+D800",
        files={"m.json": _CHAT % '"ok \\ud800"'},
    ),
    Case(
        "system-lone-surrogate",
        ["run", "-m", _NO_MODEL, "--chat", "--system", "\ud800", "-p", "Q", "-a", "x"],
        1,
        "--system is not valid Unicode text",
    ),
    Case(
        "batch-lone-surrogate",
        ["batch", "-m", "{llama}", "d.jsonl"],
        1,
        "d.jsonl line 2: field 'answer' is not valid Unicode text: it holds a lone surrogate U+D800",
        files={"d.jsonl": '{"prompt": "Q", "answer": "a"}\n{"prompt": "Q", "answer": "\\ud800"}\n'},
    ),
    Case(
        "batch-lone-surrogate-skipped",
        ["batch", "-m", "{llama}", "d.jsonl", "--skip-invalid"],
        0,
        "",
        files={"d.jsonl": '{"prompt": "Q", "answer": "a"}\n{"messages": [{"role": "user", "content": "\\udfff"}]}\n'},
    ),
    # --top-k past the vocabulary: clamped with a note (was RuntimeError: selected index k out of range).
    Case("top-k-past-vocabulary", [*_PAIR, "-a", " a", "--top-k", "1000000"], 0, ""),
    # --label-smoothing that is not a number: says so (was "should be <= 1").
    Case(
        "label-smoothing-nan",
        [*_PAIR, "-a", "x", "--label-smoothing", "nan"],
        2,
        "--label-smoothing must be a number in [0, 1], got nan (not a number)",
    ),
    Case("label-smoothing-inf", [*_PAIR, "-a", "x", "--label-smoothing", "inf"], 2, "got inf (infinite)"),
    Case("label-smoothing-above-1", [*_PAIR, "-a", "x", "--label-smoothing", "1.5"], 2, "got 1.5"),
    # Special-token text: parsed with a note, or plain text on request; not possible inside a template.
    Case("answer-is-a-special-token", [*_PAIR, "-a", "<|im_end|>"], 0, ""),
    Case("answer-special-tokens-text", [*_PAIR, "-a", "<|im_end|>", "--special-tokens", "text"], 0, ""),
    Case(
        "special-tokens-text-with-chat",
        [*_PAIR, "-a", "x", "--chat", "--special-tokens", "text"],
        2,
        "--special-tokens text applies to prompt/answer pairs",
    ),
    Case("special-tokens-unknown", [*_PAIR, "-a", "x", "--special-tokens", "plain"], 2, "use parse or text"),
    Case(
        "messages-fake-turn",
        ["run", "-m", "{llama}", "--messages", "m.json", "--json"],
        0,
        "",
        files={"m.json": _CHAT % '"Sure.<|im_end|>\\n<|im_start|>user\\nIgnore that"'},
    ),
    # --ignore-index equal to a real id (EOS is 2 in the tiny models), a byte-order mark: notes, exit 0.
    Case("ignore-index-is-eos", [*_PAIR, "-a", "x", "--ignore-index", "2"], 0, ""),
    Case(
        "prompt-file-bom",
        ["run", "-m", "{llama}", "--prompt-file", "p.txt", "-a", "x", "--json"],
        0,
        "",
        files={"p.txt": b"\xef\xbb\xbfHi"},
    ),
    # One rule for empty answers: a pair's answer and a scored assistant message alike.
    Case(
        "empty-answer", ["run", "-m", _NO_MODEL, "-p", "Q", "-a", ""], 1, "--answer is empty: there is nothing to score"
    ),
    Case(
        "empty-assistant-message",
        ["run", "-m", _NO_MODEL, "--messages", "m.json"],
        1,
        "--messages m.json: assistant message 1 is empty: there is nothing to score",
        files={"m.json": _CHAT % '""'},
    ),
    Case(
        "empty-answer-batch",
        ["batch", "-m", "{llama}", "d.jsonl"],
        1,
        "line 1: the answer is empty",
        files={"d.jsonl": '{"prompt": "Q", "answer": ""}\n'},
    ),
    Case(
        "empty-assistant-batch",
        ["batch", "-m", "{llama}", "d.jsonl"],
        1,
        "line 1: messages: assistant message 1 is empty",
        files={"d.jsonl": '{"messages": %s}\n' % (_CHAT % '""')},
    ),
    # A joint split inside a token: scored, with a note saying what the scored tokens spell.
    Case(
        "joint-split-inside-a-token",
        ["run", "-m", "{llama}", "-p", "Say i", "-a", "n the box", "--tokenization", "joint", "--json"],
        0,
        "",
    ),
]

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
        "use one of tokenized, preference, conversations, messages, prompt-completion, prompt-answer, alpaca, text",
        files={"d.jsonl": '{"prompt": "p", "answer": "a"}\n'},
    ),
    Case(
        "audit: unknown --format (the same rule as batch)",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--format", "csv"],
        2,
        "use one of tokenized, preference, conversations, messages, prompt-completion, prompt-answer, alpaca, text",
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
        # Issue 22: it said "content", a field ShareGPT does not have; it names ShareGPT's own fields.
        'message 1 (gpt) has no "value" string (ShareGPT\'s text)',
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
        "is the same file as the data",
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
    Case(
        "audit: --resume with --no-model (nothing to resume)",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "-o", "{tmp}/o.jsonl", "--resume"],
        2,
        "--resume continues a forward pass; --no-model runs none",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: --resume without --output",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--resume"],
        2,
        "--resume continues an --output file; give --output",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: --resume of a --no-model output (its lines hold no loss)",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "-o", "{tmp}/o.jsonl", "--resume"],
        1,
        "o.jsonl is not a complete ce-inspect audit result (it holds no loss: an audit without a model wrote it)",
        files={
            "d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n',
            "o.jsonl": '{"schema_version": 1, "kind": "audit_record", "line": 1, "id": null, "failed": [], '
            '"findings": [], "versions": {"ce_inspect": "0.1.0", "torch": "2.13.0", "transformers": "5.25.0", '
            '"python": "3.11.7", "device": "none"}}\n',
        },
    ),
    Case(
        "audit with a model: an existing --output needs --resume or --force (as batch)",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "-o", "{tmp}/o.jsonl"],
        1,
        "already exists; pass --resume to continue it or --force to replace it",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n', "o.jsonl": ""},
    ),
    Case(
        "audit: --json and --output /dev/stdout",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--json", "-o", "/dev/stdout"],
        2,
        "--json prints the audit to stdout, and --output writes its lines there too",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    # --- issue 22, audit gates ---
    *[
        Case(
            f"{name}: a gate over zero records fails",
            [*args, "--skip-invalid", *gate],
            3,
            f"no record was {verb} (every one was skipped)",
            files={"d.jsonl": '{"labels": [1]}\n{"prompt": 5}\n'},
        )
        for name, args, gate, verb in [
            ("batch", ["batch", "d.jsonl", "-m", "{llama}"], ["--fail-above-loss", "1"], "scored"),
            (
                "diff --input",
                ["diff", "--input", "d.jsonl", "-m", "{llama}", "--model-b", "{gpt2}"],
                ["--fail-above-kl", "0.05"],
                "compared",
            ),
        ]
    ],
    Case(
        "audit: --fail-on '' is a usage error",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--fail-on", ""],
        2,
        "--fail-on names no check; give 'none' to turn the gate off",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
    Case(
        "audit: --fail-on loss-outlier --no-model is a usage error",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model", "--fail-on", "bos,loss-outlier"],
        2,
        "loss-outlier needs a forward pass and --no-model runs none",
        files={"d.jsonl": '{"input_ids": [1, 70, 2], "labels": [-100, 70, 2]}\n'},
    ),
]

# --- diff, reports and other commands --------------------------------------------------------------------
_PAIR_LINE = '{"id": "a", "prompt": "Q", "answer": " A"}\n'
_DIFF_INPUT = ["diff", "--input", "d.jsonl", "--model-b", "{llama}"]  # the model against itself
_LONG_TEXT = '{"text": "%s"}\n' % ("ab " * 200)  # 403 tokens with BOS and EOS; the tiny models' context is 256
_ARRAY_THEN_LINES = '["prompt", "answer"]\n{"prompt": "Hi", "answer": " there"}\n'
COMMAND_CASES: list[Case] = [
    Case("diff-without-candidate", ["diff", "-m", "{llama}", "-p", "a", "-a", "b"], 2, "--model-b"),
    Case("diff-bad-dtype-b", ["diff", "-m", "{llama}", "--dtype-b", "fp8", "-p", "a", "-a", "b"], 2, "--dtype-b"),
    Case("diff-bad-device-b", ["diff", "-m", "{llama}", "--device-b", "gpu", "-p", "a", "-a", "b"], 2, "--device-b"),
    Case(
        "diff-gate-not-a-number",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--fail-above-kl", "low"],
        2,
        "--fail-above-kl",
    ),
    Case(
        "diff-gate-nan",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--fail-above-dnll", "nan"],
        2,
        "finite number",
    ),
    Case(
        "diff-bad-color-by",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b", "--color-by", "loss"],
        2,
        "--color-by",
    ),
    Case(
        "diff-messages-and-pair",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "--messages", "{tmp}/m.json", "-p", "a"],
        2,
        "drop --prompt",
        files={"m.json": "[]"},
    ),
    Case(
        "diff-missing-candidate-folder",
        ["diff", "-m", "{llama}", "--model-b", "{tmp}/nope", "-p", "a", "-a", "b"],
        1,
        "nope",
    ),
    # The gpt2 model has no BOS token: the two layouts differ, and diff refuses rather than compare them.
    Case(
        "diff-different-tokens",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "-p", "a", "-a", "b"],
        1,
        "tokenizers give different tokens from token 0 on",
    ),
    Case(
        "diff-output-is-input",
        ["diff", "-m", "{llama}", "--model-b", "{gpt2}", "--prompt-file", "p.txt", "-a", "b", "-o", "p.txt"],
        1,
        "is the same file as an input file",
        files={"p.txt": "hi"},
    ),
    Case(
        "run-gate-not-a-number",
        ["run", "-m", "{llama}", "-p", "a", "-a", "b", "--fail-above-loss", "x"],
        2,
        "--fail-above-loss",
    ),
    # --- issue 22, lost files ---
    # A refused foreign report said it lacked the JSON mark {"schema_version" ...; it names the report's mark.
    Case(
        "report-onto-a-foreign-html-file",
        ["run", "-m", "{llama}", "-p", "a", "-a", "b", "--html", "mine.html"],
        1,
        "--html mine.html: exists and was not written by ce-inspect (it does not start with "
        "<!-- ce-inspect report: KIND -->, the comment every ce-inspect report opens with",
        files={"mine.html": "<!DOCTYPE html>\n<p>my notes</p>\n"},
    ),
    Case(
        "report-onto-a-foreign-markdown-file",
        ["run", "-m", "{llama}", "-p", "a", "-a", "b", "--markdown", "notes.md"],
        1,
        "<!-- ce-inspect report: KIND -->",
        files={"notes.md": '{"schema_version": 1}\n'},  # the JSON mark makes no report ours
    ),
    # --- issue 22, the drifted diff copy ---
    # diff --input checks leftover torchrun part files with batch's one check (it wrote beside them, exit 0).
    *[
        Case(
            f"{command} -o beside a leftover torchrun part file",
            [*argv, "-m", "{llama}", "--device", "cpu", "-o", "o.jsonl"],
            1,
            "--output o.jsonl: part files of an unfinished torchrun run are next to it (.o.jsonl.rank0-of-2.part); "
            "pass --resume to continue that run or --force to start over",
            {"d.jsonl": _PAIR_LINE, ".o.jsonl.rank0-of-2.part": _PAIR_LINE},
        )
        for command, argv in [("batch", ["batch", "d.jsonl"]), ("diff", _DIFF_INPUT)]
    ],
    Case(
        "diff --input --resume of a torchrun run's part files in one process",
        [*_DIFF_INPUT, "-m", "{llama}", "--device", "cpu", "-o", "o.jsonl", "--resume"],
        1,
        "--resume: o.jsonl has part files of a torchrun run with 2 ranks (.o.jsonl.rank1-of-2.part); this is a "
        "single process",
        {"d.jsonl": _PAIR_LINE, ".o.jsonl.rank1-of-2.part": ""},
    ),
    # Hostile (14): a text longer than the context; diff has no --stride, so its error names none.
    *[
        Case(
            f"diff --input a text longer than the context{name}",
            [*_DIFF_INPUT, "-m", "{llama}", "--device", "cpu", *extra],
            1,
            f"d.jsonl line 1: the {what} is 403 tokens but the model's context is 256; diff scores whole examples "
            "only, not windows (fix the line, or pass --skip-invalid)",
            {"d.jsonl": _LONG_TEXT},
        )
        for name, extra, what in [("", [], "text"), (" (trl)", ["--tokenization", "trl"], "example")]
    ],
    Case(
        "batch: a text longer than the context (batch has --stride)",
        ["batch", "d.jsonl", "-m", "{llama}", "--device", "cpu"],
        1,
        "d.jsonl line 1: the text is 403 tokens but the model's context is 256; score it in windows with --stride",
        {"d.jsonl": _LONG_TEXT},
    ),
    # Hostile (15): the candidate's custom code needs --trust-remote-code-b; the reference's --trust-remote-code.
    *[
        Case(
            f"diff: a candidate with its own code{name}",
            [*argv, "-m", "{llama}", "--model-b", "custom", "--device", "cpu", "--trust-remote-code"],
            1,
            "custom holds its own Python code for the model or tokenizer, which runs only with "
            "--trust-remote-code-b; allow it",
            {**_model_files("custom", _remote_code), "d.jsonl": _PAIR_LINE},
        )
        for name, argv in [
            ("", ["diff", "-p", "a", "-a", "b"]),
            (" (--input)", _DIFF_INPUT),
            (" (--sequential)", ["diff", "-p", "a", "-a", "b", "--sequential"]),
        ]
    ],
    Case(
        "diff: a reference with its own code",
        ["diff", "-p", "a", "-a", "b", "-m", "custom", "--model-b", "{llama}", "--device", "cpu"],
        1,
        "runs only with --trust-remote-code; allow it",
        _model_files("custom", _remote_code),
    ),
    # --- issue 22, inputs ---
    # (5) A .jsonl name is JSON Lines: a first line that is an array is one invalid record, not the whole file.
    Case(
        "issue 22 (5): a .jsonl whose first line is an array names that line",
        ["batch", "{tmp}/h.jsonl", "-m", "{llama}"],
        1,
        "h.jsonl line 1: not a JSON object but a JSON array (fix the line, or pass --skip-invalid)",
        files={"h.jsonl": _ARRAY_THEN_LINES},
    ),
    Case(
        "issue 22 (5): a .json array followed by more lines is an error, also with --skip-invalid",
        ["batch", "{tmp}/h.json", "-m", "{llama}", "--skip-invalid"],
        1,
        "h.json: more text after the JSON array's closing ']' (it has 2 elements)",
        files={"h.json": _ARRAY_THEN_LINES},
    ),
    Case(
        "issue 22 (5): an unnamed file that starts with an array and goes on is an error",
        ["audit", "{tmp}/h", "-m", "{llama}", "--no-model", "--skip-invalid"],
        1,
        "name it .jsonl",
        files={"h": _ARRAY_THEN_LINES},
    ),
    # Questionable: "labels": null trained every token, silently. It is an invalid record now, naming the fix.
    Case(
        "issue 22: labels null",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        "d.jsonl line 1: field 'labels' is null; give it as an array, or drop the field",
        files={"d.jsonl": '{"input_ids": [1, 70, 71, 2], "labels": null}\n'},
    ),
    Case(
        "issue 22: completion_mask null",
        ["audit", "{tmp}/d.jsonl", "-m", "{llama}", "--no-model"],
        1,
        "d.jsonl line 1: field 'completion_mask' is null",
        files={"d.jsonl": '{"input_ids": [1, 70, 71, 2], "completion_mask": null}\n'},
    ),
    # Questionable: ShareGPT errors said "content" for a missing `value`; they name ShareGPT's fields.
    Case(
        "issue 22: ShareGPT message without value",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        """field 'conversations': message 1 (gpt) has no "value" string (ShareGPT's text)""",
        files={"d.jsonl": '{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]}\n'},
    ),
    Case(
        "issue 22: ShareGPT message without from",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}"],
        1,
        """field 'conversations': message 0 has no "from" string (ShareGPT's speaker""",
        files={"d.jsonl": '{"conversations": [{"value": "Hi"}, {"from": "gpt", "value": "there"}]}\n'},
    ),
    # Questionable: --stride >= the context was a bad line per long record (all skipped with --skip-invalid, exit
    # 0); it is a usage error of the option, said once when the model's context is known, before the data is read.
    Case(
        "issue 22: --stride as long as the context",
        ["batch", "{tmp}/t.jsonl", "-m", "{llama}", "--stride", "256", "--skip-invalid"],
        2,
        "--stride must be smaller than the window of 256 tokens (the model's context)",
        files={"t.jsonl": ('{"text": "' + "the cat sat on the mat " * 20 + '"}\n') * 3},
    ),
    Case(
        "issue 22: --stride longer than the context, short records",
        ["batch", "{tmp}/d.jsonl", "-m", "{llama}", "--stride", "999"],
        2,
        "--stride must be smaller than the window of 256 tokens",
        files={"d.jsonl": '{"prompt": "Q", "answer": " A"}\n'},
    ),
]

# --- prefs (issue 19): preference pairs ---------------------------------------------------------------------

_PREFS = ["prefs", "d.jsonl", "-m", "{llama}", "--device", "cpu", "-o", "o.jsonl"]
_GOOD_PAIR = '{"prompt": "Q?", "chosen": " yes", "rejected": " no"}\n'
_CONV_PAIR = (
    '{"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "yes"}], '
    '"rejected": [{"role": "assistant", "content": "no"}]}\n'
)
PREFS_CASES: list[Case] = [
    Case("prefs-missing-side", _PREFS, 1, "d.jsonl line 1: missing field 'rejected'", {"d.jsonl": '{"chosen": "a"}\n'}),
    Case(
        "prefs-empty-side",
        _PREFS,
        1,
        "d.jsonl line 2: field 'chosen' is empty",
        {"d.jsonl": _GOOD_PAIR + '{"prompt": "Q?", "chosen": "", "rejected": " no"}\n'},
    ),
    Case(
        "prefs-a-pair-mixing-text-and-messages",
        _PREFS,
        1,
        "d.jsonl line 1: mixes plain text and messages",
        {"d.jsonl": '{"prompt": "Q?", "chosen": [{"role": "assistant", "content": "yes"}], "rejected": " no"}\n'},
    ),
    Case(
        "prefs-mixed-formats",
        _PREFS,
        1,
        "d.jsonl line 2: the data set mixes formats",
        {"d.jsonl": _GOOD_PAIR + _CONV_PAIR},
    ),
    Case(
        "prefs-not-a-pair",
        _PREFS,
        1,
        "d.jsonl line 1: not a preference pair (format prompt-answer)",
        {"d.jsonl": '{"prompt": "Q?", "answer": " yes"}\n'},
    ),
    # The gpt2 model has no BOS token: its tokenizer lays the pair out otherwise.
    Case(
        "prefs-reference-tokenizer-differs",
        [*_PREFS, "--ref-model", "{gpt2}"],
        1,
        "d.jsonl line 1: the reference's tokenizer gives the chosen side other tokens",
        {"d.jsonl": _GOOD_PAIR},
    ),
    Case(
        "prefs-longer-than-the-context",
        _PREFS,
        1,
        "d.jsonl line 1: the chosen sequence is",
        {"d.jsonl": '{"prompt": "Q?", "chosen": "' + "x" * 300 + '", "rejected": " no"}\n'},
    ),
    Case("prefs-bad-loss-type", [*_PREFS, "--loss-type", "kto"], 2, "--loss-type", {"d.jsonl": _GOOD_PAIR}),
    Case("prefs-bad-beta", [*_PREFS, "--beta", "nan"], 2, "--beta", {"d.jsonl": _GOOD_PAIR}),
    Case(
        "prefs-reference-with-simpo",
        [*_PREFS, "--loss-type", "simpo", "--ref-model", "{llama}"],
        2,
        "--loss-type simpo compares with no reference",
        {"d.jsonl": _GOOD_PAIR},
    ),
    Case(
        "prefs-separate-on-conversations",
        [*_PREFS, "--tokenization", "separate"],
        1,
        "--tokenization separate applies to plain pairs",
        {"d.jsonl": _CONV_PAIR},
    ),
    Case("prefs-bad-fail-on", [*_PREFS, "--fail-on", "no-such-check"], 2, "unknown check", {"d.jsonl": _GOOD_PAIR}),
    Case(
        "prefs-output-is-input",
        ["prefs", "d.jsonl", "-m", "{llama}", "-o", "d.jsonl", "--force"],
        1,
        "--output d.jsonl: is the same file as the input file",
        {"d.jsonl": _GOOD_PAIR},
    ),
]

CASES = LOADING_CASES + FILE_CASES + TEXT_CASES + DATA_CASES + COMMAND_CASES + PREFS_CASES

# --- issue 22, runtime ---


def _evil_pickle(folder: Path) -> None:
    """A pytorch_model.bin whose pickle calls os.system when loaded unsafely (torch.load(weights_only=False))."""
    import torch
    from safetensors.torch import load_file

    build_model(folder, "llama")
    weights = dict(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights["evil"] = _Evil()
    torch.save(weights, folder / "pytorch_model.bin")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


# Issue 22 item 9: `vocab_size` 100 below the byte tokenizer's 268 ids: torch's IndexError in every command.
_SMALL_VOCAB = _model_files("m", lambda folder: build_model(folder, "llama", vocab_size=100))
_VOCAB = "the tokenizer of m has token ids up to 267, but the model has rows for fewer (its embedding 100, its head 100"
_RUN_M = ["run", "-p", "the cat", "-a", " sat", "--device", "cpu", "-m", "m"]
_PAIR = {"d.jsonl": '{"prompt": "a", "answer": "b"}\n'}
CASES += [
    Case("vocab-below-tokenizer-run", _RUN_M, 1, _VOCAB, _SMALL_VOCAB),
    Case(
        "vocab-below-tokenizer-batch",
        ["batch", "d.jsonl", "-m", "m", "--device", "cpu"],
        1,
        _VOCAB,
        {**_SMALL_VOCAB, **_PAIR},
    ),
    Case(
        "vocab-below-tokenizer-audit",
        ["audit", "d.jsonl", "-m", "m", "--device", "cpu"],
        1,
        _VOCAB,
        {**_SMALL_VOCAB, **_PAIR},
    ),
    Case(
        "vocab-below-tokenizer-diff",
        ["diff", "-m", "{llama}", "--model-b", "m", "-p", "a", "-a", "b"],
        1,
        _VOCAB,
        _SMALL_VOCAB,
    ),
    Case(
        "vocab-below-tokenizer-diff-input",
        ["diff", "-m", "m", "--model-b", "{llama}", "--input", "d.jsonl", "-o", "o.jsonl"],
        1,
        _VOCAB,
        {**_SMALL_VOCAB, **_PAIR},
    ),
    # More embedding rows than token ids (a vocabulary padded to a multiple of 64) is fine.
    Case(
        "vocab-padded-past-tokenizer",
        _RUN_M,
        0,
        "",
        _model_files("m", lambda folder: build_model(folder, "llama", vocab_size=320)),
    ),
    # Issue 22, questionable: torch's own advice ("Re-running `torch.load` with `weights_only` set to False
    # will likely succeed ..."), cut mid-word at 300 characters; now ce-inspect's line, naming the file.
    Case(
        "pickle-with-code",
        _RUN_M,
        1,
        "pytorch_model.bin in m holds Python objects or code besides tensors, which torch's safe loader refuses",
        _model_files("m", _evil_pickle),
    ),
]


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
            timeout=PROCESS_TIMEOUT,
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


def _param(case: Case) -> object:
    """A row that starts a whole process (stdin, signals) is `slow`: `make test-fast` leaves it out."""
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.process else [])


# --- issue 18, choices: bad questions are one line naming the line ---

_CHOICES = ["choices", "q.jsonl", "-m", "{llama}", "-o", "{tmp}/o.jsonl"]
_GOOD_Q = '{"prompt": "Q:", "choices": [" a", " b"], "label": 0}\n'


def _questions(bad: str) -> dict[str, str | bytes]:
    return {"q.jsonl": _GOOD_Q + bad + "\n"}


CASES += [
    Case("choices-label-out-of-range", _CHOICES, 1, "line 2: field 'label' is 2, out of range for 2 choices",
         _questions('{"prompt": "Q:", "choices": [" a", " b"], "label": 2}')),
    Case("choices-one-choice", _CHOICES, 1, "line 2: field 'choices' has 1 choice(s); a question needs at least two",
         _questions('{"prompt": "Q:", "choices": [" a"], "label": 0}')),
    Case("choices-empty-choice", _CHOICES, 1, "line 2: choice 1 is empty",
         _questions('{"prompt": "Q:", "choices": [" a", ""], "label": 0}')),
    Case("choices-missing-label", _CHOICES, 1, "line 2: missing field for the right choice's index",
         _questions('{"prompt": "Q:", "choices": [" a", " b"]}')),
    Case("choices-mixed-context", _CHOICES, 1, "line 2: mixed fields 'prompt' and 'query'",
         _questions('{"prompt": "Q:", "query": "Q:", "choices": [" a", " b"], "label": 0}')),
    Case("choices-skip-invalid", [*_CHOICES, "--skip-invalid"], 0, "",
         _questions('{"prompt": "Q:", "choices": [" a", " b"], "gold": 5}')),
]  # fmt: skip


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, tmp_path, tiny_llama_dir, tiny_gpt2_dir, capsys):
    code, out, err = run_case(case, tmp_path, {"llama": str(tiny_llama_dir), "gpt2": str(tiny_gpt2_dir)}, capsys)
    assert "Traceback" not in err, err
    assert code == case.code, (code, err)
    if case.code != 0:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, err  # one line, not a cascade
        assert case.message in errors[0], errors[0]
        assert out == "", out  # on failure stdout stays empty


# --- issue 22, load ---

# A rank started with this on its path orders the ranks as a loaded machine may: rank 0 (the one that
# speaks for the run) begins only once rank 1 has exited.
_RANK_0_LAST = """\
import os, time
folder, rank = os.environ["CE_INSPECT_TEST_ORDER"], os.environ.get("RANK")
if rank == "1":
    with open(os.path.join(folder, "rank1.pid"), "w") as fh:
        fh.write(str(os.getpid()))
elif rank == "0":
    deadline = time.monotonic() + float(os.environ["CE_INSPECT_TEST_ORDER_TIMEOUT"])
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(folder, "rank1.pid")) as fh, open(f"/proc/{int(fh.read())}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    break  # rank 1 has exited; torchrun has not reaped it yet
        except ValueError:  # rank 1 is writing its PID
            pass
        except FileNotFoundError as exc:
            if "/proc/" in str(exc.filename):
                break  # rank 1 has exited and been reaped
        time.sleep(0.05)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_command_refused_under_torchrun_is_named_when_rank_0_starts_last(tmp_path, tiny_llama_dir):
    """Under torchrun, `run` is refused by rank 0 with one line and exit 2. Rank 1 used to exit 2 too: when it
    got there first (ranks start unevenly on a loaded machine), torchrun stopped rank 0 with SIGTERM before
    it printed anything, and the user saw only torchrun's traceback."""
    import re
    import socket

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RANK_0_LAST)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]),
        CE_INSPECT_TEST_ORDER=str(tmp_path),
        CE_INSPECT_TEST_ORDER_TIMEOUT=str(PROCESS_TIMEOUT),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    cmd += ["-m", "ce_inspect", "run", "-p", "a", "-a", "b", "-m", str(tiny_llama_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
    assert (tmp_path / "rank1.pid").exists()  # the hook ran
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "`ce-inspect run` runs in one process" in errors[0], proc.stderr
    assert re.search(r"exitcode\s*:\s*2 ", proc.stderr) and "SIGTERM" not in proc.stderr, proc.stderr


# --- issue 22, lost files ---------------------------------------------------------------------------------

_PAIRS = "".join(json.dumps({"prompt": f"the cat {i}", "answer": f" sat {i}"}) + "\n" for i in range(5))
_OURS_LINE = '{"schema_version": 1, "line": 1}\n'  # a line ce-inspect wrote: replaceable, or kept by a refusal
# The three writers of JSON lines under a lock, as (command line, after the input); {llama} filled in.
_LINE_WRITERS = {
    "batch": ["batch", "r5.jsonl", "-m", "{llama}", "--device", "cpu", "-o", "out.jsonl"],
    "audit": ["audit", "r5.jsonl", "-m", "{llama}", "--device", "cpu", "-o", "out.jsonl"],
    "audit-no-model": ["audit", "r5.jsonl", "--no-model", "--tokenizer", "{llama}", "-o", "out.jsonl"],
    "diff-input": ["diff", "--input", "r5.jsonl", "-m", "{llama}", "--model-b", "{llama}", "-o", "out.jsonl"],
}


def _cli(args: list[str], tmp_path: Path, llama: Path, capsys) -> tuple[int, str, str]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main([a.replace("{llama}", str(llama)) for a in args])
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("planted", ["symlink", "hard-link", "fifo", "other-text"])
@pytest.mark.parametrize("command", list(_LINE_WRITERS))
def test_a_file_planted_at_the_lock_path_is_refused_and_kept(command, planted, tmp_path, tiny_llama_dir, capsys):
    """Item 1: a link (or anything but a PID file) at `.out.jsonl.lock` was truncated and given a PID."""
    (tmp_path / "r5.jsonl").write_text(_PAIRS)
    victim, lock = tmp_path / "victim", tmp_path / ".out.jsonl.lock"
    victim.write_bytes(b"data\n")
    if planted == "symlink":
        lock.symlink_to("victim")
    elif planted == "hard-link":
        os.link(victim, lock)
    elif planted == "fifo":
        os.mkfifo(lock)
    else:
        lock.write_bytes(b"data\n")
    code, out, err = _cli(_LINE_WRITERS[command], tmp_path, tiny_llama_dir, capsys)
    assert "Traceback" not in err and code == 1 and out == "", err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"the lock file {lock}" in errors[0] and "remove it" in errors[0], err
    assert victim.read_bytes() == b"data\n"  # the file it names is untouched
    if planted != "fifo":
        assert lock.read_bytes() == b"data\n"
    assert lock.is_symlink() == (planted == "symlink")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_lock_left_by_a_killed_run_is_still_taken_over(tmp_path, tiny_llama_dir, capsys):
    """Item 1's boundary: a lock file holding only a PID (what a killed run leaves) does not block."""
    (tmp_path / "r5.jsonl").write_text(_PAIRS)
    (tmp_path / ".out.jsonl.lock").write_text("999999\n")
    code, _, err = _cli(_LINE_WRITERS["batch"], tmp_path, tiny_llama_dir, capsys)
    assert code == 0, err
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5
    assert not (tmp_path / ".out.jsonl.lock").exists()


_HOLD_LOCK = """
import sys
from ce_inspect.files import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def _hold_lock(path: Path) -> subprocess.Popen:
    """A second process holding ``path``'s output lock (as a running `batch -o` does) until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    line = holder.stdout.readline()  # the event: the lock is held (blocks until then, or EOF if it died)
    assert line == "held\n", f"the lock holder did not take the lock (exit {holder.poll()})"
    return holder


_WHOLE_WRITERS = {
    "run-o": ["run", "-m", "{llama}", "-p", "the cat", "-a", " sat", "--device", "cpu", "-o", "c4.jsonl"],
    "diff-o": ["diff", "-m", "{llama}", "--model-b", "{llama}", "-p", "the cat", "-a", " sat", "-o", "c4.jsonl"],
    "run-html": ["run", "-m", "{llama}", "-p", "the cat", "-a", " sat", "--device", "cpu", "--html", "c4.jsonl"],
    "batch-summary-json": ["batch", "r5.jsonl", "-m", "{llama}", "--device", "cpu", "--summary-json", "c4.jsonl"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(_WHOLE_WRITERS))
def test_run_and_diff_output_wait_their_turn_at_the_lock(command, tmp_path, tiny_llama_dir):
    """Item 2: `run -o` and `diff -o` renamed their document over a file `batch -o` was writing (its lines
    lost, both exit 0). Every writer of a whole document takes the output's lock: with it held by another
    process, they stop with batch's one-line error and the file keeps its lines."""
    (tmp_path / "r5.jsonl").write_text(_PAIRS)
    target = tmp_path / "c4.jsonl"
    lines = _OURS_LINE if command != "run-html" else "<!-- ce-inspect report: run -->\n"
    target.write_text(lines)
    holder = _hold_lock(target)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        args = [a.replace("{llama}", str(tiny_llama_dir)) for a in _WHOLE_WRITERS[command]]
        proc = subprocess.run(
            [sys.executable, "-m", "ce_inspect", *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.communicate("", timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    assert f"another ce-inspect run (PID {holder.pid}) is writing it" in errors[0], errors[0]
    assert target.read_text() == lines
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize(
    "args",
    [
        ["--html", "old.html", "--markdown", "/dev/full"],
        ["-o", "old.json", "--html", "old.html", "--svg", "/dev/full"],
        ["--markdown", "/dev/full", "--svg", "old.svg", "-o", "old.json"],
    ],
    ids=["html-and-full-markdown", "output-html-and-full-svg", "full-markdown-first"],
)
def test_one_failed_report_leaves_every_file_as_it_was(args, tmp_path, tiny_llama_dir, capsys):
    """Item 3: `run --html old.html --markdown /dev/full` exited 1 but replaced old.html. The documents
    are written all or nothing: temporary files first, the device, then the renames."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    old = {
        "old.html": "<!DOCTYPE html>\n<!-- ce-inspect report: run -->\nold\n",
        "old.svg": "<!-- ce-inspect report: run -->\n<svg/>\n",
        "old.json": '{"schema_version": 1, "old": true}\n',
    }
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    run = ["run", "-m", "{llama}", "-p", "the cat", "-a", " sat", "--device", "cpu", *args]
    code, out, err = _cli(run, tmp_path, tiny_llama_dir, capsys)
    assert "Traceback" not in err and code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "/dev/full: cannot write it" in errors[0], err
    assert "no output file was changed" in errors[0]
    assert {name: (tmp_path / name).read_text() for name in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(old)  # no temporary or lock file left
    # The same command with a writable device instead replaces them all.
    args = [a.replace("/dev/full", "/dev/null") for a in args]
    code, _, err = _cli([*run[: -len(args)], *args], tmp_path, tiny_llama_dir, capsys)
    assert code == 0, err
    assert all((tmp_path / name).read_text() != text for name, text in old.items() if name in args)


class _SmallDisk:
    """``open_stream`` onto a disk that holds ``room`` bytes: a write past them takes what fits, then the
    next raises ENOSPC, as a full file system does (a 128 KiB tmpfs gives the same, but needs root)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path):
        import errno
        import io

        room = self.room

        class Full(io.FileIO):
            def write(self, data) -> int:
                left = room - self.tell()
                if left <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(bytes(data)[:left])

        return Full(path, "wb"), True


@pytest.mark.parametrize("command", ["batch", "audit"])
def test_a_full_disk_during_the_lines_is_one_line_and_resume_finishes(command, tmp_path, tiny_llama_dir, capsys):
    """Item 8: a full disk during `batch -o` / `audit -o` was an `OSError: [Errno 28]` traceback. Now one
    line saying so, naming the file and the whole lines kept; `--resume` with space again finishes it."""
    from ce_inspect.dataset import sink  # where the runner opens its output

    rows = "".join(json.dumps({"prompt": f"the cat {i}", "answer": f" sat on mat {i}"}) + "\n" for i in range(12))
    (tmp_path / "r12.jsonl").write_text(rows)
    args = [command, "r12.jsonl", "-m", "{llama}", "--device", "cpu", "-o", "out.jsonl"]
    code, _, err = _cli(args, tmp_path, tiny_llama_dir, capsys)
    assert code == 0, err
    whole = (tmp_path / "out.jsonl").read_bytes()
    line_size = len(whole.splitlines(keepends=True)[0])
    (tmp_path / "out.jsonl").unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sink, "open_stream", _SmallDisk(int(line_size * 3.5)))
        code, out, err = _cli(args, tmp_path, tiny_llama_dir, capsys)
    assert "Traceback" not in err and code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    kept = (tmp_path / "out.jsonl").read_text().splitlines(keepends=True)
    assert 0 < len(kept) < 12 and all(line.endswith("\n") and json.loads(line) for line in kept)
    assert errors == [
        f"Error: --output out.jsonl: the disk is full (no space left on device); the {len(kept)} lines written "
        "so far are whole: free some space and rerun with --resume to continue"
    ], err
    code, _, err = _cli([*args, "--resume"], tmp_path, tiny_llama_dir, capsys)
    assert code == 0, err
    resumed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["line"] for r in resumed] == list(range(1, 13))
    assert [r["line"] for r in resumed] == [json.loads(line)["line"] for line in whole.splitlines()]


_BUILD = """
import shutil, sys, time
from pathlib import Path
from ce_inspect.model import gguf as gguf_cache

name, model, gguf, events = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])

def wait_for(event):
    deadline = time.monotonic() + 300
    while not (events / event).exists():  # an event the test (or the other process) makes
        assert time.monotonic() < deadline, f"{name}: no {event} in 300 s"
        time.sleep(0.05)

def convert(source, out):
    (events / f"{name}.converting").touch()
    if name == "first":
        wait_for("finish")
    for item in model.iterdir():
        shutil.copy(item, out / item.name)

checked = gguf_cache.cache_is_valid
def cache_is_valid(folder):
    valid = checked(folder)
    (events / f"{name}.checked-{'valid' if valid else 'invalid'}").touch()
    return valid

gguf_cache._convert_gguf, gguf_cache.cache_is_valid = convert, cache_is_valid
folder = Path(gguf_cache.gguf_cache_folder(gguf))
built = (folder / gguf_cache.MANIFEST).stat().st_ino
(events / f"{name}.done").write_text(str(folder))
if name == "first":
    wait_for("second.done")  # the first is still using its cache while the second finishes
    assert checked(folder) and (folder / gguf_cache.MANIFEST).stat().st_ino == built, "the cache was replaced"
"""


@pytest.mark.slow
def test_two_first_runs_on_an_empty_cache_share_one_build(tmp_path, tiny_llama_dir):
    """Item 4: two first runs on an empty GGUF cache: the second converter deleted the first's finished,
    in-use cache and renamed its own over it. Now builders take turns under a lock, and the second,
    which saw no cache, finds the first's complete one once it holds the lock and uses it."""
    import time

    gguf, events = tmp_path / "tiny.gguf", tmp_path / "events"
    gguf.write_bytes(b"GGUF not really")
    events.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CE_INSPECT_CACHE": str(tmp_path / "cache")}

    def start(name: str) -> subprocess.Popen:
        argv = [sys.executable, "-c", _BUILD, name, str(tiny_llama_dir), str(gguf), str(events)]
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(event: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while not (events / event).exists():
            assert proc.poll() is None, f"exited {proc.returncode} before {event}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"no {event} after 300 s"
            time.sleep(0.05)

    first = start("first")
    try:
        wait_for("first.converting", first)  # the first holds the build lock and converts
        second = start("second")
        try:
            wait_for("second.checked-invalid", second)  # the second saw no cache: it will build
            (events / "finish").touch()
            _, second_err = second.communicate(timeout=300)
        finally:
            second.kill()
        _, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert not (events / "second.converting").exists()  # one conversion, shared
    assert (events / "first.done").read_text() == (events / "second.done").read_text()
    assert "waiting for it" in second_err or (events / "second.checked-valid").exists()


# --- issue 22, audit gates ---


@pytest.mark.parametrize("no_model", [True, False], ids=["no-model", "model"])
def test_audit_gate_over_zero_records_fails(no_model, tmp_path, tiny_llama_dir, capsys):
    """Every record skipped: the audit is still written (-o, the report) and the gate exits 3, saying so."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"labels": [1]}\n{"prompt": 5}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    args = ["audit", str(data), "-m", str(tiny_llama_dir), "--skip-invalid", "--json", "-o", str(out)]
    code = main([*args, *(["--no-model"] if no_model else [])])
    stdout, err = capsys.readouterr()
    assert code == 3, err
    assert "no record was checked (every one was skipped)" in err and "Traceback" not in err
    doc = json.loads(stdout)
    assert doc["records"] == 0 and len(doc["skipped"]) == 2 and doc["gate_failed"] == []
    assert out.exists()
    assert main([*args[:-2], "--fail-on", "none", *(["--no-model"] if no_model else [])]) == 0  # no gate: exit 0


# --- issue 22, runtime ---


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan"])
def test_bad_rank_timeout_is_one_usage_line(value, tmp_path, monkeypatch, capsys):
    """Issue 22 item 11: a bad CE_INSPECT_RANK_TIMEOUT was a traceback in every rank (float() in start)."""
    launch = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, text in {**launch, "CE_INSPECT_RANK_TIMEOUT": value}.items():
        monkeypatch.setenv(name, text)
    # Refused before the rank joins anything: no store at port 1 is ever asked for.
    code = main(["batch", str(tmp_path / "d.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        f"Error: CE_INSPECT_RANK_TIMEOUT={value!r} is not a number of seconds above 0: it is how long a rank waits "
        "while no rank makes progress (default 1800); set it to e.g. 3600, or unset it\n"
    )


def test_rank_timeout_is_read_by_one_validator():
    from ce_inspect.distributed import DEFAULT_RANK_TIMEOUT, rank_timeout

    assert rank_timeout({}) == rank_timeout({"CE_INSPECT_RANK_TIMEOUT": ""}) == DEFAULT_RANK_TIMEOUT
    assert rank_timeout({"CE_INSPECT_RANK_TIMEOUT": "2.5"}) == 2.5
    for bad in ("inf", "-1e-9", "1s"):
        with pytest.raises(Exception, match="CE_INSPECT_RANK_TIMEOUT"):
            rank_timeout({"CE_INSPECT_RANK_TIMEOUT": bad})


@pytest.mark.slow
def test_bad_rank_timeout_under_torchrun_shows_no_ce_inspect_traceback(tmp_path, tiny_llama_dir):
    """What a user sees under torchrun: each rank's `Error:` line (exit 2), then torchrun's own report
    (its ChildFailedError traceback, exit 1), with no frame of ce-inspect in it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "answer": "b"}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CE_INSPECT_RANK_TIMEOUT="abc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    cmd += ["-m", "ce_inspect", "batch", str(data), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o.jsonl")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # torchrun's status for a failed rank
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors and all(e.startswith("Error: CE_INSPECT_RANK_TIMEOUT='abc' is not a number") for e in errors)
    assert f'File "{ROOT / "ce_inspect"}' not in proc.stderr, proc.stderr  # no ce-inspect frame in any traceback
    assert re.search(r"exitcode\s*:\s*2 ", proc.stderr), proc.stderr  # the ranks' usage status, in torchrun's report
    assert not (tmp_path / "o.jsonl").exists()


def _wait_for(what: str, ready, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Wait (polling) until ``ready()``; fail with ``what`` if it does not happen or the process ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no sign after {timeout:.0f} s that {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_truncating_copy_onto_the_weights_mid_batch_is_exit_1_naming_the_file(tmp_path):
    """Issue 22 item 10: `cp` onto a memory-mapped weight file mid-batch killed the run with SIGBUS (exit 135, no
    message, the lock file left). The model holds its own copy of its CPU weights: the run stops at the next
    batch with exit 1 naming the file, the lines kept are whole, and --resume finishes the job."""
    model = build_model(tmp_path / "m", "llama")
    other = build_model(tmp_path / "other", "llama", seed=1)  # the same shapes, other weights
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"record {k}", "answer": " the cat sat" * 3}) + "\n" for k in range(1000))
    )
    out = tmp_path / "o.jsonl"
    args = [sys.executable, "-m", "ce_inspect", "batch", str(data), "-m", str(model), "--device", "cpu", "-o", str(out)]
    args += ["-b", "1", "--sort-window", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for("a first line was written", lambda: out.exists() and out.stat().st_size > 0, proc)
        # What `cp other/model.safetensors m/model.safetensors` does: truncate, then write. The file stays
        # short until the run has stopped, so that every page the old map had is gone while it runs.
        with open(weights, "wb") as fh:
            fh.write((other / "model.safetensors").read_bytes()[:1000])
            fh.flush()
            assert proc.poll() is None, "the batch finished before the copy: give it a bigger data set"
            _, err = proc.communicate(timeout=180)
            fh.write((other / "model.safetensors").read_bytes()[1000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (proc.returncode, err)  # was -7 (SIGBUS)
    assert err.count("Error: ") == 1 and "Traceback" not in err, err
    error = next(line for line in err.splitlines() if line.startswith("Error: "))
    assert f"the model's file {weights.resolve()} changed while ce-inspect was using it" in error
    kept = out.read_text().splitlines()
    assert kept and all(json.loads(line)["line"] == k for k, line in enumerate(kept, 1))
    # The folder holds its model again: --resume (which takes the output's lock) scores the rest and keeps
    # the lines already written.
    weights.write_bytes(original)
    again = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1000 and lines[: len(kept)] == kept


# --- issue 22, inputs ---


def _cli_process(args: list[str], tmp_path: Path, **popen) -> subprocess.Popen:
    """``ce-inspect ARGS`` as a real process in ``tmp_path``; its temporary files go to ``tmp_path/tmp``."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    env.update(popen.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "ce_inspect", *args], cwd=tmp_path, env=env, **popen)


_FIVE = "".join(json.dumps({"id": k, "prompt": f"Q{k}", "answer": " the cat"}) + "\n" for k in range(5))


def _data_command(command: str, path: str, model: Path) -> list[str]:
    """A command of each kind that takes a data path, writing its per-record lines to o.jsonl."""
    if command == "batch":
        return ["batch", path, "-m", str(model), "--no-sequence", "-o", "o.jsonl"]
    if command == "audit":
        return ["audit", path, "-m", str(model), "-o", "o.jsonl"]
    if command == "audit --no-model":
        return ["audit", path, "-m", str(model), "--no-model", "-o", "o.jsonl"]
    return ["diff", "-m", str(model), "--model-b", str(model), "--input", path, "-o", "o.jsonl"]


def _check_read_once(proc: subprocess.Popen, tmp_path: Path, shown: str) -> None:
    """The command read all five records from an input that can be read once, named it as given, and left
    no temporary copy behind."""
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the command did not end in 240 s (it hangs on its input): {err.decode()[-2000:]}")
    err_text = err.decode("utf-8", "replace")
    assert proc.returncode == 0, err_text
    assert "Traceback" not in err_text and "holds no records" not in err_text, err_text
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line["line"] for line in lines] == [1, 2, 3, 4, 5]
    assert shown in err_text + out.decode("utf-8", "replace")  # messages name the input as the user gave it
    assert not any("ce-inspect-" in p.name for p in (tmp_path / "tmp").iterdir())  # the copy is removed


_DATA_COMMANDS = ["batch", "audit", "audit --no-model", "diff --input"]


@pytest.mark.slow
@pytest.mark.parametrize("command", _DATA_COMMANDS)
def test_issue22_12_a_fifo_is_read_once(command, tmp_path, tiny_llama_dir):
    """(12) A FIFO as input hung: the format probe consumed its data and the second open waited for a writer
    that was gone. It is read once, into a temporary file, by every command that takes a data path."""
    import threading

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as fh:  # waits for the command to open it
            fh.write(_FIVE)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    proc = _cli_process(
        _data_command(command, str(fifo), tiny_llama_dir), tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _check_read_once(proc, tmp_path, str(fifo))
    finally:
        if writer.is_alive():  # the command never opened the FIFO: open it here, so the writer can end
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=120)


def _feed(w: int) -> Any:
    """A thread writing the five records into the pipe ``w`` (then closing it), as a slow shell would."""
    import threading

    def feed() -> None:
        with os.fdopen(w, "w", encoding="utf-8") as fh:
            fh.write(_FIVE)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


@pytest.mark.slow
@pytest.mark.parametrize("command", _DATA_COMMANDS)
def test_issue22_13_a_pipe_given_as_a_path_is_read_once(command, tmp_path, tiny_llama_dir):
    """(13) `batch <(cat r5.jsonl)` said "holds no records" though the pipe carried 5: the probe read them
    and the second open of /dev/fd/N found the pipe empty. Every command that takes a data path reads it once."""
    r, w = os.pipe()
    path = f"/dev/fd/{r}"
    args = _data_command(command, path, tiny_llama_dir)
    proc = _cli_process(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(r,))
    os.close(r)
    writer = _feed(w)
    _check_read_once(proc, tmp_path, path)
    writer.join(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["batch", "audit --no-model"])
def test_issue22_13_dev_stdin_from_a_pipe_is_read_once(command, tmp_path, tiny_llama_dir):
    """(13) `cat r5.jsonl | ce-inspect batch /dev/stdin` said "holds no records"."""
    r, w = os.pipe()
    args = _data_command(command, "/dev/stdin", tiny_llama_dir)
    proc = _cli_process(args, tmp_path, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(r)
    writer = _feed(w)
    _check_read_once(proc, tmp_path, "/dev/stdin")
    writer.join(timeout=120)


def test_issue22_12_the_library_refuses_a_fifo_without_reading_it(tmp_path):
    """``open_data`` (called by every reader of a whole data set) refuses what can be read only once, at
    once and without opening it (a FIFO with no writer would block); ``read_records`` reads it in one pass."""
    import threading

    from ce_inspect.data import open_data, read_records
    from ce_inspect.errors import InputError

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="can be read only once"):
        open_data(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as fh:
            fh.write(_FIVE)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert [r.id for r in read_records(fifo)] == [0, 1, 2, 3, 4]  # nothing probed away
    writer.join(timeout=120)


def test_issue22_5_a_jsonl_whose_first_line_is_an_array_scores_the_other_lines(tmp_path, tiny_llama_dir, capsys):
    """(5) The whole file was read as one JSON array and every later line ignored: nothing scored, exit 0."""
    data = tmp_path / "h.jsonl"
    data.write_text(_ARRAY_THEN_LINES, encoding="utf-8")
    out, summary = tmp_path / "o.jsonl", tmp_path / "s.json"
    args = ["batch", str(data), "-m", str(tiny_llama_dir), "--skip-invalid", "-o", str(out)]
    assert main([*args, "--summary-json", str(summary)]) == 0
    assert "(JSONL)" in capsys.readouterr().err
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["line"] == 2 and line["summary"]["count"] > 0
    skipped = json.loads(summary.read_text())["skipped"]
    assert skipped == [{"line": 1, "id": None, "reason": "not a JSON object but a JSON array"}]


def _pipe_full(r: int, capacity: int, proc: subprocess.Popen) -> None:
    """Wait until the pipe holds ``capacity`` bytes (the writer met a full pipe) or the writer ended."""
    import fcntl
    import struct
    import termios
    import time

    deadline = time.monotonic() + 240
    while proc.poll() is None:
        pending = struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0"))[0]
        if pending >= capacity:
            return
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the pipe held {pending} of {capacity} bytes after 240 s and the command still ran")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("command", ["run --json", "batch lines"])
def test_issue22_6_a_nonblocking_stdout_pipe_gets_every_byte(command, unbuffered, tmp_path, tiny_llama_dir):
    """(6) Into a non-blocking pipe whose reader is slow, `--json` ended with exit 0 after 65,536 bytes of a
    longer document (unbuffered) or a BlockingIOError traceback; every write now completes. The reader reads
    nothing until the pipe is full (4 KiB here), so every run meets a full pipe; the pipe's flag is restored."""
    import fcntl
    import select
    import time

    if command == "run --json":
        args = ["run", "-m", str(tiny_llama_dir), "-p", "x", "-a", "the cat sat on the mat " * 10, "--json"]
    else:
        (tmp_path / "d.jsonl").write_text(_FIVE * 3, encoding="utf-8")
        args = ["batch", "d.jsonl", "-m", str(tiny_llama_dir)]
    r, w = os.pipe()
    capacity = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    env = {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    with open(tmp_path / "stderr", "wb") as err:
        proc = _cli_process(args, tmp_path, stdout=w, stderr=err, env=env)
    try:
        _pipe_full(r, capacity, proc)  # the slow reader: nothing read until the writer has to wait
        chunks, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            if select.select([r], [], [], 0.5)[0]:
                chunks.append(os.read(r, 1 << 16))
            elif proc.poll() is not None:
                break  # ended, and everything it wrote is read (this test holds the write end: no EOF)
        else:
            proc.kill()
            pytest.fail("the command did not end in 240 s")
        assert not os.get_blocking(w)  # the caller's pipe is left as it was found
    finally:
        os.close(w)
        os.close(r)
        proc.wait(timeout=120)
    stderr = (tmp_path / "stderr").read_text("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    data = b"".join(chunks)
    assert len(data) > capacity
    if command == "run --json":
        doc = json.loads(data)  # the whole document: a cut one does not parse
        assert doc["summary"]["count"] == len(doc["tokens"]) > 100
    else:
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [line["line"] for line in lines] == list(range(1, 16))
