"""What a model's figures depend on (its fingerprint) and the weight files it reads while it runs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ce_inspect.errors import ModelChangedError
from ce_inspect.model.gguf import MANIFEST, sha256_file

if TYPE_CHECKING:
    from ce_inspect.model.loader import LoadedModel


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
        return f"sha256:{sha256_file(path)}"
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


def files_read_while_running(model: Any, files: tuple[FileStamp, ...]) -> tuple[FileStamp, ...]:
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
