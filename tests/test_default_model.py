"""The bundled SmolLM2-135M-Instruct, end to end, against independent plain-transformers computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ce_inspect import ScoreOptions, load, score
from ce_inspect.model import gguf as gguf_cache
from ce_inspect.model import loader

pytestmark = pytest.mark.default_model

PROMPT = "Where is the capital of China?"
ANSWER = " The capital is Beijing."


def test_per_token_logprobs_match_plain_transformers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = score(smollm2, PROMPT, ANSWER, options=ScoreOptions(verify=True))
    # Independent: a fresh model and tokenizer from the same weights, full logits, plain log-softmax.
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    expected = [logp[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(answer_ids)]
    assert [t.token_id for t in result.tokens] == answer_ids
    assert [t.logprob for t in result.tokens] == pytest.approx(expected, abs=1e-4)
    assert result.tokens[-1].token == "<|im_end|>" and result.tokens[-1].special
    assert result.summary.verify_abs_diff < 1e-5


def test_cache_is_reused(smollm2, monkeypatch):
    monkeypatch.setenv("CE_INSPECT_CACHE", str(Path(smollm2.path).parents[1]))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt although it is valid")

    monkeypatch.setattr(gguf_cache, "build_gguf_cache", no_rebuild)
    monkeypatch.setattr(loader, "build_gguf_cache", no_rebuild)
    again = load(device="cpu")
    assert again.path == smollm2.path


def test_cached_weights_equal_the_gguf(smollm2, smollm2_gguf_logits):
    """The safetensors cache reproduces the dequantized GGUF exactly (the GGUF's logits: see conftest)."""
    from conftest import GGUF_PROBE

    ids = smollm2_gguf_logits["ids"]
    assert torch.equal(smollm2.tokenizer(GGUF_PROBE, return_tensors="pt")["input_ids"], ids)
    with torch.no_grad():
        assert torch.equal(smollm2_gguf_logits["logits"], smollm2.model(ids).logits)


def test_cli_json_on_default_model(smollm2, capsys, monkeypatch):
    from ce_inspect.cli import main

    monkeypatch.setenv("CE_INSPECT_CACHE", str(Path(smollm2.path).parents[1]))
    assert main(["run", "-p", PROMPT, "-a", ANSWER, "--json", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert doc["tokens"][-1]["token"] == "<|im_end|>"
