"""CUDA: the same figures on the GPU as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from ce_inspect import ScoreOptions, load, score

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_matches_cpu_in_float32(tiny_llama_dir, tiny_llama):
    gpu = load(str(tiny_llama_dir), device="cuda", dtype="float32")
    assert gpu.device == "cuda"
    a = score(gpu, "Where is it?", " Here it is.", options=ScoreOptions(verify=True, top_k=3))
    b = score(tiny_llama, "Where is it?", " Here it is.")
    assert [t.loss for t in a.tokens] == pytest.approx([t.loss for t in b.tokens], abs=1e-4)
    assert a.summary.verify_abs_diff < 1e-5


def test_cuda_bfloat16_verifies(tiny_llama_dir):
    gpu = load(str(tiny_llama_dir), device="cuda", dtype="bfloat16")
    result = score(gpu, "Where is it?", " Here it is.", options=ScoreOptions(verify=True))
    assert gpu.dtype == "bfloat16"
    assert result.summary.verify_abs_diff < 1e-2  # bf16 logits, float32 log-softmax on both paths


def test_default_model_on_cuda(smollm2):
    gpu = load(smollm2.path, device="cuda", dtype="float32")
    a = score(gpu, "Where is the capital of China?", " The capital is Beijing.", options=ScoreOptions(verify=True))
    b = score(smollm2, "Where is the capital of China?", " The capital is Beijing.")
    assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-3)
    assert a.summary.verify_abs_diff < 1e-5
