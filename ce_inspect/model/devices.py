"""Devices and dtypes: the one validator of device and dtype strings (no torch), and what ``auto`` means here."""

from __future__ import annotations

import re
from typing import Any

from ce_inspect.distributed import detect_launch, rank_device
from ce_inspect.errors import DeviceError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


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
