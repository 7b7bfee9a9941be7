"""Threads on shared cores (issues #16, #19): a small-CNN training step with 1, 2 and `auto`
threads, at the machine's load and with busy-looping processes added, each under OpenMP's
default waiting and under passive waiting (what `cmkd` sets before torch loads), as ratios to
the 1-thread step timed in the same process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from cmkd.bench.perf.timing import busy_processes, ratios, spread

_WORKER = """
import json, os, statistics, sys, time
import torch, torch.nn.functional as F
from cmkd.config import DataConfig
from cmkd.data.datamodule import ModalityDataset, prepare_data
from cmkd.models.backbones import create_network
from cmkd.threads import choose_threads
repeats, steps = int(sys.argv[1]), int(sys.argv[2])
rows = prepare_data(DataConfig(source="eurosat_paired"), 0).rows("rgb", "train")
x = ModalityDataset(rows, "rgb").x[:64].float() / 255
y = torch.from_numpy(rows.y[:64])
torch.manual_seed(0)
net = create_network("small_cnn", 3, 10)
opt = torch.optim.Adam(net.parameters())
def step():
    start = time.perf_counter()
    loss = F.cross_entropy(net(x).logits, y)
    opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - start
default = torch.get_num_threads()
auto = choose_threads("auto", default)
settings = {"1": 1, "2": 2, "auto": auto}
times = {k: [] for k in settings}
for n in (1, 2):
    torch.set_num_threads(n); step()
loads = []
for _ in range(repeats):
    loads.append(os.getloadavg()[0])
    for name, n in settings.items():
        torch.set_num_threads(n)
        times[name].append(statistics.median(step() for _ in range(steps)))
print(json.dumps({"times": times, "auto": auto, "loads": loads}))
"""


def threads_under_load(busy: int = 4, repeats: int = 5, steps: int = 3) -> dict[str, Any]:
    """A small-CNN training step (batch 64 of EuroSAT RGB) with 1, 2 and `auto` threads, in a
    fresh process per OpenMP waiting policy (it is read when OpenMP loads), with no added load
    and with `busy` spinning processes (0: without)."""
    conditions: dict[str, Any] = {}
    for extra in dict.fromkeys((0, busy)):  # busy 0: the machine as found only
        for policy in ("default", "PASSIVE"):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                                    "OMP_NUM_THREADS")}  # fmt: skip
            if policy == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            with busy_processes(extra):
                proc = subprocess.run(
                    [sys.executable, "-c", _WORKER, str(repeats), str(steps)],
                    capture_output=True, text=True, env=env, check=True,
                )  # fmt: skip
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            one = got["times"]["1"]
            conditions[f"+{extra} busy, {policy}"] = {
                "auto_threads": got["auto"],
                "load": [round(v, 2) for v in got["loads"]],
                **{
                    f"threads {k}": {
                        "seconds": spread(v),
                        "vs_1": ratios(v, one),
                    }
                    for k, v in got["times"].items()
                },
            }
    return {"cores": os.cpu_count(), "busy": busy, "conditions": conditions}
