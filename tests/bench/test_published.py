"""A committed page's cells carried into a later run of its grid (cmkd.bench.published): a
fresh clone, which has the page's store but no run folder, adds seeds by training only them,
and nothing is carried from a page whose grid settings differ."""

from __future__ import annotations

import json
from pathlib import Path

from cmkd.bench.grid import run_grid
from cmkd.bench.pagestore import read_store

GRID = """name: tiny
scenarios: [fsdd_to_mnist]
seeds: {seeds}
epochs: 1
controls: false
data:
  fsdd_to_mnist:
    teacher: {{train_per_class: 3}}
    student: {{train_per_class: 3, val_fraction: 0.02, test_fraction: 0.02}}
methods:
  KD:
    ce_weight: 0.5
    terms: [{{name: kd, weight: {weight}}}]
    pairing: {{strategy: class_random}}
"""


def _grid(tmp_path: Path, seeds: list[int], weight: float = 0.5) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(GRID.format(seeds=seeds, weight=weight))
    return path


def _cells(page: Path) -> dict[tuple, dict]:
    return {(c["method"], c["seed"]): c for c in read_store(page)["cells"]}


def test_a_fresh_clone_adds_seeds_to_a_page_training_only_them(
    tmp_path: Path, data_root, capsys
) -> None:
    page = tmp_path / "benchmarks" / "tiny.md"
    page.parent.mkdir()
    run_grid(_grid(tmp_path, [0]), tmp_path / "first", page=page, plots=False)
    seed0 = _cells(page)
    assert {k for k in seed0 if k[0] != "pairs"} == {
        ("teacher", 0),
        ("student, no KD", 0),
        ("KD", 0),
    }

    # Another store (the run folders of the first are not there) and one more seed: the plan
    # trains seed 1 only, the run likewise, and the page holds both seeds, seed 0 unchanged.
    grid = _grid(tmp_path, [0, 1])
    capsys.readouterr()
    run_grid(grid, tmp_path / "second", page=page, plan=True)
    printed = capsys.readouterr().out
    assert "3 cells to run, 0 stored cells reused, 3 cells of the page carried." in printed
    run_grid(grid, tmp_path / "second", page=page, plots=False)
    ran = {p.parent.name + "/" + p.stem for p in (tmp_path / "second" / "cells").rglob("*.json")}
    assert ran == {"teacher/seed1", "student--no-kd/seed1", "kd/seed1"}
    both = _cells(page)
    assert {k[1] for k in both} == {0, 1}
    for key, cell in seed0.items():
        if key[0] != "pairs":
            assert both[key] == cell
    store = read_store(page)
    assert store["carried"] == 3
    text = page.read_text()
    assert "3 of 3" not in text and "6 of 6 training cells finished (complete)" in text
    assert "3 cells carried from this page's earlier store" in text
    assert "- Machine of the last run (the carried cells ran before it): " in text

    # --fresh starts over: nothing carried into the run or onto the page (seed 0 only here).
    run_grid(_grid(tmp_path, [0]), tmp_path / "fourth", fresh=True, page=page, plots=False)
    assert {k[1] for k in _cells(page)} == {0} and "carried" not in read_store(page)
    assert "- Machine: " in page.read_text()

    # A changed method config: nothing is carried, and the plan says why.
    changed = _grid(tmp_path, [0, 1], weight=0.9)
    run_grid(changed, tmp_path / "third", page=page, plan=True)
    printed = capsys.readouterr().out
    assert "none of its cells carried" in printed and "method_digests" in printed
    assert "6 cells to run" in printed


def test_a_page_without_the_grid_settings_carries_nothing(tmp_path: Path) -> None:
    from cmkd.bench.grid import GridRunner
    from cmkd.bench.grid_spec import load_grid
    from cmkd.bench.published import published_cells

    grid = GridRunner(load_grid(_grid(tmp_path, [0])), tmp_path / "store")
    info = grid.describe()
    page = tmp_path / "tiny.md"
    old = {k: v for k, v in info.items() if k != "method_digests"}
    page.with_suffix(".json").write_text(json.dumps({"kind": "grid", "info": old, "cells": []}))
    cells, note = published_cells(page, info)
    assert cells == {} and "method_digests" in note
    other = {**info, "name": "other"}
    page.with_suffix(".json").write_text(json.dumps({"kind": "grid", "info": other, "cells": []}))
    assert published_cells(page, info)[0] == {}
