"""The machine a benchmark ran on, in one line for its report (the benchmarks' one copy)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """CPU, cores, torch (with its thread count) and Python, e.g. for a report's header line."""
    import torch

    threads, python = torch.get_num_threads(), platform.python_version()
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), Python {python}"
