"""`cmkd bench teacher-cache`: distillation with the frozen teacher's outputs cached once
against recomputed every step, in one process."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from cmkd.bench.pagestore import publish
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig


def teacher_cache(
    *,
    teacher_backbone: str,
    student_backbone: str,
    epochs: int,
    repeats: int,
    seed: int,
    output_dir: str,
    page: str | None,
    command: str,
) -> dict[str, Any]:
    """Time paired KD (EuroSAT MS -> RGB twins) with the frozen teacher's outputs cached once
    versus recomputed every step, `repeats` interleaved runs each; writes the page (default
    output_dir/results.md, its store beside it) and returns the store. Arguments and their
    defaults: `cmkd bench teacher-cache` (cmkd.bench.commands.teacher_cache)."""
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import distill_student, train_classifier

    data = DataConfig(source="eurosat_paired", batch_size=32)
    # fp32, standard layout, native weight gradients: the numerics its committed page was
    # measured with.
    run = RunConfig(
        output_dir=output_dir,
        progress_bar=False,
        overwrite=True,
        precision="32-true",
        channels_last=False,
        matmul_weight_grad=False,
    )
    prepared = prepare_data(data, seed)
    teacher = train_classifier(
        data,
        model=ModelConfig(backbone=teacher_backbone),
        optim=OptimConfig(epochs=1),
        run=replace(run, name="teacher"),
        modality="ms",
        seed=seed,
        prepared=prepared,
    )
    times: dict[str, list[float]] = {"cached": [], "recomputed": []}
    accs: dict[str, list[float]] = {"cached": [], "recomputed": []}
    for _ in range(repeats):
        for variant in ("cached", "recomputed"):
            result = distill_student(
                data,
                model=ModelConfig(backbone=student_backbone),
                optim=OptimConfig(epochs=epochs),
                run=replace(run, name=variant),
                distill=DistillConfig(
                    teacher=teacher["checkpoint"], cache_teacher=variant == "cached"
                ),
                modality="rgb",
                seed=seed,
                prepared=prepared,
            )
            times[variant].append(result["fit_seconds"])
            accs[variant].append(result["last"]["test"]["acc"])
    med = {k: statistics.median(v) for k, v in times.items()}
    store = {
        "kind": "teacher_cache",
        "command": command,
        "teacher": teacher_backbone,
        "student": student_backbone,
        "epochs": epochs,
        "fit_seconds": times,
        "median_fit_seconds": med,
        "speedup_cached_over_recomputed": med["recomputed"] / med["cached"],
        "last_epoch_test_acc": accs,
    }
    page = publish(page or Path(output_dir) / "results.md", store, render_teacher_cache)
    print(
        f"teacher {teacher_backbone} -> student {student_backbone}, {epochs} epochs, "
        f"median of {repeats}: cached {med['cached']:.2f} s, recomputed {med['recomputed']:.2f} s, "
        f"speed-up x{store['speedup_cached_over_recomputed']:.2f}\nSaved {page}"
    )
    return store


def render_teacher_cache(store: dict[str, Any], page: Path) -> str:
    """The two variants' fit times and test accuracies (equal: the teacher is frozen and its
    inputs are not augmented, so caching changes nothing but the time)."""
    lines = ["# Teacher cache: frozen teacher outputs computed once vs every step", ""]
    if store.get("command"):
        lines += [f"`{store['command']}`", ""]
    runs = len(store["fit_seconds"]["cached"])
    lines += [
        f"Paired KD, EuroSAT MS -> RGB twins: {store['teacher']} MS teacher, "
        f"{store['student']} RGB student, {store['epochs']} epochs, {runs} interleaved runs "
        "per variant.",
        "",
        "| variant | fit s (median) | fit s (runs) | test acc % (last epoch, runs) |",
        "| --- | --- | --- | --- |",
    ]
    for variant in ("cached", "recomputed"):
        fits = ", ".join(f"{s:.2f}" for s in store["fit_seconds"][variant])
        accs = ", ".join(f"{100 * a:.1f}" for a in store["last_epoch_test_acc"][variant])
        lines.append(
            f"| {variant} | {store['median_fit_seconds'][variant]:.2f} | {fits} | {accs} |"
        )
    lines += ["", f"Speed-up of the cache: x{store['speedup_cached_over_recomputed']:.2f}.", ""]
    return "\n".join(lines)
