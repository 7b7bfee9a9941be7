"""Fair comparisons of students (the demo, `cmkd bench losses`, `cmkd bench sembridge`,
`cmkd bench softcmkd`).

Per seed: one stratified split of each side, one teacher, the no-KD student and one student per
method, all with the same backbone, epochs and optimiser. Reported: test accuracy as mean ± std
over seeds for the best-on-validation and the last-epoch weights, and each method's per-seed
paired difference to the no-KD student (same split, same seed) with a 95 % t interval.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmkd.bench.grid import GridRunner
from cmkd.bench.grid_spec import Architecture, Grid
from cmkd.bench.pagestore import portable, publish, read_store
from cmkd.bench.scenarios import NO_KD, SCENARIOS, TEACHER, Scenario
from cmkd.bench.store import CellKey
from cmkd.config import DistillConfig
from cmkd.stats import mean_ci, mean_std


def compare_students(
    methods: dict[str, DistillConfig],
    seeds: list[int],
    epochs: int,
    output_dir: str,
    scenario: str | Scenario = "eurosat_paired",
    backbone: str = "small_cnn",
    matcher_epochs: int = 30,
    echo: Callable = print,
    fresh: bool = False,
    page: str | Path | None = None,
    heading: str = "",
    command: str = "",
) -> str:
    """Run the grid (one scenario, one backbone for teacher and students, no controls), then
    write the page (default output_dir/results.md, its store beside it) and print and return
    its table. Cells finished by an earlier call with the same settings are reused unless
    `fresh`.

    A method whose pairing is 'matched' without a pair list gets one per seed from
    `match_pairs` with the scenario's matching method, written under output_dir/pairs/.
    """
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
    store = runner.run_to_the_end()  # other workers on the same folder: wait for their cells
    wall = time.perf_counter() - start
    groups = {TEACHER: f"teacher-{backbone}", NO_KD: f"student-{backbone}"}
    runs = {
        label: [
            compact_result(
                store.get(CellKey("custom", groups.get(label, backbone), label, seed))["result"]
            )
            for seed in seeds
        ]
        for label in [TEACHER, NO_KD, *methods]
    }
    # Cells may come from earlier or concurrent runs of the same grid: their own wall times say
    # what the comparison cost, this call's clock only what this call did.
    compute = sum(
        r.get("wall_seconds") or 0.0 for r in runner.store.records() if r.get("seed") in seeds
    )
    page = Path(page) if page else out / "results.md"
    saved = {
        "kind": "compare",
        "heading": heading,
        "command": command,
        "scenario": sc.title,
        "seeds": list(seeds),
        "epochs": epochs,
        "backbone": backbone,
        "wall_seconds": wall,
        "compute_seconds": compute,
        "runs": runs,
    }
    publish(page, saved, render_compare_page)
    table = comparison_table(read_store(page))
    echo("\n" + table + f"\nSaved {page}")
    return table


def compact_result(result: dict[str, Any]) -> dict[str, Any]:
    """What a comparison page reads of a run's result (and where its run folder was)."""
    keep = ("seed", "fit_seconds", "checkpoint", "teacher_checkpoint")
    out = {k: result[k] for k in keep if k in result}
    for k in ("checkpoint", "teacher_checkpoint"):
        if k in out:
            out[k] = portable(out[k])
    for which in ("best", "last"):
        test = {k: result[which]["test"][k] for k in ("acc", "f1_macro")}
        out[which] = {"epoch": result[which]["epoch"], "test": test}
    return out


def comparison_table(store: dict[str, Any]) -> str:
    """The table of a comparison's store: title, rows, the note on Δ and its cost."""
    rows = store["runs"]
    seeds = store["seeds"]
    title = (
        f"{store['scenario']}; {len(seeds)} seeds {seeds}, {store['epochs']} epochs, "
        f"{store['backbone']} teacher and students; test accuracy % (mean ± std over seeds)"
    )
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
        _cost(store),
    ]
    return "\n".join(lines) + "\n"


def _cost(store: dict[str, Any]) -> str:
    wall = store["wall_seconds"]
    if "compute_seconds" not in store:  # stores written before cells' times were summed
        return f"Wall time {wall:.0f} s."
    return (
        f"Compute {store['compute_seconds'] / 60:.1f} min, the sum of its cells' wall times "
        f"(whichever run trained them); the run that wrote this page took {wall:.0f} s."
    )


def render_compare_page(store: dict[str, Any], page: Path) -> str:
    """A heading, the command that wrote the page, and the table."""
    head = [f"# {store['heading']}", ""] if store.get("heading") else []
    if store.get("command"):
        head += [f"`{store['command']}`", ""]
    return "\n".join(head) + ("\n" if head else "") + comparison_table(store)
