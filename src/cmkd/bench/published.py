"""A grid page's committed cells, carried into a later run of the same grid (issue 18).

A benchmark page's store (benchmarks/NAME.json) keeps every cell's metrics but no run folder,
so a fresh clone has the numbers of every seed and none of the teachers' checkpoints. To add
seeds there, a grid run treats the page's cells as done and trains only what the page lacks;
the page is then rendered from both. That is sound only where the page was made by this very
grid: same scenarios (data, class maps), architectures, budget and method configs. Those are
compared (`SETTINGS`, the methods through `method_digests`), and on any difference nothing is
carried and the run says why.

A cell is carried only with its whole block (one scenario, architecture pair and seed:
teacher, no-KD student and every method), since a method cell that must run needs the block's
teacher checkpoint, which the page does not have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmkd.bench.cell_digest import as_json, cell_digest
from cmkd.bench.pagestore import store_path
from cmkd.bench.scenarios import PAIRS
from cmkd.errors import CmkdError

Key = tuple[str, str, str, int]

SETTINGS = (
    "scenarios",
    "architectures",
    "epochs",
    "matcher_epochs",
    "lr",
    "scheduler",
    "teacher_seeds",
    "teacher_epochs",
    "precision",
    "method_digests",
)
"""What decides a grid's cells, apart from the seeds: equal on the page and in the grid, or
nothing is carried."""


def method_digests(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per scenario and row label, the hash of the row's distillation config (as the grid gives
    it, before a teacher is attached; fields at their defaults left out, as in a cell's hash)."""
    return {
        sc: {label: cell_digest({"distill": config}) for label, config in rows.items()}
        for sc, rows in methods.items()
    }


def published_cells(page: str | Path, info: dict[str, Any]) -> tuple[dict[Key, dict], str]:
    """The cells of `page`'s store that a run of the grid described by `info` (GridRunner's
    `describe`) may take as done, by (scenario, group, method, seed), pair lists included (the
    page counts them); and a line saying what was carried, or why nothing was."""
    path = store_path(page)
    if not path.is_file():
        return {}, ""
    try:
        store = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CmkdError(f"{path} is not valid JSON ({err})") from None
    old = store.get("info") or {}
    if store.get("kind") != "grid" or old.get("name") != info["name"]:
        return {}, f"{path}: not a page of grid {info['name']}; none of its cells carried"
    differ = [k for k in SETTINGS if as_json(old.get(k)) != as_json(info.get(k))]
    if differ:
        return {}, (
            f"{path}: none of its cells carried, the page ran with other {', '.join(differ)} "
            "than this grid (or does not record them)"
        )
    cells = {(c["scenario"], c["group"], c["method"], c["seed"]): c for c in store["cells"]}
    trained = sum(key[2] != PAIRS for key in cells)
    return cells, f"{path}: {trained} finished training cells of the same grid settings"


def carried_into(store: dict[str, Any], cells: dict[Key, dict]) -> dict[str, Any]:
    """A compact grid store with the carried `cells` it does not hold itself added (counted in
    `carried`)."""
    have = {(c["scenario"], c["group"], c["method"], c["seed"]) for c in store["cells"]}
    extra = [c for key, c in cells.items() if key not in have]
    if not extra:
        return store
    return {**store, "cells": store["cells"] + extra, "carried": len(extra)}
