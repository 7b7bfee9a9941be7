"""Run-loop costs (issues #16, #19), each as a ratio against a baseline timed in the same
process, variants interleaved over repeats (other work shares the CPU), medians with their
spread and the load average each ran under:

- `fit_vs_plain`: a 1,000-step full-batch fit of a linear model on 200 real 50-d samples
  through `cmkd.recipes.train_classifier`, start-up and test passes included, against a plain
  PyTorch loop (same network, data, optimiser and steps);
- `checkpoint_costs`: the checkpoint share of a distillation epoch (small CNN and ResNet18
  students of a ResNet18 MS teacher, EuroSAT paired) as written now against what the old
  checkpoints cost (teacher weights and optimiser state in best and last, every epoch, fsync),
  and the file sizes;
- `precision_steps`: a KD+SKA training step and epoch at 32-true against `precision: auto`
  (bf16-mixed where the CPU has AVX512-BF16/AMX), with and without channels-last;
- `threads_under_load`: a training step with 1, 2 and `auto` threads, at the machine's load and
  with busy-looping processes added, with OpenMP's default and passive waiting.

`python -m cmkd.bench.perf_runloop` runs them all and prints the markdown section.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmkd.bench.perf_runloop_distill import checkpoint_costs, precision_steps
from cmkd.bench.runloop_timing import Phases, load, quiet, ratios, spread, work_folder
from cmkd.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.threads import training_threads

__all__ = [
    "checkpoint_costs",
    "fit_vs_plain",
    "main",
    "precision_steps",
    "render_runloop",
    "runloop_report",
    "threads_under_load",
]

# --- (a) a tiny fit against a plain loop -------------------------------------------------------


def tiny_npz(where: Path, rows_per_class: int = 30, features: int = 50) -> Path:
    """Real rows of mfeat's Karhunen-Loeve view (the first `rows_per_class` of each digit, the
    first `features` coefficients) as an npz source: with 1/6 each for validation and test,
    200 training rows of 50 features."""
    from cmkd.data.root import resolve_data_root
    from cmkd.data.sources.mfeat import ROWS_PER_CLASS, load_mfeat

    kar = load_mfeat(resolve_data_root(), ["kar"])["kar"]
    rows = np.concatenate([np.arange(c * ROWS_PER_CLASS, c * ROWS_PER_CLASS + rows_per_class)
                           for c in range(10)])  # fmt: skip
    path = where / "mfeat-kar-tiny.npz"
    np.savez(path, x_kar=kar.x[rows, :features], y=kar.y[rows], ids=kar.ids[rows])
    return path


def _plain_fit(x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """The baseline: the same network (cmkd's linear model with its input standardisation,
    seeded the same way), full-batch SGD with momentum 0.9 (cmkd's sgd), `epochs` steps."""
    from cmkd.data.normalize import Standardize
    from cmkd.models.model import build_model
    from cmkd.seeding import seeded

    start = time.perf_counter()
    spec = {"backbone": "linear", "in_chans": x.shape[1], "num_classes": int(y.max()) + 1}
    with seeded(0, "network"):
        net = build_model(spec, Standardize.fit(x))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        loss = F.cross_entropy(net(x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _cmkd_fit(data, optim, run: RunConfig) -> dict[str, Any]:
    from cmkd.recipes import train_classifier

    phases = Phases()
    start = time.perf_counter()
    result = train_classifier(
        data, ModelConfig(backbone="linear"), optim, run, "kar", 0, callbacks=(phases,)
    )
    assert result["train_samples"] == 200
    return {
        "seconds": time.perf_counter() - start,
        "fit": result["fit_seconds"],
        "steps": phases.seconds["steps"],
        "validation": phases.seconds["validation"],
        "checkpoint": result["run"]["checkpoint_seconds"],
        "blocks": result["run"]["epochs_per_lightning_epoch"],
        "test_acc": result["best"]["test"]["acc"],
    }


PLAIN = "plain PyTorch loop"


def fit_vs_plain(
    repeats: int = 5, epochs: int = 1000, output_dir: str | Path | None = None
) -> dict[str, Any]:
    """Wall time of `train_classifier` (data preparation, module, Trainer, fit, both test
    passes, results.json) for a full-batch linear model, per run-loop variant, against the
    plain loop; the variants' order rotates every repeat."""
    from cmkd.data.datamodule import prepare_data

    quiet()
    lr = 0.01
    optim = OptimConfig(optimizer="sgd", lr=lr, epochs=epochs)
    runs: dict[str, list[dict[str, Any]]] = {PLAIN: []}
    with work_folder(output_dir) as folder:
        path = tiny_npz(folder)
        data = DataConfig(source="npz", options={"path": str(path)}, batch_size=200,
                          val_fraction=1 / 6, test_fraction=1 / 6)  # fmt: skip
        train = prepare_data(data, 0).rows("kar", "train")
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        base = RunConfig(str(folder / "runs"), accelerator="cpu", progress_bar=False)
        base = replace(base, overwrite=True)
        variants = {
            "cmkd (defaults)": base,
            "cmkd, validate and checkpoint every 20 epochs": replace(base, val_every=20),
            "cmkd, validate and checkpoint every 50 epochs": replace(base, val_every=50),
            "cmkd, one Lightning epoch per data epoch": replace(base, epoch_blocks=False),
            "cmkd, validate and checkpoint every epoch (fsync)": replace(
                base, epoch_blocks=False, val_every=1, checkpoint_every=1, durable_checkpoints=True
            ),
        }
        names = list(variants)
        # Both sides with the threads a cmkd run takes here (run.threads: auto).
        with training_threads("auto") as threads:
            for rep in range(repeats):
                for name in [PLAIN, *names[rep % len(names) :], *names[: rep % len(names)]]:
                    at = load()
                    if name == PLAIN:
                        record = {"seconds": _plain_fit(x, y, epochs, lr)}
                    else:
                        run = replace(variants[name], name=f"v{names.index(name)}")
                        record = _cmkd_fit(data, optim, run)
                    runs.setdefault(name, []).append({**record, "load": at})
    plain = [r["seconds"] for r in runs[PLAIN]]
    summary: dict[str, Any] = {}
    for name, records in runs.items():
        seconds = [r["seconds"] for r in records]
        entry = {"seconds": spread(seconds), "ratio": ratios(seconds, plain)}
        entry["load"] = [r["load"] for r in records]
        for part in ("fit", "steps", "validation", "checkpoint"):
            if part in records[0]:
                entry[part] = statistics.median(r[part] for r in records)
        if "blocks" in records[0]:
            entry["epochs_per_lightning_epoch"] = records[0]["blocks"]
            entry["test_acc"] = records[0]["test_acc"]
        summary[name] = entry
    return {"epochs": epochs, "train_rows": 200, "features": 50, "repeats": repeats,
            "threads": threads, **summary}  # fmt: skip


# --- (d) threads on shared cores --------------------------------------------------------------

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


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """`n` child processes that spin on a core each (load the machine like other users)."""
    children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(5)  # let the load average see them
        yield
    finally:
        for child in children:
            child.kill()
            child.wait()


def threads_under_load(busy: int = 4, repeats: int = 5, steps: int = 3) -> dict[str, Any]:
    """A small-CNN training step (batch 64 of EuroSAT RGB) with 1, 2 and `auto` threads, in a
    fresh process per OpenMP waiting policy (it is read when OpenMP loads), with no added load
    and with `busy` spinning processes."""
    out: dict[str, Any] = {"cores": os.cpu_count()}
    for extra in (0, busy):
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
            out[f"+{extra} busy, {policy}"] = {
                "auto_threads": got["auto"],
                "load": [round(v, 2) for v in got["loads"]],
                **{
                    f"threads {k}": {
                        "seconds": spread(v),
                        "vs_1": spread([a / b for a, b in zip(v, one, strict=True)]),
                    }
                    for k, v in got["times"].items()
                },
            }
    return out


# --- report -----------------------------------------------------------------------------------


def runloop_report(quick: bool = False) -> dict[str, Any]:
    """Every measurement of this module (`quick`: fewer repeats and epochs, for a smoke run)."""
    report: dict[str, Any] = {"machine": _machine()}
    report["fit_vs_plain"] = fit_vs_plain(repeats=2 if quick else 5)
    report["threads"] = threads_under_load(repeats=2 if quick else 5)
    with work_folder(None) as folder:  # one trained teacher for both distillation measurements
        report["precision"] = precision_steps(repeats=2 if quick else 5, output_dir=folder)
        report["checkpoints"] = checkpoint_costs(epochs=2 if quick else 3, output_dir=folder)
    return report


def _machine() -> dict[str, Any]:
    from cmkd.precision import cpu_flags

    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
    return {
        "cpus": os.cpu_count(),
        "bf16_flags": flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _x(spread: dict[str, float]) -> str:
    return f"{spread['median']:.2f}x [{spread['min']:.2f}-{spread['max']:.2f}]"


def _s(spread: dict[str, float], scale: float = 1.0, unit: str = "s") -> str:
    return f"{spread['median'] * scale:.3g} {unit}"


def render_runloop(report: dict[str, Any]) -> list[str]:
    """The report as markdown lines (medians, [min-max] over repeats, load averages)."""
    lines = ["## Run loop (issues #16, #19)", ""]
    if m := report.get("machine"):
        lines += [f"{m['cpus']} CPUs, bf16 flags {m['bf16_flags']}, torch {m['torch']}, "
                  f"OMP_WAIT_POLICY {m['omp_wait_policy']}.", ""]  # fmt: skip
    fit = report.get("fit_vs_plain")
    if fit:
        lines += [
            f"### A {fit['epochs']}-step full-batch fit ({fit['train_rows']} x {fit['features']}-d"
            " mfeat rows, linear model, SGD) against a plain PyTorch loop",
            "",
            "| variant | seconds | / plain loop | fit | steps | validation | checkpoints |"
            " Lightning epochs of | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in fit.items():
            if not isinstance(e, dict) or "seconds" not in e:
                continue
            cells = [f"{e[k]:.2f}" if k in e else "" for k in
                     ("fit", "steps", "validation", "checkpoint")]  # fmt: skip
            lines.append(
                f"| {name} | {_s(e['seconds'])} | {_x(e['ratio'])} | {' | '.join(cells)} | "
                f"{e.get('epochs_per_lightning_epoch', '')} | {e['load']} |"
            )
        lines.append("")
    threads = report.get("threads")
    if threads:
        lines += [
            "### Threads: a small-CNN training step (batch 64) relative to 1 thread",
            "",
            "| condition | 1 thread | 2 threads / 1 | auto / 1 (threads) | load |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, e in threads.items():
            if not isinstance(e, dict):
                continue
            lines.append(
                f"| {name} | {_s(e['threads 1']['seconds'], 1e3, 'ms')} | "
                f"{_x(e['threads 2']['vs_1'])} | {_x(e['threads auto']['vs_1'])} "
                f"({e['auto_threads']}) | {e['load']} |"
            )
        lines.append("")
    prec = report.get("precision")
    if prec:
        lines += [
            f"### Precision and layout: KD+SKA, batch 64 (auto = {prec['auto_is']} here)",
            "",
            "| teacher -> student | fp32 step | fp32 channels-last | bf16 | bf16 channels-last |"
            " epoch auto / 32-true | load |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in prec.items():
            if not isinstance(e, dict):
                continue
            lines.append(
                f"| {name} | {_s(e['fp32']['seconds'], 1e3, 'ms')} | "
                f"{_x(e['fp32 channels-last']['vs_fp32'])} | {_x(e['bf16']['vs_fp32'])} | "
                f"{_x(e['bf16 channels-last']['vs_fp32'])} | {_x(e['epoch_auto_vs_fp32'])} | "
                f"{e['load']} |"
            )
        lines.append("")
    ckpt = report.get("checkpoints")
    if ckpt:
        lines += [
            f"### Checkpoints: distillation from a {ckpt['teacher']} MS teacher, per epoch",
            "",
            "| student | epoch | before: s, share | now: s, share | async: s, share |"
            " best MB before / now | last MB before / now | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in ckpt.items():
            if not isinstance(e, dict):
                continue
            b, n, a = e["before"], e["now"], e["async"]
            lines.append(
                f"| {name} | {e['epoch_seconds']:.2f} s | "
                f"{b['seconds']:.3f}, {100 * b['share']:.1f} % | "
                f"{n['seconds']:.3f}, {100 * n['share']:.1f} % | "
                f"{a['seconds']:.3f}, {100 * a['share']:.1f} % | "
                f"{b['best_mb']:.1f} / {n['best_mb']:.1f} | "
                f"{b['last_mb']:.1f} / {n['last_mb']:.1f} | "
                f"{e['load']} |"
            )
        lines.append("")
    return lines


def main() -> None:
    """Run every measurement, print the markdown section, and keep the numbers as JSON
    (`CMKD_RUNLOOP_JSON`, default runs/perf-runloop.json). CMKD_RUNLOOP_QUICK=1: fewer
    repeats. Runs with OMP_WAIT_POLICY=PASSIVE, as the `cmkd` command does: `python -m`
    imports torch (through cmkd.bench) before this runs, so it restarts itself with it."""
    from cmkd.io import write_json

    if "OMP_WAIT_POLICY" not in os.environ:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        os.execve(sys.executable, [sys.executable, "-m", "cmkd.bench.perf_runloop"], env)
    report = runloop_report(quick=os.environ.get("CMKD_RUNLOOP_QUICK") == "1")
    write_json(os.environ.get("CMKD_RUNLOOP_JSON", "runs/perf-runloop.json"), report)
    print("\n".join(render_runloop(report)))


if __name__ == "__main__":
    main()
