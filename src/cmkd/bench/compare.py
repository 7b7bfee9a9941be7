"""Fair comparisons of students (the demo, `cmkd bench losses`, `cmkd bench sembridge`).

Per seed: one stratified split of each side, one teacher, the no-KD student and one student per
method, all with the same backbone, epochs and optimiser. Reported: test accuracy as mean ± std
over seeds for the best-on-validation and the last-epoch weights, and each method's per-seed
paired difference to the no-KD student (same split, same seed) with a 95 % t interval.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cmkd.config import DataConfig, DistillConfig
from cmkd.io import write_atomic, write_json
from cmkd.stats import mean_ci, mean_std

TEACHER, NO_KD = "teacher", "student, no KD"


@dataclass(frozen=True)
class Scenario:
    """Who teaches whom, on which data; `match` says how `cmkd match` pairs them."""

    title: str
    teacher_data: DataConfig
    teacher_modality: str
    student_data: DataConfig
    student_modality: str
    match_method: str = "class_random"
    pseudo_view: str | None = None
    oracle_data: DataConfig | None = None
    """The student's own samples in the teacher's modality, where such twins exist: the bank
    of an oracle row that pairs every student sample with its true twin."""


_RGB_UNPAIRED = DataConfig(
    source="eurosat_rgb", options={"subset": "unpaired", "per_class_limit": 300}, batch_size=64
)
_DIGITS = {"train_per_class": 20, "batch_size": 64}
_FSDD = DataConfig(source="fsdd", split="official", val_fraction=0.1, test_fraction=0.1)
SCENARIOS = {
    "eurosat_paired": Scenario(
        "EuroSAT paired MS -> RGB (369 twins)",
        DataConfig(source="eurosat_paired", batch_size=32),
        "ms",
        DataConfig(source="eurosat_paired", batch_size=32),
        "rgb",
    ),
    "eurosat_ms_to_rgb": Scenario(
        "EuroSAT asymmetric MS teacher (369 patches) -> RGB student (3,000 unpaired patches)",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        _RGB_UNPAIRED,
        "rgb",
        match_method="ssm",
        pseudo_view="eurosat_ms_to_rgb",
    ),
    "eurosat_rgb_to_ms": Scenario(
        "EuroSAT asymmetric RGB teacher (3,000 unpaired patches) -> MS student (369 patches)",
        _RGB_UNPAIRED,
        "rgb",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        match_method="teacher_embedding",
        pseudo_view="eurosat_ms_to_rgb",
        oracle_data=DataConfig(source="eurosat_paired", batch_size=32),
    ),
    "fsdd_to_mnist": Scenario(
        "Spoken digits teacher -> MNIST student with 20 labels per class",
        replace(_FSDD, batch_size=64),
        "audio",
        DataConfig(source="mnist", **_DIGITS),
        "image",
    ),
    "mnist_to_fsdd": Scenario(
        "MNIST teacher -> spoken digits student with 20 labels per class",
        DataConfig(source="mnist", batch_size=128),
        "image",
        replace(_FSDD, **_DIGITS),
        "audio",
    ),
}


def compare_students(
    methods: dict[str, DistillConfig],
    seeds: list[int],
    epochs: int,
    output_dir: str,
    scenario: str | Scenario = "eurosat_paired",
    backbone: str = "small_cnn",
    matcher_epochs: int = 30,
    echo=print,
    fresh: bool = False,
) -> str:
    """Run the grid (one scenario, one backbone for teacher and students, no controls), print
    and save (results.md, results.json in output_dir) the table. Cells finished by an earlier
    call with the same settings are reused unless `fresh`.

    A method whose pairing is 'matched' without a pair list gets one per seed from
    `match_pairs` with the scenario's matching method, written under output_dir/pairs/.
    """
    from cmkd.bench.grid import Architecture, Grid, GridRunner

    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    grid = Grid(
        name=Path(output_dir).name,
        scenarios=["custom"],
        methods=methods,
        architectures=[Architecture(backbone, backbone, backbone)],
        seeds=list(seeds),
        epochs=epochs,
        matcher_epochs=matcher_epochs,
        controls=False,
        custom_scenarios={"custom": sc},
    )
    out = Path(output_dir)
    runner = GridRunner(grid, out, echo=echo)
    if fresh:
        runner.store.clear()
    start = time.perf_counter()
    store = runner.run()
    wall = time.perf_counter() - start
    from cmkd.bench.store import CellKey

    groups = {TEACHER: f"teacher-{backbone}", NO_KD: f"student-{backbone}"}
    rows = {
        label: [
            store.get(CellKey("custom", groups.get(label, backbone), label, seed))["result"]
            for seed in seeds
        ]
        for label in [TEACHER, NO_KD, *methods]
    }
    title = (
        f"{sc.title}; {len(seeds)} seeds {seeds}, {epochs} epochs, {backbone} teacher and "
        "students; test accuracy % (mean ± std over seeds)"
    )
    table = _table(rows, title, wall)
    write_atomic(out / "results.md", table)
    write_json(
        out / "results.json",
        {
            "scenario": sc.title,
            "seeds": seeds,
            "epochs": epochs,
            "backbone": backbone,
            "wall_seconds": wall,
            "runs": rows,
        },
    )
    echo("\n" + table + f"\nSaved in {out / 'results.md'}")
    return table


def _table(rows: dict[str, list[dict]], title: str, wall: float) -> str:
    best = {k: [r["best"]["test"]["acc"] for r in v] for k, v in rows.items()}
    last = {k: [r["last"]["test"]["acc"] for r in v] for k, v in rows.items()}
    fit = {k: statistics.fmean(r["fit_seconds"] for r in v) for k, v in rows.items()}
    lines = [
        title,
        "",
        "| model | test acc, best-on-val | test acc, last epoch | macro F1, best-on-val "
        "| Δ vs no KD, best-on-val [95 % CI] | Δ vs no KD, last epoch [95 % CI] "
        "| fit time / no KD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, runs in rows.items():
        f1 = [r["best"]["test"]["f1_macro"] for r in runs]
        deltas = ["", ""]
        if label not in (TEACHER, NO_KD):
            deltas = [
                mean_ci([a - b for a, b in zip(scores[label], scores[NO_KD], strict=True)])
                for scores in (best, last)
            ]
        lines.append(
            f"| {label} | {mean_std(best[label])} | {mean_std(last[label])} | {mean_std(f1)} "
            f"| {deltas[0]} | {deltas[1]} | {fit[label] / fit[NO_KD]:.2f} |"
        )
    lines += [
        "",
        "Δ: per-seed paired difference to the no-KD student in points, mean and 95 % t interval "
        "over seeds; a method beats no KD only where the interval excludes 0.",
        f"Wall time {wall:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
