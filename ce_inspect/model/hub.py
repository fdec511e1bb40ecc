"""The Hugging Face Hub: its cache first, the network only when reachable, and its failures in one line."""

from __future__ import annotations

from typing import Any

from ce_inspect.errors import ModelNotFoundError
from ce_inspect.online import hub_host, hub_offline, hub_reachable, hub_unavailable


def urlparse_host() -> str:
    """The Hub endpoint's host (``online.hub_host``)."""
    return hub_host()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint (``online.hub_reachable``): huggingface_hub itself retries for
    ~50 s when it is down."""
    return hub_reachable(timeout)


def _hub_error(spec: str, revision: str | None, exc: Exception) -> ModelNotFoundError:
    rev = f" at revision {revision}" if revision else ""
    why = hub_unavailable() or "the Hub has no such model (or it is private or gated)"
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
        if hub_offline() or not _hub_reachable():
            raise _hub_error(folder, revision, cached_exc) from cached_exc
    try:
        return loader(folder, revision=revision, **kwargs)
    except OSError as exc:
        raise _hub_error(folder, revision, exc) from exc
