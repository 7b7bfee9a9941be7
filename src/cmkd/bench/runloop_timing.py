"""Timing helpers of the run-loop benchmarks (`cmkd.bench.perf_runloop`): spreads over
repeats, the load average, quiet Lightning, a phase timer."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import Callback


def load() -> float:
    """The 1-minute load average (other work on the machine), rounded."""
    return round(os.getloadavg()[0], 2)


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


@contextmanager
def work_folder(path: str | Path | None) -> Iterator[Path]:
    """`path` (created), or a temporary folder removed afterwards."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="cmkd-runloop-") as tmp:
        yield Path(tmp)


def quiet() -> None:
    """No Lightning banners or warnings between the measurements."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


class Phases(Callback):
    """Seconds in training steps, validation and whole training epochs."""

    def __init__(self) -> None:
        self.seconds = {"steps": 0.0, "validation": 0.0}
        self.epochs: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(time.perf_counter() - self._epoch)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds["steps"] += time.perf_counter() - self._step

    def on_validation_start(self, trainer, module) -> None:
        self._val = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        self.seconds["validation"] += time.perf_counter() - self._val
