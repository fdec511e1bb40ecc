"""Loading a model and its tokenizer for scoring: local folder, Hub id (or its cache), ``.gguf``, bundled default."""

from __future__ import annotations

import functools
import gc
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ce_inspect.contract import VersionsDict, versions
from ce_inspect.distributed import detect_launch, rank_gpus
from ce_inspect.errors import DeviceError, ModelLoadError, ModelNotFoundError, UsageError
from ce_inspect.model.checks import (
    check_causal_lm,
    check_tokenizer_files,
    check_vocabulary,
    check_weights,
    one_line,
    remote_code_error,
    unsafe_pickle_error,
)
from ce_inspect.model.devices import check_device, resolve_device, resolve_dtype
from ce_inspect.model.fingerprint import (
    FileStamp,
    files_read_while_running,
    model_fingerprint,
    own_cpu_weights,
    stamp_model_files,
)
from ce_inspect.model.gguf import (
    DEFAULT_GGUF,
    DEFAULT_PACKAGE,
    build_gguf_cache,
    cache_identity,
    default_gguf_path,
    gguf_cache_folder,
)
from ce_inspect.model.hub import from_pretrained
from ce_inspect.text import context_length

log = logging.getLogger("ce_inspect")


@dataclass
class LoadedModel:
    """A model ready to score: the HF model in eval mode, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str  # "default", "gguf", "folder", "hub" or "memory" (a model object: `in_memory`)
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
    #: Filled by scoring on the first group that shares a start (a question's choices after its context):
    #: whether running the start once and the rest from its KV cache gives the full pass's figures.
    shared_start: bool | None = field(default=None, repr=False)

    @property
    def versions(self) -> VersionsDict:
        """What the figures are computed with: ce-inspect, torch, transformers, Python, the device's name."""
        return versions(self.device)


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
    model: Any = None,
    *,
    tokenizer: Any = None,
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
    ``ce_inspect`` logger). ``model`` may also be a model already in memory (a transformers causal LM),
    with its ``tokenizer``: it is scored where it is, on its device and in its dtype (``in_memory``).
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return in_memory(model, tokenizer)
    if tokenizer is not None:
        raise UsageError("`tokenizer` goes with a model object; a path or Hub id brings its own tokenizer")
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
    check_causal_lm(folder, source, revision, trust_remote_code)
    if source == "folder":
        check_tokenizer_files(Path(folder))
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
    files = files_read_while_running(hf_model, files or stamp_model_files(folder, source, revision))
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


def in_memory(model: Any, tokenizer: Any, name: str | None = None) -> LoadedModel:
    """A transformers causal LM and its tokenizer, already loaded (a notebook's), ready to score as they are:
    put in eval mode, checked as ``load`` checks a model (a causal LM, a tokenizer whose ids it has rows
    for). It has no files, so no fingerprint: a resumed data set cannot tell whether it changed."""
    if tokenizer is None:
        raise UsageError("a model object needs its `tokenizer`: load(model=model, tokenizer=tokenizer)")
    config = getattr(model, "config", None)
    if config is None or not callable(model) or not hasattr(model, "get_input_embeddings"):
        raise ModelLoadError(
            f"`model` is a {type(model).__name__}, not a transformers model: give a path, a Hub id, a .gguf or "
            "a model object such as AutoModelForCausalLM.from_pretrained(...)"
        )
    name = name or getattr(config, "_name_or_path", None) or type(model).__name__
    check_vocabulary(name, model, tokenizer)
    model.eval()
    parameter = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=str(name),
        source="memory",
        device=str(parameter.device),
        dtype=str(parameter.dtype).removeprefix("torch."),
        context_length=context_length(config, tokenizer),
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


def _load_tokenizer(folder: str, source: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return from_pretrained(
            AutoTokenizer.from_pretrained, folder, source, revision, trust_remote_code=trust_remote_code
        )
    except ModelNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is a load error for the user
        raise remote_code_error(folder, exc) or ModelLoadError(
            f"could not load a tokenizer from {folder}: {one_line(exc)}"
        ) from exc


def _rank_memory() -> dict[str, Any]:
    """Under torchrun, ``device_map`` spreads the model over this rank's block of the node's GPUs only."""
    import torch

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
        model, info = from_pretrained(AutoModelForCausalLM.from_pretrained, folder, source, revision, **kwargs)
    except ModelNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        raise unsafe_pickle_error(folder) from exc
    except ValueError as exc:
        if remote := remote_code_error(folder, exc):
            raise remote from exc
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise ModelLoadError(
                f"{folder} is not a causal language model (AutoModelForCausalLM cannot load it)"
            ) from exc
        raise ModelLoadError(f"could not load the model from {folder}: {one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model from {folder}: {one_line(exc)}") from exc
    check_weights(folder, info)
    return model
