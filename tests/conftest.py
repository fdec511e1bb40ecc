"""Offline fixtures: tiny randomly initialised causal LMs with a byte-level tokenizer, built in well under a second."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Never touch a model hub from tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

#: The longest a test waits for a process it started, or for an event in one, before it fails. Generous on
#: purpose: it is a deadline, never a measurement. On a loaded 2-core machine (load average ~6) one process
#: that imports torch and transformers takes ~30 s to start, a torchrun run has three of them, and a whole
#: `batch` of a few hundred records takes minutes; a test that waits less fails there, not here.
PROCESS_TIMEOUT = 600.0


def wait_for(
    ready: Callable[[], bool], what: str, *, proc: subprocess.Popen | None = None, timeout: float = PROCESS_TIMEOUT
) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` when ``timeout`` seconds pass first, or at once
    when ``proc`` ends before it holds (with its stderr). A deadline to wait on an event, not a timing."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ChatML, like SmolLM2's, with a default system prompt injected when none is given.
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer(add_bos: bool = True, chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer with a few merges, so some tokens span several characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("Ċ", "Ċ"), ("e", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_model(folder: Path, arch: str = "llama", add_bos: bool = True, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random model of ``arch`` with the byte tokenizer to ``folder``; return the folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer(add_bos=add_bos)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        config = AutoConfig.for_model(
            "llama",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
    elif arch == "gpt2":
        config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    elif arch == "gemma2":
        config = AutoConfig.for_model(
            "gemma2",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            final_logit_softcapping=3.0,
            **common,
        )
    else:
        raise ValueError(arch)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the default init, so losses spread out
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", add_bos=False)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir):
    from ce_inspect import load

    return load(str(tiny_gpt2_dir), device="cpu", quiet=True)


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from ce_inspect import load

    return load(str(tiny_llama_dir), device="cpu", quiet=True)


@pytest.fixture(scope="session")
def models_cache(request) -> Path:
    """This checkout's own cache of converted models, kept between sessions under .pytest_cache.

    Tests never write into the user's cache; keeping this one means the bundled model's conversion
    (~15 s) and the GGUF reference below happen once per checkout, not once per session.
    `make clean` or `pytest --cache-clear` removes it.
    """
    cache = getattr(request.config, "cache", None)
    if cache is None:  # the cache plugin is off (-p no:cacheprovider): a fresh folder per session
        return request.getfixturevalue("tmp_path_factory").mktemp("models")
    return Path(cache.mkdir("ce-inspect-models"))


@pytest.fixture(scope="session")
def smollm2(models_cache):
    """The bundled default model, converted into ``models_cache`` on first use."""
    from ce_inspect import load

    saved = os.environ.get("CE_INSPECT_CACHE")
    os.environ["CE_INSPECT_CACHE"] = str(models_cache)
    try:
        return load(device="cpu", quiet=True)
    finally:
        if saved is None:
            del os.environ["CE_INSPECT_CACHE"]
        else:
            os.environ["CE_INSPECT_CACHE"] = saved


GGUF_PROBE = "The quick brown fox"


@pytest.fixture(scope="session")
def smollm2_gguf_logits(models_cache) -> dict[str, torch.Tensor]:
    """``ids`` [1, seq] of ``GGUF_PROBE`` and their ``logits`` [1, seq, vocab] from the bundled GGUF loaded
    by transformers itself, not through the cache: the reference the cache must reproduce.

    Dequantizing the GGUF takes ~30 s, so the logits are kept in ``models_cache``, keyed by the file and
    the library versions that produce them; a change to any of them computes them again.
    """
    import hashlib

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ce_inspect.model import default_gguf_path

    gguf = default_gguf_path()
    stat = gguf.stat()
    # The numerics too: the same weights give bitwise other logits under another BLAS mode or thread count.
    numerics = f"{os.environ.get('MKL_CBWR')}|{torch.get_num_threads()}"
    key = (
        f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}|{torch.__version__}|{numerics}"
    )
    path = models_cache / "reference" / f"{hashlib.sha256((key + GGUF_PROBE).encode()).hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tokenizer(GGUF_PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = {"ids": ids, "logits": model(ids).logits}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(reference, tmp)
    tmp.replace(path)
    return reference


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory):
    """Every test that builds a cache writes it to a private folder, never the user's cache."""
    monkeypatch.setenv("CE_INSPECT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CE_INSPECT_MODEL", raising=False)  # the user's default model never reaches a test


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def json_close(a, b, where: str = "", tol: float = 1e-6) -> None:
    """Equal JSON, floats to ``tol`` (relative, or absolute near 0)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            json_close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            json_close(x, y, f"{where}[{i}]", tol)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def write_audit_data(path: Path, model_dir: Path) -> Path:
    """``samples/pairs.jsonl`` for `audit` with a model, with four more lines: a record that trains nothing
    (not scored), one whose end-of-sequence token is not trained (a finding on a scored record), one whose only
    trained token is the model's least likely one there (a loss outlier), and a line that is not a record."""
    from ce_inspect import load

    lm = load(str(model_dir), device="cpu", quiet=True)
    prefix = lm.tokenizer("Q: what?")["input_ids"]
    with torch.no_grad():
        least = int(lm.model(torch.tensor([prefix])).logits[0, -1].argmin())
    eos = lm.tokenizer.eos_token_id
    rows: list[object] = [json.loads(line) for line in (ROOT / "samples" / "pairs.jsonl").read_text().splitlines()]
    rows.insert(2, {"id": "untrained", "input_ids": [*prefix, eos], "labels": [-100] * (len(prefix) + 1)})
    rows.insert(6, "not a record")
    rows.insert(9, {"id": "eot-masked", "input_ids": [*prefix, eos], "labels": [-100, *prefix[1:], -100]})
    rows.insert(12, {"id": "outlier", "input_ids": [*prefix, least], "labels": [-100] * len(prefix) + [least]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def batch_tolerance(lm, examples) -> float:
    """How far a token's loss (or a mean of them) batched may lie from the example alone: the float32
    rounding bound of ``ce_inspect.numerics`` for this model, these examples' logits and their longest
    length. Batched figures are not bit-identical to one-by-one ones on every CPU (see docs/batch.md, Numerics)."""
    from ce_inspect.numerics import logit_scale, loss_tolerance

    return loss_tolerance(lm.model.config, logit_scale(lm, examples), max(len(e) for e in examples))


def synthetic_batch(n_scored: int, vocab: int, top_k: int):
    """One example of ``n_scored`` scored tokens and made-up figures for them, as ``scoring._figures`` returns
    them (the test of the one pass and ``bench/result_building.py`` share it)."""
    import random

    from ce_inspect.text import Encoded

    rng = random.Random(0)
    ids = tuple(rng.randrange(vocab) for _ in range(n_scored + 1))
    example = Encoded(input_ids=ids, labels=(-100, *ids[1:]), segments=("prompt",) + ("answer",) * n_scored)
    logprob = [-rng.random() * 5 for _ in range(n_scored)]
    top_ids = [[rng.randrange(vocab) for _ in range(max(top_k, 1))] for _ in range(n_scored)]
    figures = {
        "logprob": logprob,
        "loss": [-lp for lp in logprob],
        "rank": [rng.randrange(1, vocab) for _ in range(n_scored)],
        "top_logp": [sorted((-rng.random() for _ in row), reverse=True) for row in top_ids],
        "top_ids": top_ids,
        "target": list(ids[1:]),
    }
    return example, figures
