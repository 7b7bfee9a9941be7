"""Run-loop costs of a distillation (issue #19): the checkpoint share of an epoch and the
sizes of its files, before and now (`checkpoint_costs`); a KD+SKA step and epoch at 32-true
against `precision: auto`, with and without channels-last (`precision_steps`); a student's
step at fp32 and bf16 on every built-in source, the measurements behind `precision: auto`'s
rule (`bf16_by_source`).

Both run under cmkd's thread policy (`run.threads: auto`), as a training run does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from cmkd.bench.perf.tables_runloop import BF16_DEFAULT
from cmkd.bench.perf.timing import EpochClock, load, quiet, ratios, spread, work_folder
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig, TermConfig
from cmkd.threads import training_threads

EUROSAT = DataConfig(source="eurosat_paired", batch_size=64)
KD_SKA = [TermConfig("kd", 0.5, {"temperature": 4.0}), TermConfig("ska", 0.3)]


def _teacher(folder: Path, backbone: str = "resnet18", epochs: int = 1) -> str:
    """A 13-band EuroSAT MS teacher trained `epochs` epochs (its quality is irrelevant to
    costs); reused when the folder already has it."""
    from cmkd.recipes import train_classifier

    run = RunConfig(str(folder), name=f"teacher-{backbone}", accelerator="cpu", progress_bar=False)
    best = folder / f"teacher-{backbone}" / "seed0" / "checkpoints" / "best.ckpt"
    if best.is_file():
        return str(best)
    model = ModelConfig(backbone=backbone)
    data = DataConfig(source="eurosat_paired", batch_size=32)
    return train_classifier(data, model, OptimConfig(epochs=epochs), run, "ms", 0)["checkpoint"]


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


def _distill_run(folder: Path, name: str, student: str, epochs: int, distill, callbacks,
                 **run_options: Any) -> dict[str, Any]:  # fmt: skip
    from cmkd.recipes import distill_student

    run = RunConfig(str(folder), name=name, accelerator="cpu", progress_bar=False,
                    overwrite=True, **run_options)  # fmt: skip
    model = ModelConfig(backbone=student)
    return distill_student(EUROSAT, model, OptimConfig(epochs=epochs), run, distill, "rgb", 0,
                           callbacks=callbacks)  # fmt: skip


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def checkpoint_costs(
    students: tuple[str, ...] = ("small_cnn", "resnet18"),
    teacher: str = "resnet18",
    epochs: int = 3,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Per student (KD from the teacher): the median epoch (training and validation), the
    checkpoint seconds per epoch on the training thread as written now and, in the same
    epochs, as cmkd 0.1 wrote them; then a run with async_checkpoints; and the file sizes."""
    quiet()
    out: dict[str, Any] = {"teacher": teacher, "epochs": epochs, "students": {}}
    with work_folder(output_dir) as folder:
        distill = DistillConfig(teacher=_teacher(folder, teacher), terms=[KD_SKA[0]])
        for student in students:
            old_folder = folder / f"old-{student}"
            clock, old = EpochClock(), _OldCheckpoints(old_folder)
            at = load()
            result = _distill_run(folder, student, student, epochs, distill, (clock, old))
            epoch = statistics.median(clock.epoch_seconds)
            new = result["run"]["checkpoint_seconds"] / epochs
            before = statistics.median(old.seconds)
            ckpt = folder / student / "seed0" / "checkpoints"
            async_clock = EpochClock()
            async_result = _distill_run(folder, f"{student}-async", student, epochs, distill,
                                        (async_clock,), async_checkpoints=True)  # fmt: skip
            async_epoch = statistics.median(async_clock.epoch_seconds)
            async_new = async_result["run"]["checkpoint_seconds"] / epochs
            out["students"][student] = {
                "load": at,
                "epoch_seconds": epoch,
                "before": {"seconds": before, "share": before / (epoch + before),
                           "best_mb": _mb(old_folder / "best.ckpt"),
                           "last_mb": _mb(old_folder / "last.ckpt")},  # fmt: skip
                "now": {"seconds": new, "share": new / (epoch + new),
                        "best_mb": _mb(ckpt / "best.ckpt"), "last_mb": _mb(ckpt / "last.ckpt")},
                "async": {"seconds": async_new, "share": async_new / (async_epoch + async_new),
                          "epoch_seconds": async_epoch},
            }  # fmt: skip
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


def _step_timer(
    module, batch: dict, bf16: bool, channels_last: bool, matmul: bool
) -> Callable[[], float]:
    from cmkd.models.matmul_weight_grad import use_matmul_weight_grad

    optimizer = module.configure_optimizers()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module.to(memory_format=layout)
    use_matmul_weight_grad(module, enabled=matmul)
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
    steps: int = 3,
    epoch_repeats: int = 2,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Per teacher/student pair: a KD+SKA training step (batch 64) at fp32 and in bf16
    autocast (what bf16-mixed runs), each with and without channels-last, and bf16 as cmkd's
    defaults run it (channels-last, matmul weight gradients), interleaved, median of `steps`
    after a warm-up; then one epoch through the Trainer at 32-true and `auto`."""
    from cmkd.precision import resolve_precision

    quiet()
    out: dict[str, Any] = {"auto_is": resolve_precision("auto", "cpu"), "pairs": {}}
    variants = {"fp32": (False, False, False), "fp32 channels-last": (False, True, False),
                "bf16": (True, False, False), "bf16 channels-last": (True, True, False),
                BF16_DEFAULT: (True, True, True)}  # fmt: skip
    with work_folder(output_dir) as folder, training_threads("auto") as threads:
        out["threads"] = threads
        for teacher, student in pairs:
            module, dm = _kd_ska_module(teacher, student)
            batch = dm.sets["train"].batch(range(EUROSAT.batch_size))
            times: dict[str, list[float]] = {name: [] for name in variants}
            loads = []
            for _ in range(repeats):
                loads.append(load())
                for name, (bf16, layout, matmul) in variants.items():
                    step = _step_timer(module, batch, bf16, layout, matmul)
                    step()  # warm-up: kernels chosen, buffers allocated
                    times[name].append(statistics.median(step() for _ in range(steps)))
            entry: dict[str, Any] = {
                name: {"seconds": spread(v), "vs_fp32": ratios(v, times["fp32"])}
                for name, v in times.items()
            }
            entry["load"] = loads
            # One epoch through the Trainer (teacher cache, logging, validation included).
            distill = DistillConfig(teacher=_teacher(folder, teacher), terms=KD_SKA)
            epochs: dict[str, list[float]] = {"32-true": [], "auto": []}
            for _ in range(epoch_repeats):
                for precision in epochs:
                    clock = EpochClock()
                    _distill_run(folder, f"{teacher}-{student}-{precision}", student, 1,
                                 distill, (clock,), precision=precision)  # fmt: skip
                    epochs[precision].append(clock.epoch_seconds[0])
            entry["epoch_seconds"] = {k: spread(v) for k, v in epochs.items()}
            entry["epoch_auto_vs_fp32"] = ratios(epochs["auto"], epochs["32-true"])
            out["pairs"][f"{teacher} -> {student}"] = entry
    return out


BF16_SOURCES = (
    ("eurosat_ms", "ms", "small_cnn"),
    ("eurosat_rgb", "rgb", "small_cnn"),
    ("ucmerced", "rgb", "small_cnn"),
    ("fsdd", "audio", "small_cnn"),
    ("mnist", "image", "small_cnn"),
    ("mfeat", "fac", "mlp"),
)
"""(source, modality, backbone): each built-in source with the backbone its configs train."""


def bf16_by_source(
    sources: tuple[tuple[str, str, str], ...] = BF16_SOURCES,
    repeats: int = 5,
    steps: int = 5,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Per source: a student's training step (a batch of its training split, cross-entropy,
    Adam) at fp32 and in bf16 autocast, the network otherwise as cmkd's defaults ready it
    (layout, weight-gradient kernels, fused Adam, the split standardised once, and served in
    bf16 to the bf16 step where cmkd's fit serves it so: `cmkd.served`), interleaved,
    the median of `steps` per repeat; the paired ratio bf16 / fp32 beside what `precision:
    auto` picks for that network (`cmkd.precision.gains_from_bf16`)."""
    from cmkd.data.datamodule import ModalityDataModule
    from cmkd.methods.classifier import ClassifierModule
    from cmkd.precision import gains_from_bf16
    from cmkd.served import standardized_once
    from cmkd.training import use_fast_paths

    out: dict[str, Any] = {}
    with training_threads("auto"):
        for source, modality, backbone in sources:
            data = ModalityDataModule.from_source(source, modality, batch_size=batch_size)
            task = ClassifierModule.for_data(data, backbone, seed=0)
            _, channels_last, matmul = use_fast_paths(task, RunConfig(accelerator="cpu"))
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            with standardized_once(task, data, "cpu"):
                batches = {"fp32": data.training_split().batch(range(batch_size))}
            # Open while timing: the task takes standardised inputs, as in a fit.
            with standardized_once(task, data, "cpu", precision="bf16-mixed"):
                batches["bf16"] = data.training_split().batch(range(batch_size))
                timers = {
                    name: _step_timer(task, batches[name], name == "bf16", channels_last, matmul)
                    for name in times
                }
                for timer in timers.values():
                    timer()  # warm-up: kernels chosen, buffers allocated
                for r in range(repeats):
                    for name in (*times,)[r % 2 :] + (*times,)[: r % 2]:
                        times[name].append(statistics.median(timers[name]() for _ in range(steps)))
            out[source] = {
                "modality": modality,
                "backbone": backbone,
                "input_shape": list(batches["fp32"][modality].shape[1:]),
                "bf16_served": batches["bf16"][modality].dtype == torch.bfloat16,
                "parameters": sum(p.numel() for p in task.parameters() if p.requires_grad),
                "auto_picks_bf16": gains_from_bf16(task),
                "fp32_seconds": spread(times["fp32"]),
                "bf16_vs_fp32": ratios(times["bf16"], times["fp32"]),
                "load": load(),
            }
    return out
