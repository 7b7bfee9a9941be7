"""The results store of a benchmark grid: one JSON file per cell, written atomically.

A cell is one training (a teacher, a student, or a pair list) identified by its key
(scenario, group, method, seed). Its record holds the resolved config and a hash of it, the
run's metrics, wall time, throughput and peak memory. A grid skips a cell whose record exists
with the same config hash (cmkd.bench.cell_digest: fields at their defaults left out), so a
crashed grid continues where it stopped and a changed grid reruns only the cells it changed.
Plain JSON: readable by anything, loadable without executing code.

A store may be moved or copied to another folder (or read from another current folder): the
paths its cells recorded inside it (run folders, pair lists) are read where they are now.

Several workers (processes, machines on one file system) may run one grid into one store: a
worker claims a cell (a lock file beside it, released by the system if the worker dies) before
training it, and passes over a cell another worker holds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from cmkd.errors import CmkdError
from cmkd.io import write_json


@dataclass(frozen=True)
class CellKey:
    scenario: str
    group: str  # an architecture pair ('R/R') or a side_group ('teacher-<backbone>', ...)
    method: str
    seed: int

    def path(self, root: Path) -> Path:
        parts = (self.scenario, self.group, self.method)
        return root / "cells" / Path(*map(slug, parts)) / f"seed{self.seed}.json"


def side_group(side: str, backbone: str, precision: str | None, grid_precision: str) -> str:
    """The group of a grid's teacher or no-KD student cells ('teacher-<backbone>'), tagged with
    the precision where an architecture pair overrides the grid's: two pairs of the same
    backbones at two precisions (bf16 against fp32) must not share, and overwrite, one cell.
    Untagged otherwise, so stores written before the tag stay valid."""
    group = f"{side}-{backbone}"
    return f"{group}@{precision}" if precision and precision != grid_precision else group


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in label.lower()).strip("-")


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def claim(path: Path, wait: bool) -> Iterator[bool]:
    """Hold the lock file `path` against other workers while the block runs: yields True once
    held; False at once when another worker holds it and not `wait`. The system releases it
    if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


class Store:
    """The cells of one grid under `root/cells/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def get(self, key: CellKey) -> dict[str, Any] | None:
        path = key.path(self.root)
        if not path.is_file():
            return None
        try:
            return self._here(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise CmkdError(f"results store: {path} is not valid JSON ({err})") from None

    def locate(self, path: str | None) -> str | None:
        """Where a file a cell recorded is now: as recorded where it exists (or lies outside
        any store), else the same file under this store's `runs/` or `pairs/` folder (the
        store was moved or copied, or the grid runs from another current folder)."""
        if not path or Path(path).exists():
            return path
        parts = Path(path).parts
        for i in range(len(parts) - 1, 0, -1):  # from the right: the store's own folders
            if parts[i] in ("runs", "pairs") and (self.root / Path(*parts[i:])).exists():
                return str(self.root / Path(*parts[i:]))
        return path

    def _here(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with the paths it holds located (`locate`), in its result and in its
        config (which a reused cell's config is compared with)."""
        result = record.get("result") or {}
        for field in ("checkpoint", "teacher_checkpoint", "pairs"):
            if isinstance(result.get(field), str):
                result[field] = self.locate(result[field])
        distill = (record.get("config") or {}).get("distill") or {}
        if isinstance(distill.get("teacher"), str):
            distill["teacher"] = self.locate(distill["teacher"])
        pairing = distill.get("pairing") or {}
        if isinstance(pairing.get("pairs"), str):
            pairing["pairs"] = self.locate(pairing["pairs"])
        return record

    def put(self, key: CellKey, record: dict[str, Any]) -> None:
        write_json(key.path(self.root), record)

    def claim(self, key: CellKey, wait: bool) -> AbstractContextManager[bool]:
        """Hold the cell against other workers while the block runs (see `claim`)."""
        return claim(key.path(self.root).with_suffix(".lock"), wait)

    def records(self) -> list[dict[str, Any]]:
        """Every cell's record, in a stable order."""
        cells = self.root / "cells"
        if not cells.is_dir():
            raise CmkdError(f"no results store under {self.root} (run the grid first)")
        return [self._here(json.loads(p.read_text())) for p in sorted(cells.rglob("seed*.json"))]

    def clear(self) -> None:
        shutil.rmtree(self.root / "cells", ignore_errors=True)
