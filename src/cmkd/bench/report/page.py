"""The page of a benchmark grid (`cmkd report`): the compact store of its cells, and the
Markdown rendered from that store alone (see cmkd.bench.pagestore).

The store is built from the grid's results store (grid.json and cells/), so a grid that is
still running can be reported at any time: the page says how many cells of how many are done,
and paired differences use only the seeds present on both sides.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmkd.bench.machine import describe, machine
from cmkd.bench.pagestore import plots_folder, portable, publish, read_store, store_path
from cmkd.bench.published import carried_into, published_cells
from cmkd.bench.report.coverage import cell_groups, covered_classes
from cmkd.bench.report.plots import PLOTS, DataCache, first_seed
from cmkd.bench.report.tables import (
    WIN,
    Table,
    build_tables,
    expected_cells,
    info_from_cells,
    render_architecture_contrasts,
    render_contrasts,
    render_selection,
    render_table,
)
from cmkd.bench.scenarios import PAIRS, TEACHER
from cmkd.bench.store import Store
from cmkd.errors import CmkdError

# What the page reads of a cell; the rest (resolved config, per-class scores, every seed's run
# folders but the first's) stays in the run's own store.
CELL_FIELDS = ("scenario", "group", "method", "seed", "grid", "config_hash", "wall_seconds")
CELL_FIELDS += ("samples_per_second", "teacher_share", "peak_rss_mib", "peak_gpu_mib")
RESULT_FIELDS = ("epochs", "fit_seconds", "teacher_seconds", "train_samples", "pairing")
RESULT_FIELDS += ("checkpoint", "teacher_checkpoint")  # where the run folders were


def read_curve(metrics_csv: Path, column: str = "val/acc") -> tuple[list[int], list[float]]:
    """(epochs, values) of one column of a Lightning CSVLogger file, skipping empty rows."""
    epochs, values = [], []
    with metrics_csv.open(newline="") as f:
        for line in csv.DictReader(f):
            if line.get(column) not in (None, ""):
                epochs.append(int(float(line["epoch"])))
                values.append(float(line[column]))
    return epochs, values


def compact_cell(
    record: dict[str, Any], curve_seed: int, covered: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """A cell as the page needs it. A `curve_seed` cell keeps where its run folders were (the
    plots read that seed's runs only) and, but a teacher's, its validation curve, read from the
    run folder's metrics.csv. `covered`: the student classes of a class-mapped scenario, whose
    accuracy over the covered and over the uncovered classes is kept (`cell_groups`)."""
    out = {k: record[k] for k in CELL_FIELDS if k in record}
    res = record["result"]
    if record["method"] == PAIRS:
        out["result"] = {"pairs": res.get("pairs")}
        return out
    out["result"] = {k: res[k] for k in RESULT_FIELDS if k in res}
    for k in ("checkpoint", "teacher_checkpoint"):
        if k in out["result"]:
            if record["seed"] == curve_seed:
                out["result"][k] = portable(out["result"][k])
            else:
                del out["result"][k]
    for which in ("best", "last", "best_on_test"):
        if which not in res:
            continue
        part = res[which]
        test = {k: part["test"][k] for k in ("acc", "f1_macro") if k in part["test"]}
        kept = {k: part[k] for k in ("epoch", "val_acc") if k in part}
        out["result"][which] = {**kept, "test": test}
    groups = cell_groups(res, covered) if covered else None
    if groups:
        out["result"]["best"]["test"]["acc_by_group"] = groups
    if record["seed"] == curve_seed and record["method"] != TEACHER:
        metrics = Path(res["checkpoint"]).parents[1] / "csv" / "metrics.csv"
        if metrics.is_file():
            epochs, values = read_curve(metrics)
            if epochs:
                out["val_curve"] = [epochs, values]
    return out


def grid_store(root: str | Path) -> dict[str, Any]:
    """The compact store of a grid's results store (`root` holds grid.json and cells/)."""
    root = Path(root)
    records = Store(root).records()
    path = root / "grid.json"
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CmkdError(f"{path} is not valid JSON ({err})") from None
    else:
        info = info_from_cells(root, records)
    info.setdefault("machine", machine())  # a grid.json older than the machine facts
    seed = first_seed(info)
    covered = {name: covered_classes(sc) for name, sc in info.get("scenarios", {}).items()}
    return {
        "kind": "grid",
        "info": info,
        "runs": str(root),
        "cells": [compact_cell(r, seed, covered.get(r["scenario"])) for r in records],
    }


def class_map_line(entries: dict[str, str | None], covered: tuple[str, ...]) -> str:
    """The scenario's class map in one paragraph: which teacher classes teach which student
    class, and the teacher classes left out."""
    groups = [f"{', '.join(t for t, s in entries.items() if s == c)} → {c}" for c in covered]
    unused = [t for t, s in entries.items() if s is None]
    return (
        f"Class map: {'; '.join(groups)}. Unused teacher classes: "
        f"{', '.join(unused) or 'none'}. Covered student classes: {', '.join(covered)}; the "
        "others are uncovered (cross-entropy only). *covered / uncovered acc*: test accuracy "
        "over the test samples of those classes (best-on-validation weights), Δ paired as above."
    )


def _schedule(name: str) -> str:
    return "constant" if name == "none" else f"{name} schedule"


def _span(seeds: list[int]) -> str:
    """[10, 11, ..., 40] as '10-40' when consecutive."""
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else str(s)


def render_grid_page(store: dict[str, Any], page: Path) -> str:
    """The Markdown page of a grid's compact store (plots referenced in the folder beside the
    page, whether or not they are drawn)."""
    info, records = store["info"], store["cells"]
    trained = [r for r in records if r["method"] != PAIRS]
    n_pairs = len(records) - len(trained)
    expected = expected_cells(info)
    found = {(r["scenario"], r["group"], r["method"], r["seed"]) for r in trained}
    done, stale = len(found & expected), len(found - expected)
    minutes = sum(r.get("wall_seconds") or 0 for r in records) / 60
    lines = [f"# Benchmark: {info['name']}", ""]
    if info.get("command"):
        lines += ["```", info["command"], "```", ""]
    if info.get("description"):
        lines += [info["description"], ""]
    if info.get("note"):
        lines += [f"> {info['note']}", ""]
    status = "complete" if done == len(expected) else "**partial: the grid is unfinished**"
    lines += [
        f"- Cells: {done} of {len(expected)} training cells finished ({status}); "
        f"{n_pairs} pair list(s)"
        + (f"; {stale} stored cell(s) no longer in the grid, not shown." if stale else "."),
        f"- Budget: {info.get('epochs', '?')} epochs, matcher {info.get('matcher_epochs', '?')} "
        f"epochs, lr {info.get('lr', '?')} "
        f"({_schedule(info.get('scheduler', 'none'))}), "
        f"seeds {info.get('seeds')}"
        + "".join(
            f"; {sc} also seeds {_span(extra)}"
            for sc, extra in (info.get("extra_seeds") or {}).items()
        )
        + ".",
        # A page built over several runs records the machine of the last one only.
        (
            "- Machine of the last run (the carried cells ran before it): "
            if store.get("carried")
            else "- Machine: "
        )
        + f"{describe(info['machine'])}. "
        f"Cells with GPU memory recorded: {sum('peak_gpu_mib' in r for r in trained)}.",
        f"- Store: `{store_path(page).name}` beside this page (`cmkd report` on this page "
        f"renders it again); the runs were in `{store['runs']}`"
        + (
            f" ({store['carried']} cells carried from this page's earlier store: run before "
            "by the same grid settings, their run folders are not there)"
            if store.get("carried")
            else ""
        )
        + f". Compute: {minutes:.1f} min, "
        "the sum of every stored cell's wall time (training, pair matching); the grid's own "
        "run adds data loading and this report.",
        "",
        "Accuracies are mean ± std over seeds in %. Δ: mean paired difference in points with its "
        "95 % t interval, over the n seeds both rows have (same split, same seed). "
        f"{WIN}: the interval vs no-KD lies above 0. Time × no-KD: mean fit time relative to "
        "the no-KD student. Teacher share: time in teacher forwards / fit time.",
        "",
    ]
    seed = first_seed(info)
    tables = build_tables(info, records)
    for i, table in enumerate(tables):
        if i and tables[i - 1].scenario != table.scenario:
            lines += _architecture_contrasts(info, tables, tables[i - 1].scenario)
        sc_info = info["scenarios"].get(table.scenario, {})
        arch = table.arch
        lines += [
            f"## {table.scenario} — {arch['name']} "
            f"({arch.get('teacher', '?')} teacher, {arch.get('student', '?')} student)",
            "",
        ]
        if sc_info.get("title") and sc_info["title"] != table.scenario:
            lines += [sc_info["title"], ""]
        if table.covered is not None:
            lines += [class_map_line(sc_info["class_map"], table.covered), ""]
        paper = info.get("paper", {})
        paper_row = paper.get(f"{table.scenario} {arch['name']}") or paper.get(table.scenario, {})
        if not any(row.cells for row in table.rows):
            lines += ["*No finished cells yet.*", ""]
            continue
        lines += render_table(table, paper_row) + [""]
        contrasts = render_contrasts(table, info.get("contrasts") or {})
        if contrasts:
            lines += ["**Contrasts** (the grid's `contrasts`: row A − row B, paired by seed).", ""]
            lines += [*contrasts, ""]
        selection = render_selection(table)
        if selection:
            lines += ["**Which epoch is scored.**", "", *selection, ""]
        for plot in PLOTS:
            missing = plot.missing(table, seed)
            if missing:
                lines.append(f"- *{plot.title}: none ({missing}).*")
            else:
                lines.append(f"![{plot.title}]({plots_folder(page).name}/{plot.file(table)})")
                if plot.caption:
                    lines += ["", "*" + plot.caption.format(seed=seed) + "*", ""]
        lines.append("")
    if tables:
        lines += _architecture_contrasts(info, tables, tables[-1].scenario)
    return "\n".join(lines)


def _architecture_contrasts(info: dict[str, Any], tables: list[Table], scenario: str) -> list[str]:
    rows = render_architecture_contrasts(
        [t for t in tables if t.scenario == scenario], info.get("architecture_contrasts") or {}
    )
    if not rows:
        return []
    head = (
        f"**Architecture contrasts, {scenario}** (the grid's `architecture_contrasts`: pair "
        "A − pair B for every row, paired by seed)."
    )
    return [head, "", *rows, ""]


def draw_grid_plots(store: dict[str, Any], page: Path, echo: Callable = print) -> None:
    """Draw every plot the page links: from the store, or from the run folders where it needs
    them; a plot that cannot be drawn keeps its file as it is (e.g. the committed one)."""
    info = store["info"]
    ctx, seed, folder = DataCache(), first_seed(info), plots_folder(page)
    for table in build_tables(info, store["cells"]):
        if not any(row.cells for row in table.rows):
            continue
        for plot in PLOTS:
            if plot.missing(table, seed):
                continue
            path = folder / plot.file(table)
            try:
                plot.draw(table, path, info, ctx)
            except Exception as err:  # best effort: a missing run folder must not sink the page
                kept = "kept as it is" if path.is_file() else "not drawn"
                reason = f"{type(err).__name__}: {err}".splitlines()[0]
                echo(f"{path}: {kept} ({reason})")


def write_report(
    store_dir: str | Path,
    page: str | Path | None = None,
    plots: bool = True,
    echo: Callable = print,
    carry: bool = True,
) -> Path:
    """Write the compact store and the Markdown page of a (possibly unfinished) grid, and its
    plots; returns the page's path. Default page: <store_dir>/<grid name>.md, plots in the
    folder of that name beside it. `plots=False` draws nothing (the page is the same), in
    seconds, e.g. to glance at a running grid. `carry`: the cells the page's own store holds
    and this grid's store lacks stay on the page (cmkd.bench.published); not after `--fresh`."""
    store = grid_store(store_dir)
    page = Path(page) if page else Path(store_dir) / f"{store['info']['name']}.md"
    cells, note = published_cells(page, store["info"]) if carry else ({}, "")
    if cells:
        echo(note)
    publish(page, carried_into(store, cells), render_grid_page)
    if plots:
        draw_grid_plots(read_store(page), page, echo)
    return page
