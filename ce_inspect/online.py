"""Whether the Hugging Face Hub can be used from here: offline mode, and one connection attempt per process.

huggingface_hub and datasets retry for about 50 s when the Hub is down; models (``model.hub``) and Hub data
sets (``data.readers``) ask here first, after their local cache, so that a machine without network fails in
a second with one line that says why.
"""

from __future__ import annotations

import os

#: host -> whether the one connection attempt to it succeeded (each host is tried once per process).
_REACHABLE: dict[str, bool] = {}


def hub_host() -> str:
    """The Hub endpoint's host (``HF_ENDPOINT``, else huggingface.co)."""
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_offline() -> bool:
    """Whether offline mode is on (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint, its answer kept for the rest of the process."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = hub_host(), endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def hub_unavailable() -> str | None:
    """Why nothing can be downloaded, as an error message says it: offline mode, or the Hub found unreachable;
    None when neither is known (the Hub was reached, or not tried)."""
    if hub_offline():
        return "offline mode is on (HF_HUB_OFFLINE)"
    if not _REACHABLE.get(hub_host(), True):
        return "the Hub cannot be reached from here"
    return None


__all__ = ["hub_host", "hub_offline", "hub_reachable", "hub_unavailable"]
