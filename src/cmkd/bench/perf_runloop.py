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
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig, TermConfig

EUROSAT = DataConfig(source="eurosat_paired", batch_size=64)
KD_SKA = [TermConfig("kd", 0.5, {"temperature": 4.0}), TermConfig("ska", 0.3)]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


@contextmanager
def _folder(path: str | Path | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="cmkd-runloop-") as tmp:
        yield Path(tmp)


def _quiet() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


class _Phases(Callback):
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


# --- (a) a tiny fit against a plain loop -------------------------------------------------------


def tiny_npz(folder: Path, rows_per_class: int = 30, features: int = 50) -> Path:
    """Real rows of mfeat's Karhunen-Loeve view (the first `rows_per_class` of each digit, the
    first `features` coefficients) as an npz source: with 1/6 each for validation and test,
    200 training rows of 50 features."""
    from cmkd.data.root import resolve_data_root
    from cmkd.data.sources.mfeat import ROWS_PER_CLASS, load_mfeat

    kar = load_mfeat(resolve_data_root(), ["kar"])["kar"]
    rows = np.concatenate([np.arange(c * ROWS_PER_CLASS, c * ROWS_PER_CLASS + rows_per_class)
                           for c in range(10)])  # fmt: skip
    path = folder / "mfeat-kar-tiny.npz"
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


def fit_vs_plain(
    repeats: int = 5, epochs: int = 1000, output_dir: str | Path | None = None
) -> dict[str, Any]:
    """Wall time of `train_classifier` (data preparation, module, Trainer, fit, both test
    passes, results.json) for a full-batch linear model, per run-loop variant, against the
    plain loop; variants rotate order every repeat."""
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import train_classifier

    _quiet()
    lr = 0.01
    with _folder(output_dir) as folder:
        data = DataConfig(
            source="npz",
            options={"path": str(tiny_npz(folder))},
            val_fraction=1 / 6,
            test_fraction=1 / 6,
            batch_size=200,
        )
        train = prepare_data(data, 0).rows("kar", "train")
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        base = RunConfig(str(folder / "runs"), accelerator="cpu", progress_bar=False)
        base = replace(base, overwrite=True)
        variants = {
            "cmkd (defaults)": base,
            "cmkd, validate and checkpoint every 50 epochs": replace(base, val_every=50),
            "cmkd, one Lightning epoch per data epoch": replace(base, epoch_blocks=False),
            "cmkd, validate and checkpoint every epoch (fsync)": replace(
                base, epoch_blocks=False, val_every=1, checkpoint_every=1, durable_checkpoints=True
            ),
        }
        optim = OptimConfig(optimizer="sgd", lr=lr, epochs=epochs)
        model = ModelConfig(backbone="linear")
        runs: dict[str, list[dict[str, Any]]] = {"plain PyTorch loop": []}
        names = list(variants)
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in ["plain PyTorch loop", *order]:
                load = _load()
                if name == "plain PyTorch loop":
                    runs[name].append({"seconds": _plain_fit(x, y, epochs, lr), "load": load})
                    continue
                phases = _Phases()
                run = replace(variants[name], name=f"v{names.index(name)}")
                start = time.perf_counter()
                result = train_classifier(data, model, optim, run, "kar", 0, callbacks=(phases,))
                total = time.perf_counter() - start
                assert result["train_samples"] == len(x) == 200
                runs.setdefault(name, []).append(
                    {
                        "seconds": total,
                        "load": load,
                        "fit": result["fit_seconds"],
                        "steps": phases.seconds["steps"],
                        "validation": phases.seconds["validation"],
                        "checkpoint": result["run"]["checkpoint_seconds"],
                        "blocks": result["run"]["epochs_per_lightning_epoch"],
                        "test_acc": result["best"]["test"]["acc"],
                    }
                )
    plain = [r["seconds"] for r in runs["plain PyTorch loop"]]
    summary = {}
    for name, records in runs.items():
        seconds = [r["seconds"] for r in records]
        paired = [s / p for s, p in zip(seconds, plain, strict=True)]
        entry = {"seconds": _spread(seconds), "ratio": _spread(paired)}
        entry["load"] = [r["load"] for r in records]
        for part in ("fit", "steps", "validation", "checkpoint"):
            if part in records[0]:
                entry[part] = statistics.median(r[part] for r in records)
        if "blocks" in records[0]:
            entry["epochs_per_lightning_epoch"] = records[0]["blocks"]
            entry["test_acc"] = records[0]["test_acc"]
        summary[name] = entry
    return {"epochs": epochs, "train_rows": 200, "features": 50, "repeats": repeats, **summary}


# --- (b) checkpoint share of an epoch ---------------------------------------------------------


def _teacher(folder: Path, backbone: str = "resnet18", epochs: int = 1) -> str:
    """A 13-band EuroSAT MS teacher trained `epochs` epochs (its quality is irrelevant to
    costs); reused when the folder already has it."""
    from cmkd.recipes import train_classifier

    run = RunConfig(str(folder), name=f"teacher-{backbone}", accelerator="cpu", progress_bar=False)
    best = folder / f"teacher-{backbone}" / "seed0" / "checkpoints" / "best.ckpt"
    if best.is_file():
        return str(best)
    model = ModelConfig(backbone=backbone)
    return train_classifier(replace(EUROSAT, batch_size=32), model, OptimConfig(epochs=epochs),
                            run, "ms", 0)["checkpoint"]  # fmt: skip


class _OldCheckpoints(Callback):
    """What the checkpoints of cmkd 0.1 cost, written beside the run at each epoch end: the
    full state with the teacher's weights to last.ckpt every epoch and to best.ckpt when
    validation improved, both fsynced."""

    def __init__(self, folder: Path) -> None:
        from cmkd.checkpointing import AtomicCheckpointIO

        self.folder, self.writer = folder, AtomicCheckpointIO(durable=True)
        self.seconds: list[float] = []
        self.best: float | None = None

    def on_train_epoch_end(self, trainer, module) -> None:
        start = time.perf_counter()
        payload = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        teacher = {f"teacher.{k}": v for k, v in module.teacher.state_dict().items()}
        payload["state_dict"].update(teacher)
        self.writer.save_checkpoint(payload, self.folder / "last.ckpt")
        score = trainer.callback_metrics.get("val/acc")
        if score is not None and (self.best is None or float(score) > self.best):
            self.best = float(score)
            self.writer.save_checkpoint(payload, self.folder / "best.ckpt")
        self.seconds.append(time.perf_counter() - start)


def checkpoint_costs(
    students: tuple[str, ...] = ("small_cnn", "resnet18"),
    teacher: str = "resnet18",
    epochs: int = 3,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Per student: the median epoch (training and validation), the checkpoint seconds on the
    training thread now (synchronous and with async_checkpoints) and as before, and the
    sizes of best.ckpt and last.ckpt now and before."""
    from cmkd.recipes import distill_student

    _quiet()
    out: dict[str, Any] = {"teacher": teacher, "epochs": epochs}
    with _folder(output_dir) as folder:
        distill = DistillConfig(teacher=_teacher(folder, teacher), terms=[KD_SKA[0]])
        for student in students:
            entry: dict[str, Any] = {}
            for mode in ("sync", "async"):
                old_folder = folder / f"old-{student}-{mode}"
                old, phases = _OldCheckpoints(old_folder), _Phases()
                run = RunConfig(
                    str(folder),
                    name=f"{student}-{mode}",
                    accelerator="cpu",
                    progress_bar=False,
                    overwrite=True,
                    async_checkpoints=mode == "async",
                )
                load = _load()
                result = distill_student(
                    EUROSAT,
                    ModelConfig(backbone=student),
                    OptimConfig(epochs=epochs),
                    run,
                    distill,
                    "rgb",
                    0,
                    callbacks=(phases, old),
                )
                ckpt = folder / f"{student}-{mode}" / "seed0" / "checkpoints"
                epoch = statistics.median(phases.epochs)
                new = result["run"]["checkpoint_seconds"] / epochs
                before = statistics.median(old.seconds)
                entry[mode] = {
                    "load": load,
                    "epoch_seconds": epoch,
                    "checkpoint_seconds_per_epoch": new,
                    "share": new / (epoch + new),
                }
                if mode == "sync":
                    entry["before"] = {
                        "checkpoint_seconds_per_epoch": before,
                        "share": before / (epoch + before),
                        "best_mb": (old_folder / "best.ckpt").stat().st_size / 2**20,
                        "last_mb": (old_folder / "last.ckpt").stat().st_size / 2**20,
                    }
                    entry["best_mb"] = (ckpt / "best.ckpt").stat().st_size / 2**20
                    entry["last_mb"] = (ckpt / "last.ckpt").stat().st_size / 2**20
            out[student] = entry
    return out


# --- (c) precision and layout ------------------------------------------------------------------


def _kd_ska_module(teacher_backbone: str, student_backbone: str):
    """A KD+SKA DistillModule on EuroSAT paired (MS teacher, RGB student), untrained teacher:
    the cost of a step does not depend on what the weights hold."""
    from cmkd.data.datamodule import ModalityDataModule, ModalityDataset, prepare_data
    from cmkd.data.normalize import Standardize
    from cmkd.methods.distill import DistillModule
    from cmkd.models.model import build_model
    from cmkd.pairing.strategies import IdentityPairing
    from cmkd.recipes import module_args
    from cmkd.seeding import seeded

    prepared = prepare_data(EUROSAT, 0)
    t_rows, s_rows = prepared.rows("ms", "train"), prepared.rows("rgb", "train")
    t_x = ModalityDataset(t_rows, "ms").x
    spec = {"backbone": teacher_backbone, "in_chans": 13, "num_classes": 10}
    with seeded(0, "teacher"):
        teacher = build_model(spec, Standardize.fit(t_x.float())).eval()
    model = ModelConfig(backbone=student_backbone)
    module = DistillModule(
        **module_args(model, OptimConfig(), EUROSAT, prepared, "rgb", 0),
        teacher=teacher,
        teacher_inputs=t_x,
        teacher_labels=torch.from_numpy(t_rows.y),
        pairing=IdentityPairing(s_rows.ids, t_rows.ids),
        terms=[{"name": t.name, "weight": t.weight, "params": t.params} for t in KD_SKA],
        num_train=len(s_rows),
    )
    module.on_fit_start()  # the teacher cache, as at the start of a fit
    dm = ModalityDataModule(prepared, "rgb", EUROSAT.batch_size, 0)
    return module, dm


def _step_timer(module, batch: dict, bf16: bool, channels_last: bool) -> Callable[[], float]:
    optimizer = module.configure_optimizers()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module.to(memory_format=layout)
    batch = {k: v.contiguous(memory_format=layout) if v.ndim == 4 else v for k, v in batch.items()}

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(module.training_losses(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def precision_steps(
    pairs: tuple[tuple[str, str], ...] = (("resnet18", "resnet18"), ("resnet18", "small_cnn")),
    repeats: int = 5,
    steps: int = 2,
    epoch_repeats: int = 1,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Per teacher/student pair: one KD+SKA training step (batch 64) at fp32 and bf16
    autocast (what bf16-mixed runs), each with and without channels-last, interleaved; then
    one epoch through the Trainer at 32-true and `auto`."""
    from cmkd.precision import resolve_precision
    from cmkd.recipes import distill_student

    _quiet()
    auto = resolve_precision("auto", "cpu")
    out: dict[str, Any] = {"auto_is": auto}
    variants = {"fp32": (False, False), "fp32 channels-last": (False, True),
                "bf16": (True, False), "bf16 channels-last": (True, True)}  # fmt: skip
    with _folder(output_dir) as folder:
        for teacher, student in pairs:
            module, dm = _kd_ska_module(teacher, student)
            batch = dm.sets["train"].batch(range(EUROSAT.batch_size))
            times: dict[str, list[float]] = {name: [] for name in variants}
            loads = []
            for _ in range(repeats):
                loads.append(_load())
                for name, (bf16, cl) in variants.items():
                    step = _step_timer(module, batch, bf16, cl)
                    step()  # warm-up: kernels chosen, buffers allocated
                    times[name].append(statistics.median(step() for _ in range(steps)))
            fp32 = times["fp32"]
            entry = {
                name: {
                    "seconds": _spread(v),
                    "vs_fp32": _spread([a / b for a, b in zip(v, fp32, strict=True)]),
                }
                for name, v in times.items()
            }
            entry["load"] = loads
            # One epoch through the Trainer (teacher cache, logging, validation included).
            teacher_ckpt = _teacher(folder, teacher)
            distill = DistillConfig(teacher=teacher_ckpt, terms=KD_SKA)
            epochs: dict[str, list[float]] = {"32-true": [], "auto": []}
            for _ in range(epoch_repeats):
                for precision in epochs:
                    phases = _Phases()
                    run = RunConfig(str(folder), name=f"{teacher}-{student}-{precision}",
                                    accelerator="cpu", progress_bar=False, overwrite=True,
                                    precision=precision)  # fmt: skip
                    distill_student(EUROSAT, ModelConfig(backbone=student), OptimConfig(epochs=1),
                                    run, distill, "rgb", 0, callbacks=(phases,))  # fmt: skip
                    epochs[precision].append(phases.epochs[0])
            entry["epoch_seconds"] = {k: _spread(v) for k, v in epochs.items()}
            entry["epoch_auto_vs_fp32"] = _spread(
                [a / b for a, b in zip(epochs["auto"], epochs["32-true"], strict=True)]
            )
            out[f"{teacher} -> {student}"] = entry
    return out


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
                        "seconds": _spread(v),
                        "vs_1": _spread([a / b for a, b in zip(v, one, strict=True)]),
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
    with _folder(None) as folder:  # one trained teacher for both distillation measurements
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
    m = report.get("machine", {})
    lines += [f"{m.get('cpus')} CPUs, bf16 flags {m.get('bf16_flags')}, torch {m.get('torch')}.",
              ""]  # fmt: skip
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
            " best MB before / now | last MB before / now |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in ckpt.items():
            if not isinstance(e, dict):
                continue
            b, s, a = e["before"], e["sync"], e["async"]
            lines.append(
                f"| {name} | {s['epoch_seconds']:.2f} s | "
                f"{b['checkpoint_seconds_per_epoch']:.3f}, {100 * b['share']:.1f} % | "
                f"{s['checkpoint_seconds_per_epoch']:.3f}, {100 * s['share']:.1f} % | "
                f"{a['checkpoint_seconds_per_epoch']:.3f}, {100 * a['share']:.1f} % | "
                f"{b['best_mb']:.1f} / {e['best_mb']:.1f} | "
                f"{b['last_mb']:.1f} / {e['last_mb']:.1f} |"
            )
        lines.append("")
    return lines


def main() -> None:
    """Run every measurement, print the markdown section, and keep the numbers as JSON
    (`CMKD_RUNLOOP_JSON`, default runs/perf-runloop.json). CMKD_RUNLOOP_QUICK=1: fewer
    repeats."""
    from cmkd.io import write_json

    report = runloop_report(quick=os.environ.get("CMKD_RUNLOOP_QUICK") == "1")
    write_json(os.environ.get("CMKD_RUNLOOP_JSON", "runs/perf-runloop.json"), report)
    print("\n".join(render_runloop(report)))


if __name__ == "__main__":
    main()
