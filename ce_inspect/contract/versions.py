"""``versions``: what produced a document (ce-inspect, torch, transformers, Python and the device's name),
declared once (``VersionsDict``) and computed once (``versions``), in every document ce-inspect writes."""

# No `from __future__ import annotations` here: TypedDicts read `NotRequired[...]` from evaluated
# annotations only, and with string annotations every key would silently count as required.

import functools
import platform

from ce_inspect.contract.wire import TypedDict

#: This source tree's version (pyproject.toml's; ``ce_inspect.__version__``); an installed package reports its
#: metadata's.
SOURCE_VERSION = "0.1.0"


class VersionsDict(TypedDict):
    """What produced the document: figures can move within float tolerance from one version to another."""

    ce_inspect: str
    torch: str  # torch.__version__ (its build: "2.13.0+cu128", "2.13.0+cpu")
    transformers: str
    python: str  # platform.python_version()
    # The name of the device the model ran on: "cpu", the CUDA device's (torch.cuda.get_device_name:
    # "NVIDIA H200"), "mps"; "none" without a model (audit --no-model). Two models on different devices
    # (diff, prefs): both names, the document's first model first, joined by " / ".
    device: str


def ce_inspect_version() -> str:
    """This installation's version: the package metadata's, or the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ce-inspect")
    except PackageNotFoundError:
        return SOURCE_VERSION


@functools.cache
def _packages() -> tuple[str, str, str, str]:
    import torch
    import transformers

    return ce_inspect_version(), str(torch.__version__), str(transformers.__version__), platform.python_version()


@functools.cache
def device_name(device: str) -> str:
    """The name of a model's device (``LoadedModel.device``: "cpu", "cuda:1", "mps", "device_map=auto")."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if kind.startswith("device_map="):  # spread by accelerate: the accelerators it could use
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        return " / ".join(dict.fromkeys(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    return kind  # cpu, mps, xpu, ...; "none" for no model


def versions(*devices: str) -> VersionsDict:
    """The versions of what produces the figures here and the name of the device(s) the model(s) ran on
    (the device strings of ``LoadedModel.device``, first model first; none given: "none"). Cached: torch and
    transformers are asked once, each device once."""
    ce_inspect, torch, transformers, python = _packages()
    device = " / ".join(dict.fromkeys(device_name(d) for d in devices)) or "none"
    return {"ce_inspect": ce_inspect, "torch": torch, "transformers": transformers, "python": python, "device": device}


def joined(first: VersionsDict, *others: VersionsDict) -> VersionsDict:
    """One document's versions from its models' results' (``diff``: the reference's and the candidate's)."""
    names = dict.fromkeys(name for v in (first, *others) for name in v["device"].split(" / "))
    return {**first, "device": " / ".join(names)}
