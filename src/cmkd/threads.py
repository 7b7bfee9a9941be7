"""How many CPU threads a training run uses (`run.threads`).

torch takes every core by default. On a machine whose cores are already busy (shared servers,
several runs at once), a second thread mostly waits for a core. Measured on 2 shared cores
(`cmkd bench perf`, its threads section: a small-CNN step): with OpenMP's default waiting, 2
threads ran 9-15x slower than 1 (idle threads spin on the cores the working one needs); with
passive waiting, 1.25x slower at a load of 1.8 and as fast at a load of 5. `auto` therefore
takes the cores not busy when the run starts (cores minus the 1-minute load average, rounded,
at least 1), never more than torch's own default, so OMP_NUM_THREADS or an earlier
`torch.set_num_threads` still caps it. The count is set for the run and put back afterwards;
results.json records it.

The count can differ between two runs of one config (the load differs), and a different count
can change the last bits of float reductions: fix `run.threads` to a number where bit-equal
reruns matter.

OpenMP's waiting policy is read once, when the OpenMP runtime loads (with `import torch`):
`OMP_WAIT_POLICY=PASSIVE` only takes effect if it is in the environment before that, so the
`cmkd` command sets it before anything imports torch (`passive_openmp_wait`), and a Python
user who wants it sets it before importing torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cmkd.errors import CmkdError


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores(load: float | None = None, cores: int | None = None) -> int:
    """Cores not busy: `cores` minus the 1-minute load average, rounded, at least 1."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): assume an idle machine
            load = 0.0
    return max(1, min(cores, round(cores - load)))


def choose_threads(setting: int | str | None, default: int) -> int | None:
    """The thread count for `run.threads` (None: leave torch alone). `default` is torch's
    current count, the most `auto` takes."""
    if setting is None:
        return None
    if setting == "auto":
        return max(1, min(default, idle_cores()))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise CmkdError(f"run.threads must be auto or an integer >= 1, got {setting!r}")
    return setting


@contextmanager
def training_threads(setting: int | str | None) -> Iterator[int]:
    """Run the block with the chosen number of torch threads; yields the count in use, and
    restores the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    chosen = choose_threads(setting, before)
    if chosen is None or chosen == before:
        yield before
        return
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)


def passive_openmp_wait() -> bool:
    """Put OMP_WAIT_POLICY=PASSIVE in the environment unless the user chose a policy: idle
    OpenMP threads then sleep instead of spinning on cores that other work needs. Only
    effective before the OpenMP runtime loads (before `import torch`); returns whether it
    could still take effect."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
