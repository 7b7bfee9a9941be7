"""The timing helpers every `cmkd bench perf` section shares: the load average, spreads and
paired ratios over repeats, one call timed by torch's Timer or by the thread's CPU clock, an
epoch clock for Lightning runs, busy processes that load the machine, a work folder and quiet
Lightning. (Machine facts and peak memory: `cmkd.bench.machine`.)"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


def load() -> float:
    """The 1-minute load average (other work on the machine), rounded; nan where the system
    has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def timed_epochs(epochs: int, samples: int, batch_size: int, every: int, untimed: int) -> int:
    """At least `epochs`, and enough that the timed epochs (all but `untimed`: the warm-up, a
    re-match) hold whole cycles of a cost paid on one training step in `every` (SemBridge's
    SKA): then their mean counts that cost in its proportion, where a median epoch would hold
    it 0 or 1 times. Assumes `samples` training samples in batches of `batch_size`."""
    steps = math.ceil(samples / batch_size)
    cycle = every // math.gcd(steps, every)  # epochs per whole number of cycles
    return untimed + math.ceil(max(epochs - untimed, 1) / cycle) * cycle


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratios(values: list[float], baseline: list[float]) -> dict[str, float]:
    """The spread of per-repeat ratios value / baseline (paired by repeat)."""
    return spread([a / b for a, b in zip(values, baseline, strict=True)])


def seconds(call: Callable[[], Any]) -> float:
    """Seconds of one call, timed by torch.utils.benchmark.Timer (two untimed warm-up calls
    first; CUDA synchronised; torch's thread count kept as it is)."""
    from torch.utils.benchmark import Timer

    timer = Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    return timer.timeit(1).median


def cpu_ms(call: Callable[[], Any], steps: int) -> float:
    """Median CPU milliseconds of the calling thread per call over `steps` calls, after two
    untimed ones: with one intra-op thread the whole call runs there, and other jobs on a
    shared machine disturb a thread's CPU time much less than the wall clock."""
    call(), call()
    times = []
    for _ in range(steps):
        start = time.thread_time()
        call()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def _samples(batch: Any) -> int:
    """Training samples in a batch: a dict batch, or a block of whole data epochs
    (cmkd.epochs.EpochBlock)."""
    if isinstance(batch, dict):
        return len(batch["label"])
    return len(batch.dataset) * len(batch.epochs)


class EpochClock(Callback):
    """Per training epoch: wall seconds from its start to its end (batches, validation, any
    callback that runs at epoch start after this one, such as DynM's re-match), the CPU seconds
    of the thread running it (the loaders run there: cmkd uses no worker processes on the CPU),
    the seconds inside the training steps (forward, backward, optimiser; not the data fetch)
    and the samples seen; and the seconds of all validation passes."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.epoch_cpu_seconds: list[float] = []
        self.step_seconds: list[float] = []
        self.samples: list[int] = []
        self.validation_seconds = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch, self._cpu = time.perf_counter(), time.thread_time()
        self._steps, self._n = 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._steps += time.perf_counter() - self._step
        self._n += _samples(batch)

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch)
        self.epoch_cpu_seconds.append(time.thread_time() - self._cpu)
        self.step_seconds.append(self._steps)
        self.samples.append(self._n)

    def on_validation_start(self, trainer, module) -> None:
        self._val = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        self.validation_seconds += time.perf_counter() - self._val


@contextmanager
def busy_processes(n: int, settle_s: float = 5.0) -> Iterator[None]:
    """`n` child processes that spin on a core each (load the machine like other users), given
    `settle_s` seconds to show in the load average before the block runs."""
    children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if n:
            time.sleep(settle_s)
        yield
    finally:
        for child in children:
            child.kill()
            child.wait()


@contextmanager
def work_folder(path: str | Path | None) -> Iterator[Path]:
    """`path` (created), or a temporary folder removed afterwards."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="cmkd-perf-") as tmp:
        yield Path(tmp)


def quiet() -> None:
    """No Lightning banners or warnings between the measurements."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
