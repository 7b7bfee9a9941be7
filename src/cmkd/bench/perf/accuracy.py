"""The bf16 accuracy check of the perf page, taken from a grid that trains the same models at
bf16 and at fp32 (configs/bench/precision.yaml): `cmkd bench perf` times, it does not train to
convergence, so the accuracy side of `precision: auto` comes from a grid's store."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from cmkd.bench.pagestore import portable, read_store
from cmkd.bench.report.page import grid_store
from cmkd.bench.report.tables import build_tables
from cmkd.errors import CmkdError


def _grid(source: str | Path) -> dict[str, Any]:
    """A grid's compact store: a page, its .json, or a grid's results folder."""
    path = Path(source)
    store = grid_store(path) if path.is_dir() else read_store(path)
    if store.get("kind") != "grid":
        raise CmkdError(f"{source}: not a grid's store (kind {store.get('kind')!r})")
    return store


def bf16_accuracy(source: str | Path) -> dict[str, Any]:
    """The `bf16_accuracy` entry of a perf store from a grid with an architecture contrast
    [A, B], A at bf16 and B at 32-bit: per seed, the mean test accuracy (best-on-validation
    weights) over every model both pairs trained for that seed in every scenario (teachers,
    no-KD students, each method), at bf16 and at fp32. A seed counts only once all its models
    have finished on both sides, so the two means always cover the same models."""
    store = _grid(source)
    info = store["info"]
    precision = {
        a["name"]: a.get("precision") or info.get("precision") for a in info["architectures"]
    }
    contrast = next(
        (
            (a, b)
            for a, b in (info.get("architecture_contrasts") or {}).values()
            if str(precision[a]).startswith("bf16") and str(precision[b]).startswith("32")
        ),
        None,
    )
    if contrast is None:
        raise CmkdError(
            f"{source}: no architecture contrast [bf16 pair, 32-bit pair] in the grid "
            "(configs/bench/precision.yaml has one)"
        )
    tables = build_tables(info, store["cells"])
    pairs: dict[int, list[tuple[float, float]]] = {}
    missing: set[int] = set()
    for scenario in info["scenarios"]:
        side = {t.arch["name"]: t for t in tables if t.scenario == scenario}
        for row in side[contrast[0]].rows:
            other = side[contrast[1]].row(row.label)
            if other is None:  # a row only one pair has: nothing to pair it with
                continue
            a, b = row.acc(), other.acc()
            for seed in set(a) | set(b):
                if seed in a and seed in b:
                    pairs.setdefault(seed, []).append((a[seed], b[seed]))
                else:
                    missing.add(seed)
    models = max((len(v) for v in pairs.values()), default=0)
    seeds = sorted(s for s, v in pairs.items() if s not in missing and len(v) == models)
    return {
        "source": portable(str(source)),
        "seeds": seeds,
        "bf16": [statistics.fmean(x for x, _ in pairs[s]) for s in seeds],
        "fp32": [statistics.fmean(y for _, y in pairs[s]) for s in seeds],
        "models": models,
        "pairs": list(contrast),
    }


def ska_every_accuracy(source: str | Path) -> dict[str, Any]:
    """The `ska_every_accuracy` entry of a perf store from a grid whose first `contrasts` entry
    is [SKA every k, SKA every step] (configs/bench/ska-every.yaml): per seed, the mean test
    accuracy (best-on-validation weights) of each row over the grid's scenarios. A seed counts
    only where both rows finished in every scenario."""
    store = _grid(source)
    info = store["info"]
    contrasts = list((info.get("contrasts") or {}).values())
    if not contrasts:
        raise CmkdError(f"{source}: no `contrasts` entry [SKA every k row, exact row] in the grid")
    approx, exact = contrasts[0]
    per_seed: dict[int, list[tuple[float, float]]] = {}
    tables = build_tables(info, store["cells"])
    for table in tables:
        a, b = (table.row(label) for label in (approx, exact))
        if a is None or b is None:
            raise CmkdError(f"{source}: rows {approx!r} and {exact!r} not both in the grid")
        x, y = a.acc(), b.acc()
        for seed in set(x) & set(y):
            per_seed.setdefault(seed, []).append((x[seed], y[seed]))
    seeds = sorted(s for s, v in per_seed.items() if len(v) == len(tables))
    return {
        "source": portable(str(source)),
        "seeds": seeds,
        "rows": [approx, exact],
        "scenarios": [t.scenario for t in tables],
        "approx": [statistics.fmean(x for x, _ in per_seed[s]) for s in seeds],
        "exact": [statistics.fmean(y for _, y in per_seed[s]) for s in seeds],
    }
