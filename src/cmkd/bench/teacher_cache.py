"""`cmkd bench teacher-cache`: distillation with the frozen teacher's outputs cached once
against recomputed every step, in one process."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.io import write_json


def teacher_cache(
    teacher_backbone: str = "resnet34",
    student_backbone: str = "small_cnn",
    epochs: int = 5,
    repeats: int = 3,
    seed: int = 0,
    output_dir: str = "runs/bench/teacher-cache",
) -> dict:
    """Time paired KD (EuroSAT MS -> RGB twins) with the frozen teacher's outputs cached once
    versus recomputed every step; prints median fit times and their ratio.

    Args:
        teacher_backbone: The MS teacher (trained 1 epoch: only its cost matters here).
        student_backbone: The RGB student.
        epochs: Distillation epochs per timed run.
        repeats: Timed runs per variant, interleaved; medians are reported.
        seed: Split and initialisation seed.
        output_dir: Where the runs and results.json go.
    """
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import distill_student, train_classifier

    data = DataConfig(source="eurosat_paired", batch_size=32)
    run = RunConfig(output_dir=output_dir, progress_bar=False, overwrite=True)
    prepared = prepare_data(data, seed)
    teacher = train_classifier(
        data,
        ModelConfig(backbone=teacher_backbone),
        OptimConfig(epochs=1),
        replace(run, name="teacher"),
        "ms",
        seed,
        prepared=prepared,
    )
    times: dict[str, list[float]] = {"cached": [], "recomputed": []}
    accs: dict[str, list[float]] = {"cached": [], "recomputed": []}
    for _ in range(repeats):
        for variant in ("cached", "recomputed"):
            result = distill_student(
                data,
                ModelConfig(backbone=student_backbone),
                OptimConfig(epochs=epochs),
                replace(run, name=variant),
                DistillConfig(teacher=teacher["checkpoint"], cache_teacher=variant == "cached"),
                "rgb",
                seed,
                prepared=prepared,
            )
            times[variant].append(result["fit_seconds"])
            accs[variant].append(result["last"]["test"]["acc"])
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "teacher": teacher_backbone,
        "student": student_backbone,
        "epochs": epochs,
        "fit_seconds": times,
        "median_fit_seconds": med,
        "speedup_cached_over_recomputed": med["recomputed"] / med["cached"],
        "last_epoch_test_acc": accs,
    }
    write_json(Path(output_dir) / "results.json", summary)
    print(
        f"teacher {teacher_backbone} -> student {student_backbone}, {epochs} epochs, "
        f"median of {repeats}: cached {med['cached']:.2f} s, recomputed {med['recomputed']:.2f} s, "
        f"speed-up x{summary['speedup_cached_over_recomputed']:.2f}"
    )
    return summary
