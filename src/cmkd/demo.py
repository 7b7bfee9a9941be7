"""`cmkd demo`: paired MS -> RGB distillation on the 369 EuroSAT twin patches.

Per seed: one stratified split, an MS teacher, an RGB student without KD and one with Hinton
KD from that seed's teacher. Prints and saves test accuracy as mean ± std over seeds, with the
per-seed paired difference KD - no-KD (the comparison that cancels split noise).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig, TermConfig
from cmkd.data.datamodule import prepare_data
from cmkd.recipes import distill_student, train_classifier
from cmkd.training import write_atomic, write_json


def mean_std(values: list[float]) -> str:
    """'mean ± std' in percent (sample std; 0 for a single value)."""
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.fmean(pct):.1f} ± {std:.1f}"


def run_demo(
    seeds: list[int], epochs: int, output_dir: str, backbone: str = "small_cnn", echo=print
) -> str:
    data = DataConfig(source="eurosat_paired", batch_size=32)
    model = ModelConfig(backbone=backbone)
    optim = OptimConfig(lr=1e-3, epochs=epochs)
    run = RunConfig(output_dir=output_dir, progress_bar=False, overwrite=True)
    kd = DistillConfig(ce_weight=0.5, terms=[TermConfig("kd", 0.5, {"temperature": 4.0})])
    rows: dict[str, list[dict]] = {"teacher": [], "no_kd": [], "kd": []}  # in run order
    names = {"teacher": "teacher-ms", "no_kd": "student-rgb", "kd": "kd-ms-to-rgb"}
    start = time.perf_counter()
    for seed in seeds:
        prepared = prepare_data(data, seed)  # one split per seed, shared by all three runs
        for key in rows:
            t0 = time.perf_counter()
            if key == "kd":
                teacher = replace(kd, teacher=rows["teacher"][-1]["checkpoint"])
                result = distill_student(
                    data,
                    model,
                    optim,
                    replace(run, name=names[key]),
                    teacher,
                    "rgb",
                    seed,
                    prepared=prepared,
                )
            else:
                modality = "ms" if key == "teacher" else "rgb"
                result = train_classifier(
                    data,
                    model,
                    optim,
                    replace(run, name=names[key]),
                    modality,
                    seed,
                    prepared=prepared,
                )
            rows[key].append(result)
            echo(
                f"seed {seed}  {key:8s} test acc {100 * result['best']['test']['acc']:5.1f} "
                f"(best-on-val epoch {result['best']['epoch']}), last epoch "
                f"{100 * result['last']['test']['acc']:5.1f}  [{time.perf_counter() - t0:.0f} s]"
            )
    wall = time.perf_counter() - start
    table = _table(rows, seeds, epochs, wall)
    out = Path(output_dir)
    write_atomic(out / "results.md", table)
    write_json(
        out / "results.json", {"seeds": seeds, "epochs": epochs, "wall_seconds": wall, "runs": rows}
    )
    echo("\n" + table + f"\nSaved in {out / 'results.md'}")
    return table


def _table(rows: dict[str, list[dict]], seeds: list[int], epochs: int, wall: float) -> str:
    labels = {"teacher": "MS teacher", "no_kd": "RGB student, no KD", "kd": "RGB student, KD"}
    acc = {k: [r["best"]["test"]["acc"] for r in v] for k, v in rows.items()}
    lines = [
        f"EuroSAT paired MS -> RGB (369 twins), {len(seeds)} seeds {seeds}, {epochs} epochs, "
        f"small CNNs; test accuracy % (mean ± std over seeds)",
        "",
        "| model | test acc, best-on-val | test acc, last epoch | macro F1, best-on-val |",
        "| --- | --- | --- | --- |",
    ]
    last = {k: [r["last"]["test"]["acc"] for r in v] for k, v in rows.items()}
    for key, label in labels.items():
        f1 = [r["best"]["test"]["f1_macro"] for r in rows[key]]
        lines.append(f"| {label} | {mean_std(acc[key])} | {mean_std(last[key])} | {mean_std(f1)} |")
    delta = [k - n for k, n in zip(acc["kd"], acc["no_kd"], strict=True)]
    delta_last = [k - n for k, n in zip(last["kd"], last["no_kd"], strict=True)]
    lines += [
        "",
        f"KD - no KD, paired by seed: {mean_std(delta)} points (best-on-val), "
        f"{mean_std(delta_last)} (last epoch). Wall time {wall:.0f} s.",
        "A 74-patch test split moves 1.35 points per patch: read differences against the spread.",
    ]
    return "\n".join(lines) + "\n"
