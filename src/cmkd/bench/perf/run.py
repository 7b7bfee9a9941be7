"""Running `cmkd bench perf`: the chosen sections, then the page and its store (the raw report,
the .json beside the page; see cmkd.bench.pagestore)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from cmkd.bench.machine import machine
from cmkd.bench.pagestore import publish
from cmkd.bench.perf.ddp import ddp_accuracy
from cmkd.bench.perf.loading import data_rates
from cmkd.bench.perf.micro import coral_cost, dynm_speed, ska_breakdown, ska_vs_student
from cmkd.bench.perf.overhead import distill_overhead
from cmkd.bench.perf.page import render
from cmkd.config import ModelConfig
from cmkd.errors import CmkdError

SECTIONS = ("data", "dynm", "coral", "ska", "overhead", "overhead_large", "ddp")


def perf(
    sections: tuple[str, ...] = SECTIONS,
    epochs: int = 5,
    repeats: int = 3,
    page: str | Path | None = None,
    runs_dir: str = "runs/bench/perf",
    threads: int = 1,
    large_backbone: str = "resnet18",
    command: str = "cmkd bench perf",
) -> dict[str, Any]:
    """Time the sections against their same-process baselines, then write the page (default
    runs_dir/performance.md) and its store; returns the store."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise CmkdError(f"unknown perf section(s) {sorted(unknown)}")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    report: dict[str, Any] = {"kind": "perf", "command": command, "machine": machine()}
    steps = {
        "data": lambda: data_rates(repeats=repeats),
        "dynm": lambda: dynm_speed(repeats=repeats),
        "coral": lambda: coral_cost(repeats=repeats),
        "ska": lambda: {"parts": ska_breakdown(), "scale": ska_vs_student()},
        "overhead": lambda: distill_overhead(epochs, repeats, output_dir=runs_dir),
        "ddp": lambda: ddp_accuracy(output_dir=f"{runs_dir}/ddp"),
        # SKA's cost is nearly fixed while the student's grows with it: the paper's backbones
        # are ResNet34 / MobileNetV2 / ShuffleNetV2, so time the ratio at resnet18 too.
        "overhead_large": lambda: distill_overhead(
            epochs,
            repeats,
            student=ModelConfig(backbone=large_backbone),
            teacher=ModelConfig(backbone=large_backbone),
            output_dir=runs_dir,
            only=["KD (teacher cache)", "SemBridge (KD + SKA + DynM)"],
        ),
    }
    for name in SECTIONS:
        if name in sections:
            print(f"perf: {name} ...", flush=True)
            report[name] = steps[name]()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["minutes"] = (time.perf_counter() - start) / 60
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = publish(page or Path(runs_dir) / "performance.md", report, render)
    print(page.read_text())
    print(f"Saved {page}")
    return report
