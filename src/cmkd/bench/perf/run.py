"""Running `cmkd bench perf`: the chosen sections in page order, each with the load average it
ran under and its minutes, then the page and its store (the raw report, the .json beside the
page; see cmkd.bench.pagestore)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmkd.bench.machine import machine
from cmkd.bench.pagestore import publish
from cmkd.bench.perf.ddp import ddp_accuracy
from cmkd.bench.perf.loading import data_rates
from cmkd.bench.perf.micro import coral_cost, dynm_speed, optimizer_steps
from cmkd.bench.perf.overhead import distill_overhead
from cmkd.bench.perf.page import render
from cmkd.bench.perf.reference_loops import loops
from cmkd.bench.perf.runloop import fit_vs_plain, help_times
from cmkd.bench.perf.runloop_distill import bf16_by_source, checkpoint_costs, precision_steps
from cmkd.bench.perf.ska import measure as ska_overhead
from cmkd.bench.perf.threads import threads_under_load
from cmkd.bench.perf.timing import load
from cmkd.bench.perf.weight_grad import weight_grad_costs
from cmkd.config import ModelConfig
from cmkd.errors import CmkdError

SECTIONS = (
    "help",
    "runloop",
    "loops",
    "overhead",
    "overhead_large",
    "ska",
    "precision",
    "weight_grad",
    "optimizer",
    "threads",
    "checkpoints",
    "dynm",
    "coral",
    "data",
    "ddp",
)
"""What `cmkd bench perf` measures, in page order (cmkd.bench.perf.page.SECTIONS)."""


def _steps(
    epochs: int, repeats: int, runs_dir: str, large_backbone: str
) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each section's measurement at the run's sizes: `repeats` interleaved repeats of every
    timing (five times as many alternating steps for SKA's step ratios), `epochs` epochs per
    timed distillation run."""
    distill_costs = f"{runs_dir}/distill-costs"  # one trained teacher for both sections
    return {
        "help": lambda: help_times(repeats=max(repeats, 3)),
        "runloop": lambda: fit_vs_plain(repeats=repeats, output_dir=f"{runs_dir}/runloop"),
        "loops": lambda: loops(epochs=epochs, repeats=repeats),
        "overhead": lambda: distill_overhead(epochs, repeats, output_dir=runs_dir),
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
        "ska": lambda: ska_overhead(
            repeats=5 * repeats,
            epochs=epochs,
            epoch_repeats=repeats,
            output_dir=f"{runs_dir}/ska",
        ),
        "precision": lambda: {
            **precision_steps(repeats=repeats, output_dir=distill_costs),
            "sources": bf16_by_source(repeats=max(repeats, 5)),
        },
        "weight_grad": lambda: weight_grad_costs(repeats=repeats),
        "optimizer": lambda: optimizer_steps(repeats=max(repeats, 5)),
        "threads": lambda: threads_under_load(repeats=repeats),
        "checkpoints": lambda: checkpoint_costs(epochs=min(epochs, 3), output_dir=distill_costs),
        "dynm": lambda: dynm_speed(repeats=repeats),
        "coral": lambda: coral_cost(repeats=repeats),
        "data": lambda: data_rates(repeats=repeats),
        "ddp": lambda: ddp_accuracy(output_dir=f"{runs_dir}/ddp"),
    }


def _machine() -> dict[str, Any]:
    """`cmkd.bench.machine.machine()` with what the sections depend on besides: the CPU's
    bf16 support (it decides `precision: auto`) and OpenMP's waiting policy."""
    from cmkd.precision import cpu_flags

    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
    return {
        **machine(),
        "bf16_flags": flags,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _kept(page: Path, here: dict[str, Any], measured: set[str]) -> dict[str, Any]:
    """The sections of the page's store that this run does not measure, each with the command
    and date of the run that measured it; nothing where the page has no perf store."""
    from cmkd.bench.pagestore import read_store, store_path

    if not store_path(page).is_file():
        return {}
    old = read_store(page)
    if old.get("kind") != "perf":
        return {}
    same = ("cpus", "cpu_model", "torch")
    if any(old["machine"].get(k) != here.get(k) for k in same):
        raise CmkdError(
            f"{page} was measured on another machine "
            f"({', '.join(str(old['machine'].get(k)) for k in same)}): "
            "its ratios cannot sit beside this run's; pass --keep false to start afresh"
        )
    kept: dict[str, Any] = {"ran": {}}
    for name in SECTIONS + ("bf16_accuracy", "ska_every_accuracy"):
        if name in measured or name not in old:
            continue
        kept[name] = old[name]
        ran = old.get("ran", {}).get(name)
        if ran is not None:
            kept["ran"][name] = {"command": old["command"], "finished": old["finished"], **ran}
    return kept


def perf(
    sections: tuple[str, ...] = SECTIONS,
    epochs: int = 5,
    repeats: int = 3,
    page: str | Path | None = None,
    runs_dir: str = "runs/bench/perf",
    threads: int = 1,
    large_backbone: str = "resnet18",
    accuracy_grid: str | Path | None = None,
    every_grid: str | Path | None = None,
    keep: bool = True,
    command: str = "cmkd bench perf",
) -> dict[str, Any]:
    """Time the sections against their same-process baselines, then write the page (default
    runs_dir/performance.md) and its store; returns the store. `accuracy_grid`: a grid with a
    bf16 - fp32 architecture contrast, read into the page's bf16 accuracy check; `every_grid`
    likewise a grid contrasting SKA every k steps with every step. `keep`: the
    page's stored sections that this run does not measure stay (each names the run it came
    from), where the page was measured on the same machine."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise CmkdError(f"unknown perf section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if epochs < 3:
        raise CmkdError(
            f"bench perf: --epochs must be >= 3 (warm-up, re-match, steady), got {epochs}"
        )
    page = Path(page or Path(runs_dir) / "performance.md")
    report: dict[str, Any] = {"kind": "perf", "command": command, "machine": _machine()}
    report["ran"] = {}
    if keep:
        report.update(_kept(page, report["machine"], set(sections)))
    if accuracy_grid is not None:
        from cmkd.bench.perf.accuracy import bf16_accuracy

        report["bf16_accuracy"] = bf16_accuracy(accuracy_grid)  # checked before any timing
    if every_grid is not None:
        from cmkd.bench.perf.accuracy import ska_every_accuracy

        report["ska_every_accuracy"] = ska_every_accuracy(every_grid)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    steps = _steps(epochs, repeats, runs_dir, large_backbone)
    # Sections run in the order given (the page keeps its own order); the page is written after
    # each one, so a run stopped part-way still leaves what it measured.
    chosen = list(dict.fromkeys(sections))
    report["minutes"], report["finished"] = 0.0, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if not chosen:
        publish(page, report, render)
    for done, name in enumerate(chosen, 1):
        print(f"perf: {name} ...", flush=True)
        began, at = time.perf_counter(), load()
        report[name] = steps[name]()
        minutes = (time.perf_counter() - began) / 60
        report["ran"][name] = {"load": [at, load()], "minutes": minutes}
        report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        report["minutes"] = (time.perf_counter() - start) / 60
        report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if done < len(chosen):
            report["finished"] += f"; partial, still to run: {', '.join(chosen[done:])}"
        publish(page, report, render)
    print(page.read_text())
    print(f"Saved {page}")
    return report
