"""What `cmkd bench grid FILE --plan true` prints: the cells a run would train, with the
CPU time the store's cells of the same rows took."""

from __future__ import annotations

from typing import Any


def plan_table(runner: Any) -> str:
    """What a planned run (a cmkd.bench.grid.GridRunner with `plan`, not imported here: grid
    imports this module) would train: cells per scenario and method, each with its time
    estimated from the stored cells of the same scenario, group and method (mean wall time;
    "?" for a row the store has none of), and the cells reused."""
    stored: dict[tuple, list[float]] = {}
    records = list(runner.published.values())  # a page's cells time their rows too
    if runner.store.root.joinpath("cells").is_dir():
        records += runner.store.records()
    for r in records:
        if r.get("wall_seconds"):  # 0 for a teacher shared from another scenario
            stored.setdefault((r["scenario"], r["group"], r["method"]), []).append(
                r["wall_seconds"]
            )
    rows: dict[tuple, list[float | None]] = {}
    for key in runner.planned:
        walls = stored.get((key.scenario, key.group, key.method))
        rows.setdefault((key.scenario, key.method), []).append(
            sum(walls) / len(walls) if walls else None
        )
    known = [t for times in rows.values() for t in times if t is not None]
    unknown = sum(t is None for times in rows.values() for t in times)
    lines = [
        f"Plan for grid {runner.grid.name} (store {runner.store.root}): "
        f"{len(runner.planned)} cells to run, {len(runner.reused)} stored cells reused"
        + (f", {len(runner.carried)} cells of the page carried." if runner.carried else "."),
    ]
    if rows:
        lines += ["", "| scenario | method | cells to run | est. CPU-min |", "|---|---|---|---|"]
        for (scenario, method), times in rows.items():
            done = [t for t in times if t is not None]
            est = f"{sum(done) / 60:.1f}" if len(done) == len(times) else "?"
            lines.append(f"| {scenario} | {method} | {len(times)} | {est} |")
        lines += [
            "",
            f"Estimated {sum(known) / 60:.0f} CPU-min from the stored cells' mean wall times"
            + (f", plus {unknown} cells of rows the store has none of." if unknown else ".")
            + " Nothing was run or written.",
        ]
    return "\n".join(lines)
