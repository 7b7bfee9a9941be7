"""`cmkd bench perf`: where the time and memory go, as ratios against a baseline timed in the
same process (issue #8). Writes benchmarks/performance.md (and .json beside it).

Sections:
  (a) distillation overhead: each method's training-epoch time / the no-KD student's, EuroSAT
      paired MS -> RGB, runs interleaved over repeats, medians; the teacher-cache fill and the
      DynM re-match are reported on their own;
  (b) DynM: the chunked min-KL matrix matcher against the authors' per-sample loop, and the
      60,000 x 70,000 x 10 case with its peak memory;
  (c) CORAL through b x b Gram matrices against d x d covariances (d = 8192, b = 256);
  (d) data: samples/s from the decoded cache against decoding the TIFF/JPEG files every epoch,
      beside the training step's samples/s.

Peak memory is the rise of the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) over the resident size before the call: Linux only, None elsewhere.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    RunConfig,
    TermConfig,
)
from cmkd.io import write_atomic, write_json

# --- measuring --------------------------------------------------------------------------------


class EpochTimer(Callback):
    """Per training epoch: wall seconds from its start to its end (batches, validation, any
    callback that runs at epoch start after this one, such as DynM's re-match) and the seconds
    inside the training steps (forward, backward, optimiser; not the data fetch)."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.step_seconds: list[float] = []
        self.samples: list[int] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch, self._steps, self._n = time.perf_counter(), 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._steps += time.perf_counter() - self._step
        self._n += len(batch["label"])

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch)
        self.step_seconds.append(self._steps)
        self.samples.append(self._n)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run fn(); return its result and the peak resident memory it added, in MB (None where
    the high-water mark cannot be reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return fn(), None
    before = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(peak - before, 0) / 1024


def machine() -> dict[str, Any]:
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
        "load_average": [round(x, 2) for x in load],
    }


def _med(values: list[float]) -> float:
    return float(statistics.median(values))


# --- (a) distillation overhead ------------------------------------------------------------------


def _methods(rematch_epoch: int) -> dict[str, DistillConfig | None]:
    kd = TermConfig("kd", 0.5, {"temperature": 4.0})
    kd_cfg = DistillConfig(ce_weight=0.5, terms=[kd])
    return {
        "no KD": None,
        "KD (teacher cache)": kd_cfg,
        "KD (teacher recomputed)": replace(kd_cfg, cache_teacher=False),
        "DKD (teacher cache)": DistillConfig(ce_weight=1.0, terms=[TermConfig("dkd", 1.0, {})]),
        "KD + SKA (teacher cache)": replace(
            kd_cfg, terms=[kd, TermConfig("ska", 0.3 * 0.01, {"dim": 256})]
        ),
        # SemBridge's training-time parts on paired data: KD + SKA (the paper's weight and the
        # grid's dim) + DynM re-matching; SSM's offline matcher is not part of an epoch.
        "SemBridge (KD + SKA + DynM)": replace(
            kd_cfg,
            terms=[kd, TermConfig("ska", 0.3 * 0.01, {"dim": 256})],
            pairing=PairingConfig("paired", dynamic=True, schedule=[rematch_epoch]),
        ),
    }


def distill_overhead(
    epochs: int = 5,
    repeats: int = 3,
    seed: int = 0,
    student: ModelConfig | None = None,
    teacher: ModelConfig | None = None,
    batch_size: int = 32,
    output_dir: str = "runs/bench/perf",
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Training-epoch time of each method / the no-KD student's on EuroSAT paired MS -> RGB.
    `only`: the methods to time (names of `_methods`; "no KD" is always timed).

    Every method runs `repeats` times, interleaved (method order rotates each repeat); per run
    the median over the epochs after the first (warm-up) and, for SemBridge, other than the
    re-match epoch; then the median over repeats. Reports both whole epochs (steps, data,
    validation, checkpoint) and the training steps alone, and the teacher-cache fill and the
    DynM re-match as seconds of their own.
    """
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import distill_student, train_classifier

    if epochs < 3:
        raise ValueError("distill_overhead needs >= 3 epochs (warm-up, re-match, steady)")
    student = student or ModelConfig(backbone="small_cnn")
    teacher = teacher or ModelConfig(backbone="small_cnn")
    data = DataConfig(source="eurosat_paired", batch_size=batch_size)
    run = RunConfig(output_dir=output_dir, progress_bar=False, overwrite=True, accelerator="cpu")
    prepared = prepare_data(data, seed)
    t_timer = EpochTimer()
    t_result = train_classifier(
        data, teacher, OptimConfig(epochs=2), replace(run, name="teacher"), "ms", seed,
        callbacks=(t_timer,), prepared=prepared,
    )  # fmt: skip
    rematch = 2
    methods = _methods(rematch)
    names = [n for n in methods if only is None or n in only or n == "no KD"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            cfg, timer = methods[name], EpochTimer()
            optim = OptimConfig(epochs=epochs)
            label = name.split(" (")[0].replace(" ", "-").lower() + f"-{names.index(name)}"
            if cfg is None:
                result = train_classifier(
                    data, student, optim, replace(run, name=label), "rgb", seed,
                    callbacks=(timer,), prepared=prepared,
                )  # fmt: skip
            else:
                cfg = replace(cfg, teacher=t_result["checkpoint"])
                result = distill_student(
                    data, student, optim, replace(run, name=label), cfg, "rgb", seed,
                    callbacks=(timer,), prepared=prepared,
                )  # fmt: skip
            runs[name].append(
                {
                    "epoch_seconds": timer.epoch_seconds,
                    "step_seconds": timer.step_seconds,
                    "samples_per_epoch": timer.samples[0],
                    "fit_seconds": result["fit_seconds"],
                    "teacher_seconds": result.get("teacher_seconds"),
                    "test_acc": result["last"]["test"]["acc"],
                }
            )
    summary = summarise_overhead(runs, rematch)
    summary.update(
        {
            "epochs": epochs,
            "repeats": repeats,
            "rematch_epoch": rematch,
            "student": student.backbone,
            "teacher": teacher.backbone,
            "batch_size": batch_size,
            "train_samples": runs[names[0]][0]["samples_per_epoch"],
            "teacher_step_samples_per_s": t_timer.samples[-1] / t_timer.step_seconds[-1],
            "runs": runs,
        }
    )
    return summary


def summarise_overhead(runs: dict[str, list[dict[str, Any]]], rematch_epoch: int) -> dict:
    """Ratios against "no KD" from per-run epoch timings (see distill_overhead)."""
    steady = [e for e in range(1, len(next(iter(runs.values()))[0]["epoch_seconds"]))]
    steady = [e for e in steady if e != rematch_epoch]
    med: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        epoch = _med([_med([r["epoch_seconds"][e] for e in steady]) for r in rs])
        step = _med([_med([r["step_seconds"][e] for e in steady]) for r in rs])
        entry = {"epoch_s": epoch, "step_s": step}
        rematch = [r["epoch_seconds"][rematch_epoch] for r in rs]
        entry["epoch_at_rematch_s"] = _med(rematch)
        fills = [r["teacher_seconds"] for r in rs if r.get("teacher_seconds") is not None]
        if fills:
            entry["teacher_seconds"] = _med(fills)
        entry["test_acc"] = _med([r["test_acc"] for r in rs])
        med[name] = entry
    base = med["no KD"]
    for name, entry in med.items():
        entry["epoch_ratio"] = entry["epoch_s"] / base["epoch_s"]
        entry["step_ratio"] = entry["step_s"] / base["step_s"]
        # The spread: each repeat's ratio against the no-KD run of the same repeat.
        per_repeat = [
            _med([r["epoch_seconds"][e] for e in steady])
            / _med([b["epoch_seconds"][e] for e in steady])
            for r, b in zip(runs[name], runs["no KD"], strict=False)
        ]
        entry["epoch_ratio_range"] = [min(per_repeat), max(per_repeat)]
    out: dict[str, Any] = {"methods": med}
    sb = next((k for k in med if k.startswith("SemBridge")), None)
    kd = "KD (teacher cache)"
    if sb is not None and kd in med:
        extra = med[sb]["epoch_at_rematch_s"] - med[sb]["epoch_s"]
        # The authors re-match 5 times in 200 epochs (M2S-GL); amortised at that density:
        amortised = med[sb]["epoch_s"] + max(extra, 0.0) * 5 / 200
        out["sembridge"] = {
            "rematch_extra_s": extra,
            "epoch_ratio_vs_kd": med[sb]["epoch_s"] / med[kd]["epoch_s"],
            "step_ratio_vs_kd": med[sb]["step_s"] / med[kd]["step_s"],
            "amortised_epoch_ratio_vs_kd": amortised / med[kd]["epoch_s"],
        }
    ska = "KD + SKA (teacher cache)"
    if ska in med and kd in med:
        out["ska_vs_kd"] = {
            "epoch_ratio": med[ska]["epoch_s"] / med[kd]["epoch_s"],
            "step_ratio": med[ska]["step_s"] / med[kd]["step_s"],
        }
    return out


# --- (b) DynM -----------------------------------------------------------------------------------


def _logits(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    logits = torch.randn(n, k, generator=g) * 2 + 4 * F.one_hot(labels, k)
    return logits, labels


def min_kl_loop(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_labels: torch.Tensor,
    temperature: float = 3.0,
) -> torch.Tensor:
    """A tight per-sample loop: one student sample at a time against its class gallery (the
    softened teacher outputs of that class, gathered once), KL to each, argmin."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    galleries = {}
    for c in teacher_labels.unique().tolist():
        rows = torch.nonzero(teacher_labels == c)[:, 0]
        galleries[c] = (rows, log_pt[rows].exp(), log_pt[rows])
    out = torch.empty(len(student_logits), dtype=torch.long)
    for i, c in enumerate(student_labels.tolist()):
        rows, pt_c, log_pt_c = galleries[c]
        kl = (pt_c * (log_pt_c - log_ps[i])).sum(dim=1)
        out[i] = rows[kl.argmin()]
    return out


def min_kl_authors(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_labels: torch.Tensor,
    temperature: float = 3.0,
) -> torch.Tensor:
    """The authors' matcher (ACKD utils/dataset_transfer.py, find_matches), given the logits:
    the gallery is a list of 1 x K teacher logits per class; per student sample it is
    concatenated, the student's logits expanded to it, nn.KLDivLoss(reduction='none') of the
    softened pair summed per teacher, and topk(1, largest=False) taken. Their per-sample
    student forward pass and their second, largest-KL topk are left out."""
    kl_div = torch.nn.KLDivLoss(reduction="none")
    gallery: dict[int, tuple[list[torch.Tensor], list[int]]] = {}
    for j, c in enumerate(teacher_labels.tolist()):
        logits, rows = gallery.setdefault(c, ([], []))
        logits.append(teacher_logits[j : j + 1])
        rows.append(j)
    out = torch.empty(len(student_logits), dtype=torch.long)
    for i, c in enumerate(student_labels.tolist()):
        logits, rows = gallery[c]
        teacher = torch.cat(logits)
        student = student_logits[i : i + 1].expand(teacher.size(0), -1)
        score = kl_div(
            F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1)
        ).sum(dim=1)
        _, index = torch.topk(score, 1, largest=False)
        out[i] = rows[int(index[0])]
    return out


def dynm_speed(
    loop_students: int = 6_000,
    loop_teachers: int = 7_000,
    big_students: int = 60_000,
    big_teachers: int = 70_000,
    classes: int = 10,
    repeats: int = 3,
    chunk_size: int = 4096,
    big_chunks: tuple[int, ...] = (512, 4096),
) -> dict[str, Any]:
    """Chunked min-KL (cmkd.pairing.dynamic.min_kl_match) against the per-sample loop at a
    size the loop manages (interleaved repeats, medians), then the chunked matcher alone at
    `big_students` x `big_teachers`, with its peak memory."""
    from cmkd.pairing.dynamic import min_kl_match

    zs, ys = _logits(loop_students, classes, 1)
    zt, yt = _logits(loop_teachers, classes, 2)
    variants = {
        "chunked": lambda a, b, c, d: min_kl_match(a, b, c, d, chunk_size=chunk_size),
        "loop": min_kl_loop,
        "authors": min_kl_authors,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for fn in variants.values():  # warm-up, untimed
        fn(zs[:100], zt, ys[:100], yt)
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            results[name] = fn(zs, zt, ys, yt)
            times[name].append(time.perf_counter() - start)
    agree = {
        name: float((results["chunked"] == results[name]).float().mean())
        for name in ("loop", "authors")
    }
    zs, ys = _logits(big_students, classes, 3)
    zt, yt = _logits(big_teachers, classes, 4)
    big: dict[int, dict[str, list]] = {c: {"seconds": [], "peak_mb": []} for c in big_chunks}
    for _ in range(repeats):
        for c in big_chunks:
            start = time.perf_counter()
            _, peak = peak_memory(lambda c=c: min_kl_match(zs, zt, ys, yt, chunk_size=c))
            big[c]["seconds"].append(time.perf_counter() - start)
            if peak is not None:
                big[c]["peak_mb"].append(peak)
    med = {k: _med(v) for k, v in times.items()}
    return {
        "loop_size": [loop_students, loop_teachers, classes],
        "seconds": times,
        "median_s": med,
        "speedup": med["authors"] / med["chunked"],
        "speedup_vs_tight_loop": med["loop"] / med["chunked"],
        "same_pairs_fraction": agree,
        "big_size": [big_students, big_teachers, classes],
        "big": {
            str(c): {
                **v,
                "median_s": _med(v["seconds"]),
                # The first run's rise is the honest peak: later runs may reuse memory the
                # allocator kept from earlier ones.
                "peak_mb_max": max(v["peak_mb"]) if v["peak_mb"] else None,
            }
            for c, v in big.items()
        },
    }


# --- (c) CORAL ------------------------------------------------------------------------------


def coral_cost(d: int = 8192, b: int = 256, repeats: int = 3) -> dict[str, Any]:
    """One forward and backward of the CORAL scatter gap through b x b Gram matrices against
    d x d covariances: median seconds and peak memory each, and the two values' agreement."""
    from cmkd.losses.ska import scatter_gap

    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 1.1

    def step(gram: bool) -> float:
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        gap = scatter_gap(x - x.mean(0), y - y.mean(0), gram=gram)
        gap.backward()
        return float(gap.detach())

    times: dict[str, list[float]] = {"gram": [], "direct": []}
    peaks: dict[str, list[float]] = {"gram": [], "direct": []}
    values: dict[str, float] = {}
    step(True)  # warm-up, untimed
    for _ in range(repeats):
        for name in ("gram", "direct"):
            start = time.perf_counter()
            values[name], peak = peak_memory(lambda name=name: step(name == "gram"))
            times[name].append(time.perf_counter() - start)
            if peak is not None:
                peaks[name].append(peak)
    med = {k: _med(v) for k, v in times.items()}
    peak = {k: (max(v) if v else None) for k, v in peaks.items()}
    return {
        "d": d,
        "b": b,
        "seconds": times,
        "median_s": med,
        "speedup": med["direct"] / med["gram"],
        "peak_mb": peak,
        "memory_ratio": peak["direct"] / peak["gram"] if peak["gram"] and peak["direct"] else None,
        "relative_difference": abs(values["gram"] - values["direct"]) / abs(values["direct"]),
    }


def ska_breakdown(
    batch: int = 32, channels: int = 128, grid: int = 4, dim: int = 256, steps: int = 20
) -> dict[str, Any]:
    """Where one SKA step's time goes (median ms per part over `steps`), at the shapes of the
    overhead runs: small_cnn on 64 x 64 inputs gives 128 channels on a 4 x 4 grid, both sides."""
    from cmkd.losses.ska import SKA, coral, cross_weights, refine
    from cmkd.models.outputs import ModelOutput

    torch.manual_seed(0)
    ska = SKA(channels, channels, channels, channels, dim=dim)
    parts: dict[str, list[float]] = {
        k: [] for k in ("tokens", "attention", "refine", "coral_tokens", "pooled", "backward")
    }

    def fm(grad: bool) -> ModelOutput:
        return ModelOutput(
            torch.randn(batch, 10),
            torch.randn(batch, channels).requires_grad_(grad),
            torch.randn(batch, channels, grid, grid).requires_grad_(grad),
        )

    for i in range(steps + 2):
        s, t = fm(True), fm(False)
        ticks = [time.perf_counter()]
        st, tt = ska.tokens(s.feature_map, t.feature_map)
        ticks.append(time.perf_counter())
        a_t, a_s = cross_weights(
            ska.attn_t(tt, ska._folded(ska.map_t)), ska.attn_s(st, ska._folded(ska.map_s))
        )
        ticks.append(time.perf_counter())
        f_t, f_s = refine(tt, a_t), refine(st, a_s)
        ticks.append(time.perf_counter())
        loss = ska.token_coral(f_t, f_s)
        ticks.append(time.perf_counter())
        loss = loss + coral(ska.embed_t(t.embedding), ska.embed_s(s.embedding))
        ticks.append(time.perf_counter())
        loss.backward()
        ticks.append(time.perf_counter())
        if i >= 2:  # two warm-up steps
            for k, a, b in zip(parts, ticks, ticks[1:], strict=False):
                parts[k].append(1000 * (b - a))
    med = {k: _med(v) for k, v in parts.items()}
    total = sum(med.values())
    return {
        "shape": [batch, channels, grid, grid],
        "dim": dim,
        "median_ms": med,
        "total_ms": total,
        "share": {k: v / total for k, v in med.items()},
    }


def ska_vs_student(
    backbones: tuple[str, ...] = ("small_cnn", "resnet18"),
    batch: int = 32,
    steps: int = 6,
    dim: int = 256,
) -> dict[str, Any]:
    """One training step (forward, CE + KD, backward) of an RGB student against the same step
    with SKA added, per backbone (teacher: the same backbone on 13-band MS, outputs fixed as a
    cache would give them), 64 x 64 inputs; steps interleaved, medians. The ratio is SemBridge
    over KD without DynM, at small and at ResNet scale."""
    from cmkd.losses.ska import SKA
    from cmkd.models.model import build_model

    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 64, 64, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    for backbone in backbones:
        torch.manual_seed(0)
        student = build_model({"backbone": backbone, "in_chans": 3, "num_classes": 10})
        teacher = build_model({"backbone": backbone, "in_chans": 13, "num_classes": 10}).eval()
        with torch.no_grad():
            t = teacher(torch.randn(batch, 13, 64, 64, generator=g))
        probe = student(x[:2])
        ska = SKA(
            probe.feature_map.shape[1],
            t.feature_map.shape[1],
            probe.embedding.shape[1],
            t.embedding.shape[1],
            dim=dim,
        )

        def step(with_ska: bool, student=student, ska=ska, t=t) -> float:
            start = time.perf_counter()
            s = student(x)
            loss = F.cross_entropy(s.logits, y) + 16 * F.kl_div(
                F.log_softmax(s.logits / 4, 1), F.softmax(t.logits / 4, 1), reduction="batchmean"
            )
            if with_ska:
                loss = loss + 0.003 * sum(ska(s, t, {}).values())
            loss.backward()
            return time.perf_counter() - start

        step(False), step(True)  # warm-up, untimed
        times: dict[str, list[float]] = {"kd": [], "kd+ska": []}
        for _ in range(steps):
            times["kd"].append(step(False))
            times["kd+ska"].append(step(True))
        med = {k: _med(v) for k, v in times.items()}
        out[backbone] = {
            "feature_map": list(probe.feature_map.shape[1:]),
            "median_s": med,
            "ratio": med["kd+ska"] / med["kd"],
        }
    return out


# --- (e) scale out ----------------------------------------------------------------------------

DDP_CONFIG = "configs/eurosat_paired/losses/kd.yaml"


def ddp_accuracy(
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    epochs: int = 20,
    batch_size: int = 32,
    output_dir: str = "runs/bench/perf/ddp",
) -> dict[str, Any]:
    """KD (EuroSAT paired MS -> RGB, `DDP_CONFIG`) in one process against two DDP processes
    (gloo on the CPU), same seed and split, same global batch (two ranks of batch / 2), per
    seed; each run is `cmkd distill` in a fresh process, as a user launches it (Lightning
    starts the second rank). Returns each run's test accuracies and wall time."""
    import json
    import subprocess

    from cmkd.recipes import train_classifier

    out: dict[str, Any] = {"config": DDP_CONFIG, "epochs": epochs, "batch_size": batch_size}
    runs: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 DDP processes": []}
    data = DataConfig(source="eurosat_paired", batch_size=batch_size)
    run = RunConfig(output_dir=output_dir, progress_bar=False, overwrite=True, accelerator="cpu")
    for seed in seeds:
        teacher = train_classifier(
            data, ModelConfig(backbone="small_cnn"), OptimConfig(epochs=epochs),
            replace(run, name="teacher"), "ms", seed,
        )  # fmt: skip
        for devices, label in ((1, "1 process"), (2, "2 DDP processes")):
            name = f"kd-{devices}proc"
            cmd = [
                sys.executable, "-m", "cmkd.cli", "distill", "--config", DDP_CONFIG,
                "--seed", str(seed), "--distill.teacher", teacher["checkpoint"],
                "--optim.epochs", str(epochs), "--data.batch_size", str(batch_size // devices),
                "--run.output_dir", output_dir, "--run.name", name, "--run.accelerator", "cpu",
                "--run.devices", str(devices), "--run.strategy", "ddp" if devices > 1 else "auto",
                "--run.progress_bar", "false", "--run.overwrite", "true",
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            found = sorted(Path(output_dir, name).glob(f"**/seed{seed}/results.json"))
            if not found:
                raise FileNotFoundError(f"no results.json for {name}, seed {seed}")
            r = json.loads(found[-1].read_text())
            runs[label].append(
                {
                    "seed": seed,
                    "best": r["best"]["test"]["acc"],
                    "last": r["last"]["test"]["acc"],
                    "wall_s": wall,
                }
            )
    out["runs"] = runs
    return out


def _ddp_lines(e: dict[str, Any]) -> list[str]:
    from cmkd.stats import mean_ci, mean_std

    one, two = e["runs"]["1 process"], e["runs"]["2 DDP processes"]
    lines = [
        "## (e) Scale out: 2 DDP processes against 1",
        "",
        f"`cmkd distill --config {e['config']}` (KD, EuroSAT paired MS -> RGB, small CNNs, "
        f"{e['epochs']} epochs) per seed, once in one process and once as two DDP processes "
        f"(gloo on the CPU, `--run.devices 2 --run.strategy ddp`), same split, same global "
        f"batch ({e['batch_size']} = 2 x {e['batch_size'] // 2}); Δ: the paired difference "
        "(2 processes minus 1) with its 95 % t interval. Seeds: "
        f"{[r['seed'] for r in one]}.",
        "",
        "| run | test acc %, best on val | test acc %, last epoch | wall s (median) |",
        "|---|---|---|---|",
    ]
    for label, rs in e["runs"].items():
        lines.append(
            f"| {label} | {mean_std([r['best'] for r in rs])} | "
            f"{mean_std([r['last'] for r in rs])} | {_f(_med([r['wall_s'] for r in rs]), 1)} |"
        )
    for key, title in (("best", "best on val"), ("last", "last epoch")):
        diff = [b[key] - a[key] for a, b in zip(one, two, strict=True)]
        lines.append(f"| Δ, {title} | {mean_ci(diff)} | | |")
    lines += [
        "",
        "Every rank holding the same pairs after SSM and after each DynM re-match is checked by "
        "`tests/test_ddp.py`. Several GPUs: `--run.accelerator gpu --run.devices 4`; several "
        "nodes: `--run.num_nodes N` under torchrun or SLURM (README, Scale out).",
        "",
    ]
    return lines


# --- (d) data ---------------------------------------------------------------------------------


class _DecodingDataset(torch.utils.data.Dataset):
    """Decodes its file on every access: what a loader without the cache does every epoch."""

    def __init__(self, paths: list[Path], read: Callable, labels: np.ndarray, key: str) -> None:
        self.paths, self.read, self.labels, self.key = paths, read, labels, key

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        x = self.read(self.paths[i])
        x = x.astype(np.float32) if x.dtype not in (np.uint8, np.float32) else x.copy()
        return {self.key: torch.from_numpy(x), "label": int(self.labels[i]), "index": i}


def _epoch_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def data_rates(
    root: str | None = None, batch_size: int = 32, repeats: int = 3, limit: int | None = None
) -> dict[str, Any]:
    """Samples/s of one epoch from the decoded arrays (what a run holds after reading the
    cache) against decoding every TIFF (MS) / JPEG (RGB) file per sample, plus the cost of
    reading the cache file itself at the start of a run. EuroSAT paired files (`limit`: the
    first files only)."""
    from torch.utils.data import DataLoader

    from cmkd.data.datamodule import ModalityDataset
    from cmkd.data.root import resolve_data_root
    from cmkd.data.sources._files import class_files, read_pil, read_tif, sample_id
    from cmkd.data.sources.eurosat import load_eurosat_ms, load_eurosat_rgb

    root_path = resolve_data_root(root)
    out: dict[str, Any] = {}
    for key, ext, read, load in (
        ("ms", (".tif", ".tiff"), read_tif, lambda: load_eurosat_ms(root_path)),
        ("rgb", (".jpg", ".jpeg"), read_pil, lambda: load_eurosat_rgb(root_path, "paired")),
    ):
        samples = load()  # fills the cache if it is cold
        folder = root_path / "eurosat" / key
        by_id = {sample_id(c, p): p for c, group in class_files(folder, ext).items() for p in group}
        n = min(len(samples), limit or len(samples))
        paths = [by_id[i] for i in samples.ids[:n]]
        cached = ModalityDataset(samples.subset(np.arange(n)), key)
        decoding = _DecodingDataset(paths, read, samples.y[:n], key)
        rates: dict[str, list[float]] = {"cache": [], "decode": [], "cache_file": []}
        _epoch_rate(DataLoader(cached, batch_size))  # warm-up, untimed
        for _ in range(repeats):
            rates["cache"].append(_epoch_rate(DataLoader(cached, batch_size, shuffle=True)))
            rates["decode"].append(_epoch_rate(DataLoader(decoding, batch_size, shuffle=True)))
            start = time.perf_counter()
            whole = len(load())
            rates["cache_file"].append(whole / (time.perf_counter() - start))
        med = {k: _med(v) for k, v in rates.items()}
        out[key] = {
            "samples": n,
            "samples_per_s": rates,
            "median_samples_per_s": med,
            "cache_over_decode": med["cache"] / med["decode"],
        }
    return out


# --- the page -----------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _targets(report: dict[str, Any]) -> list[str]:
    """The issue's aims against this run's numbers."""
    rows = []
    a, b, d = report.get("overhead"), report.get("dynm"), report.get("data")
    if a:
        kd = a["methods"]["KD (teacher cache)"]["epoch_ratio"]
        rows.append(f"| KD (cache) epoch / no-KD <= 1.10 | {_f(kd)} | {_verdict(kd <= 1.10)} |")
        if a.get("sembridge"):
            sb = a["sembridge"]["amortised_epoch_ratio_vs_kd"]
            rows.append(
                f"| SemBridge epoch / KD <= 1.05 (amortised re-match) | {_f(sb)} | "
                f"{_verdict(sb <= 1.05)} |"
            )
    large = report.get("overhead_large")
    if large and large.get("sembridge"):
        sb = large["sembridge"]["amortised_epoch_ratio_vs_kd"]
        rows.append(
            f"| SemBridge epoch / KD <= 1.05 with a {large['student']} student and teacher "
            f"(amortised re-match) | {_f(sb)} | {_verdict(sb <= 1.05)} |"
        )
    scale = (report.get("ska") or {}).get("scale") or {}
    for name, v in scale.items():
        if name != "small_cnn":
            rows.append(
                f"| (SKA step / KD step with a {name} student and teacher) | x{_f(v['ratio'])} "
                f"| {'<=' if v['ratio'] <= 1.05 else '>'} 1.05 |"
            )
    if b:
        rows.append(
            f"| DynM chunked / authors' per-sample loop >= 50x | x{_f(b['speedup'], 0)} | "
            f"{_verdict(b['speedup'] >= 50)} |"
        )
        best = min(v["median_s"] for v in b["big"].values())
        size = " x ".join(f"{n:,}" for n in b["big_size"])
        rows.append(f"| DynM {size} <= 30 s | {_f(best)} s | {_verdict(best <= 30)} |")
    if d and a:
        step = a["train_samples"] / a["methods"]["no KD"]["step_s"]
        cache = d["rgb"]["median_samples_per_s"]["cache"]
        rows.append(
            f"| loader (cache, RGB) faster than the RGB training step | {_f(cache, 0)} vs "
            f"{_f(step, 0)} samples/s | {_verdict(cache > step)} |"
        )
        decode = d["rgb"]["median_samples_per_s"]["decode"]
        rows.append(
            f"| (without the cache: decoding RGB vs the step) | {_f(decode, 0)} vs "
            f"{_f(step, 0)} samples/s | {'faster' if decode > step else 'slower'} |"
        )
    if not rows:
        return []
    return ["## The issue's aims", "", "| aim | this run | |", "|---|---|---|", *rows, ""]


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Performance (issue #8)",
        "",
        f"Produced by `{report['command']}` ({report['finished']}, {report['minutes']:.1f} min).",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), torch {m['torch']} "
        f"({m['torch_threads']} intra-op thread(s)), Python {m['python']}, {m['platform']}. "
        f"Load average at start {m['load_average']}, at end {report['load_average_end']}: "
        "the machine was shared with other jobs while this ran, so absolute times are noisy; "
        "every ratio compares runs interleaved in this one process, and medians are taken.",
        "",
    ]
    for key, title in (
        ("overhead", "## (a) Distillation overhead per epoch"),
        ("overhead_large", "## (a') The same at a larger backbone"),
    ):
        if report.get(key):
            lines += _overhead_lines(report[key], title)
    lines += _dynm_to_end(report)
    return "\n".join(lines)


def _overhead_lines(a: dict[str, Any], title: str) -> list[str]:
    lines: list[str] = []
    if a:
        lines += [
            title,
            "",
            f"EuroSAT paired MS -> RGB, {a['train_samples']} training samples, batch "
            f"{a['batch_size']}, teacher {a['teacher']} (MS), student {a['student']} (RGB); "
            f"{a['epochs']} epochs x {a['repeats']} interleaved repeats. Per run the median "
            f"epoch after the first (warm-up), leaving out the DynM re-match epoch "
            f"({a['rematch_epoch']}); then the median over repeats. *Epoch* is wall time from "
            "epoch start to end (steps, data, validation, checkpoint); *steps* the time "
            "inside the training steps only. The teacher-cache fill happens once before "
            "epoch 0 and is not in any epoch; it is listed on its own. *Per repeat*: the "
            "lowest and highest of each repeat's ratio to the no-KD run of the same repeat, "
            "the noise to read the medians against.",
            "",
            "| method | epoch (s) | epoch / no-KD | (per repeat) | steps (s) | steps / no-KD | "
            "teacher forward (s) | test acc (last) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, e in a["methods"].items():
            lines.append(
                f"| {name} | {_f(e['epoch_s'], 3)} | {_f(e['epoch_ratio'])} | "
                f"{_f(e['epoch_ratio_range'][0])}-{_f(e['epoch_ratio_range'][1])} | "
                f"{_f(e['step_s'], 3)} | {_f(e['step_ratio'])} | "
                f"{_f(e.get('teacher_seconds'), 3)} | {_f(e['test_acc'], 3)} |"
            )
        sb = a.get("sembridge")
        if sb:
            lines += [
                "",
                f"SemBridge / KD (both with the teacher cache): epoch x"
                f"{_f(sb['epoch_ratio_vs_kd'])}, steps x{_f(sb['step_ratio_vs_kd'])}. "
                f"A DynM re-match adds {_f(sb['rematch_extra_s'], 3)} s to its epoch; at the "
                f"authors' density (5 re-matches in 200 epochs) the amortised epoch ratio to KD "
                f"is x{_f(sb['amortised_epoch_ratio_vs_kd'])}. Teacher forward (s) for cached "
                "runs is the one-off fill; for the recomputed run, all teacher passes.",
            ]
        if a.get("ska_vs_kd"):
            lines += [
                "",
                f"SKA alone (KD + SKA, no DynM) / KD: epoch x{_f(a['ska_vs_kd']['epoch_ratio'])},"
                f" steps x{_f(a['ska_vs_kd']['step_ratio'])}.",
            ]
        lines += [
            "",
            f"Training step rates (samples/s): RGB student no-KD "
            f"{_f(a['train_samples'] / a['methods']['no KD']['step_s'], 0)}, MS teacher "
            f"{_f(a['teacher_step_samples_per_s'], 0)}.",
            "",
        ]
    return lines


def _dynm_to_end(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    a, b = report.get("overhead"), report.get("dynm")
    if b:
        s, t, k = b["loop_size"]
        bs, bt, bk = b["big_size"]
        lines += [
            "## (b) DynM matching: chunked matrix KL vs per-sample loop",
            "",
            f"{s:,} students x {t:,} teachers x {k} classes (random logits), the matching "
            "alone (the student's logits given), interleaved repeats, medians:",
            "",
            "| matcher | s | chunked is faster by | same pairs as chunked |",
            "|---|---|---|---|",
            f"| authors' loop (their find_matches: per sample, cat the class gallery, "
            f"KLDivLoss, topk) | {_f(b['median_s']['authors'], 3)} | "
            f"**x{_f(b['speedup'], 0)}** | {100 * b['same_pairs_fraction']['authors']:.2f} % |",
            f"| tight per-sample loop (galleries gathered once) | "
            f"{_f(b['median_s']['loop'], 3)} | x{_f(b['speedup_vs_tight_loop'], 1)} | "
            f"{100 * b['same_pairs_fraction']['loop']:.2f} % |",
            f"| chunked matrix KL (`min_kl_match`) | {_f(b['median_s']['chunked'], 4)} | | |",
            "",
            f"{bs:,} x {bt:,} x {bk} with the chunked matcher (the loop would take about "
            f"{_f(b['median_s']['authors'] * (bs / s) * (bt / t) / 60, 0)} min by linear "
            "scaling, not run):",
            "",
            "| chunk (students) | median s | runs (s) | peak memory added (MB) |",
            "|---|---|---|---|",
        ]
        for c_, v in b["big"].items():
            lines.append(
                f"| {c_} | **{_f(v['median_s'])}** | "
                f"{', '.join(_f(x) for x in v['seconds'])} | {_f(v['peak_mb_max'], 0)} |"
            )
        lines += [
            "",
            "Peak memory is the rise of the process's resident high-water mark during the call "
            "(the largest over repeats; later calls may reuse memory the allocator kept).",
            "",
        ]
    k = (report.get("ska") or {}).get("parts")
    if k:
        lines += [
            "## Where SKA's time goes",
            "",
            f"One SKA step (forward + backward) at the overhead runs' shapes "
            f"({' x '.join(map(str, k['shape']))} maps on both sides, dim {k['dim']}): "
            f"{_f(k['total_ms'], 1)} ms, median per part:",
            "",
            "| part | ms | share |",
            "|---|---|---|",
        ]
        for part, ms in k["median_ms"].items():
            lines.append(f"| {part} | {_f(ms, 2)} | {100 * k['share'][part]:.0f} % |")
        lines.append("")
    scale = (report.get("ska") or {}).get("scale")
    if scale:
        lines += [
            "SKA against the student's own step (forward, CE + KD, backward; batch 32, "
            "64 x 64, teacher outputs fixed as the cache gives them), interleaved steps, "
            "medians:",
            "",
            "| student (= teacher backbone) | feature map | KD step (s) | KD + SKA step (s) | "
            "ratio |",
            "|---|---|---|---|---|",
        ]
        for name, v in scale.items():
            lines.append(
                f"| {name} | {' x '.join(map(str, v['feature_map']))} | "
                f"{_f(v['median_s']['kd'], 3)} | {_f(v['median_s']['kd+ska'], 3)} | "
                f"x{_f(v['ratio'])} |"
            )
        lines.append("")
    c = report.get("coral")
    if c:
        lines += [
            "## (c) CORAL: Gram (b x b) vs direct covariance (d x d)",
            "",
            f"d = {c['d']}, b = {c['b']}, one forward + backward of the scatter gap, "
            "interleaved repeats:",
            "",
            "| path | median s | peak memory added (MB) |",
            "|---|---|---|",
            f"| Gram | {_f(c['median_s']['gram'], 3)} | {_f(c['peak_mb']['gram'], 0)} |",
            f"| direct | {_f(c['median_s']['direct'], 3)} | {_f(c['peak_mb']['direct'], 0)} |",
            "",
            f"Time ratio direct / Gram **x{_f(c['speedup'], 1)}**, memory ratio "
            f"**x{_f(c['memory_ratio'], 1)}**; relative difference of the two values "
            f"{c['relative_difference']:.1e}.",
            "",
        ]
    d = report.get("data")
    if d:
        lines += [
            "## (d) Data: decoded cache vs decoding the files every epoch",
            "",
            "One epoch through a DataLoader (batch 32, shuffled, main process) over the "
            "EuroSAT paired files; *cache file read* is what a run pays once at its start to get "
            "the arrays from the cache (listing and stat-ing the source files for the cache key, "
            "then np.load), per sample returned: for RGB it lists all 27,000 RGB files to find "
            "the 369 twins. Medians of interleaved repeats.",
            "",
            "| modality | samples | from cache (samples/s) | decoding files (samples/s) | "
            "cache / decode | cache file read (samples/s) |",
            "|---|---|---|---|---|---|",
        ]
        for key, e in d.items():
            m_ = e["median_samples_per_s"]
            lines.append(
                f"| {key} | {e['samples']} | {_f(m_['cache'], 0)} | {_f(m_['decode'], 0)} | "
                f"x{_f(e['cache_over_decode'], 1)} | {_f(m_['cache_file'], 0)} |"
            )
        if a:
            lines += [
                "",
                f"Beside the training step (section a): RGB student "
                f"{_f(a['train_samples'] / a['methods']['no KD']['step_s'], 0)} samples/s, "
                f"MS teacher {_f(a['teacher_step_samples_per_s'], 0)} samples/s.",
            ]
        lines.append("")
    if report.get("ddp"):
        lines += _ddp_lines(report["ddp"])
    lines += _targets(report)
    lines += ["Raw numbers: the .json beside this page.", ""]
    return lines


def perf(
    sections: list[str] = ["overhead", "overhead_large", "ska", "dynm", "coral", "data", "ddp"],  # noqa: B006
    epochs: int = 5,
    repeats: int = 3,
    output: str = "benchmarks/performance.md",
    runs_dir: str = "runs/bench/perf",
    threads: int = 1,
    large_backbone: str = "resnet18",
) -> dict[str, Any]:
    """Time distillation overhead, DynM matching, CORAL and data loading against same-process
    baselines and write a Markdown page (and its .json) with the ratios and the machine.

    Args:
        sections: Any of overhead, overhead_large (the same at `large_backbone`), ska (SKA's
            time per part), dynm, coral, data, ddp (accuracy of 2 DDP processes against 1).
        epochs: Epochs per timed distillation run (>= 3).
        repeats: Interleaved repeats of every timing (medians are reported).
        output: The page; the raw numbers go to the same name with .json.
        runs_dir: Where the timed runs' folders go.
        threads: torch intra-op threads (torch.set_num_threads). 1 by default: on a shared,
            oversubscribed machine several threads per op spin against each other and times
            swing by 10x or more.
        large_backbone: Student and teacher backbone of the overhead_large section.
    """
    unknown = set(sections) - {"overhead", "overhead_large", "dynm", "coral", "data", "ska", "ddp"}
    if unknown:
        from cmkd.errors import CmkdError

        raise CmkdError(f"unknown perf section(s) {sorted(unknown)}")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    argv = " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("cmkd", "cli.py") else ""
    report: dict[str, Any] = {
        "command": f"cmkd {argv}" if argv else "cmkd bench perf",
        "machine": machine(),
    }
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
    for name in ("data", "dynm", "coral", "ska", "overhead", "overhead_large", "ddp"):
        if name in sections:
            print(f"perf: {name} ...", flush=True)
            report[name] = steps[name]()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["minutes"] = (time.perf_counter() - start) / 60
    report["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = render(report)
    out = Path(output)
    write_atomic(out, page)
    write_json(out.with_suffix(".json"), report)
    print(page)
    return report


__all__ = [
    "EpochTimer",
    "coral_cost",
    "data_rates",
    "distill_overhead",
    "dynm_speed",
    "min_kl_authors",
    "min_kl_loop",
    "peak_memory",
    "perf",
    "render",
    "ska_breakdown",
    "ska_vs_student",
    "summarise_overhead",
]
