"""The Hugging Face Hub: its cache first, the network only when reachable, and its failures in one line."""

from __future__ import annotations

import os
from typing import Any

from ce_inspect.errors import ModelNotFoundError


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


def from_pretrained(loader: Any, folder: str, source: str, revision: str | None, **kwargs: Any) -> Any:
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
