"""What a benchmark ran on and what it used: the machine's facts and peak memory."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """CPU, threads, library versions, GPU and load: recorded beside every benchmark's numbers,
    since a ratio means little without the machine it was taken on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load_average": [round(x, 2) for x in load],
    }


def describe(facts: dict[str, Any]) -> str:
    """One line of `machine()` facts for a page."""
    return (
        f"{facts['platform']}, Python {facts['python']}, {facts['cpus']} CPUs "
        f"({facts['cpu_model']}), torch {facts['torch']}, GPU: {facts.get('gpu', 'none')}"
    )


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def peak_memory() -> Iterator[dict[str, float | None]]:
    """Memory used by the block, filled in on exit (MiB):
    - peak_rss_mib: the process's resident high-water mark during the block (on Linux reset
      at the start through /proc/self/clear_refs, so it is the block's own; elsewhere the
      process's peak so far);
    - added_mib: that peak minus the resident size at the start, what the block itself added
      (None where the mark cannot be reset);
    - peak_gpu_mib: the block's peak GPU allocation, where CUDA is used."""
    box: dict[str, float | None] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield box
    peak = _status_kib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 1024 if os.uname().sysname == "Darwin" else peak  # bytes on macOS
    box["peak_rss_mib"] = round(peak / 1024, 1)
    box["added_mib"] = max(peak - before, 0) / 1024 if reset and before is not None else None
    if torch.cuda.is_available():
        box["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
