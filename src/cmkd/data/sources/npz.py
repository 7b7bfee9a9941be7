"""The user's own arrays in one .npz file, optionally with the split they were published with.

Arrays: `x_<modality>` (one or more, rows aligned), `y`, optional `ids` and `classes`. A file
may carry its own split in one of two ways:
- parts: `x_<modality>_test` + `y_test` (+ `ids_test`), and the same with `_val`; the plain
  arrays are then the training rows;
- a `split` array of strings (train, val or test), one per row.
Every problem is a CmkdError naming the file and the array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cmkd.data.samples import Samples
from cmkd.data.sources._files import require_file
from cmkd.data.splits import SPLIT_NAMES
from cmkd.errors import CmkdError

PARTS = ("val", "test")  # array-name suffixes of a carried split; the plain arrays are train


def load_npz(path: str | Path) -> dict[str, Samples]:
    """Arrays x_<modality>, y, optional ids and classes, and optionally a carried split.

    Without `classes` the names are "0".."max(y)"; without `ids`, "<row>" (rows numbered
    train, then val, then test).
    """
    path = require_file(Path(path).expanduser(), "npz")
    arrays = _read(path)
    parts = [p for p in PARTS if f"y_{p}" in arrays]
    modalities = _modalities(path, arrays, parts)
    _check_names(path, arrays, modalities, parts)
    classes = _classes(path, arrays, parts)
    blocks = [""] + [f"_{p}" for p in parts]  # train (plain arrays), then each carried part
    ys = [_labels(path, arrays, f"y{b}", classes) for b in blocks]
    for block, y in zip(blocks, ys, strict=True):
        if not len(y):
            raise CmkdError(f"npz file {path}: y{block} is empty (no samples)")
    y = np.concatenate(ys)
    xs = {m: _features(path, arrays, m, blocks, ys) for m in modalities}
    ids = _ids(path, arrays, blocks, ys)
    split = _split(path, arrays, blocks, ys)
    _every_class_present(path, y, classes)
    return {m: Samples(x, y, ids, list(classes), split) for m, x in xs.items()}


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as err:
        if "Object arrays" in str(err):
            raise CmkdError(
                f"npz file {path} holds Python objects (an object array); cmkd only reads "
                "plain numeric and string arrays: save them with a numeric dtype"
            ) from None
        raise CmkdError(f"cannot read npz file {path}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise CmkdError(f"cannot read npz file {path}: {err}") from None


def _modalities(path: Path, arrays: dict[str, np.ndarray], parts: list[str]) -> list[str]:
    names = [k[2:] for k in arrays if k.startswith("x_") and len(k) > 2]
    suffixes = tuple(f"_{p}" for p in PARTS)
    modalities = [n for n in names if not n.endswith(suffixes)]
    for name in names:
        part = next((p for p in PARTS if name.endswith(f"_{p}")), None)
        if part is not None and part not in parts:
            raise CmkdError(
                f"npz file {path} has x_{name} but no y_{part}: a carried {part} split needs "
                f"y_{part} (its labels) beside x_<modality>_{part}"
            )
    if not modalities or "y" not in arrays:
        raise CmkdError(f"npz file {path} needs at least one x_<modality> array and y")
    for part in parts:
        for m in modalities:
            if f"x_{m}_{part}" not in arrays:
                raise CmkdError(f"npz file {path} has y_{part} but no x_{m}_{part}")
    return modalities


def _check_names(
    path: Path, arrays: dict[str, np.ndarray], modalities: list[str], parts: list[str]
) -> None:
    expected = {"y", "ids", "classes", "split"}
    for block in ["", *(f"_{p}" for p in parts)]:
        expected |= {f"x_{m}{block}" for m in modalities} | {f"y{block}", f"ids{block}"}
    unexpected = sorted(set(arrays) - expected)
    if unexpected:
        raise CmkdError(
            f"npz file {path} has unexpected array {unexpected[0]!r}; expected x_<modality>, "
            "y, ids, classes, and for a carried split x_<modality>_test, y_test, ids_test "
            "(and _val) or a split array"
        )
    if parts and "split" in arrays:
        raise CmkdError(
            f"npz file {path} carries its split twice (y_{parts[0]} and a split array); "
            "keep one of the two"
        )


def _classes(path: Path, arrays: dict[str, np.ndarray], parts: list[str]) -> list[str]:
    if "classes" in arrays:
        return [str(c) for c in np.atleast_1d(arrays["classes"])]
    top = -1
    for name in ["y", *(f"y_{p}" for p in parts)]:
        y = arrays[name]
        if y.size and np.issubdtype(y.dtype, np.integer):
            top = max(top, int(y.max()))
    return [str(i) for i in range(top + 1)]


def _labels(path: Path, arrays: dict[str, np.ndarray], name: str, classes: list[str]):
    y = arrays[name]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise CmkdError(
            f"npz file {path}: {name} must be a 1-D integer array, got {y.dtype} {y.shape}"
        )
    bad = y[(y < 0) | (y >= len(classes))]
    if len(bad):
        raise CmkdError(f"npz file {path}: {name} label {int(bad[0])} is an unknown class "
                        f"(classes are {classes})")  # fmt: skip
    return y.astype(np.int64)


def _features(path: Path, arrays, modality: str, blocks: list[str], ys: list) -> np.ndarray:
    parts = []
    for block, y in zip(blocks, ys, strict=True):
        name = f"x_{modality}{block}"
        x = arrays[name]
        if x.ndim == 0 or len(x) != len(y):
            rows = len(np.atleast_1d(x))
            raise CmkdError(f"npz file {path}: {name} has {rows} rows but y{block} has {len(y)}")
        if x.dtype.kind not in "biuf":
            raise CmkdError(
                f"npz file {path}: {name} holds {x.dtype} values ({_kind(x)}), not numbers; "
                "store features as a numeric array (e.g. x.astype(np.float32))"
            )
        if x.dtype.kind == "f":
            finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise CmkdError(
                    f"npz file {path}: {name} has NaN or Inf values in {int((~finite).sum())} "
                    f"rows (first: row {row}); cmkd does not impute: fill or drop those rows"
                )
        if parts and x.shape[1:] != parts[0].shape[1:]:
            raise CmkdError(
                f"npz file {path}: {name} rows are {x.shape[1:]} but x_{modality} rows are "
                f"{parts[0].shape[1:]}"
            )
        parts.append(x)
    if len({p.dtype for p in parts}) > 1:
        parts = [p.astype(np.float32) for p in parts]
    return np.concatenate(parts)


def _kind(x: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "c": "complex numbers", "M": "dates", "m": "times"}.get(
        x.dtype.kind, "not numbers"
    )


def _ids(path: Path, arrays, blocks: list[str], ys: list) -> np.ndarray:
    n = sum(len(y) for y in ys)
    given = [f"ids{b}" for b in blocks if f"ids{b}" in arrays]
    if not given:
        return np.array([str(i) for i in range(n)])
    if len(given) != len(blocks):
        missing = next(f"ids{b}" for b in blocks if f"ids{b}" not in arrays)
        raise CmkdError(f"npz file {path} has {given[0]} but no {missing}; give ids for every part")
    ids = []
    for block, y in zip(blocks, ys, strict=True):
        part = np.atleast_1d(arrays[f"ids{block}"]).astype(str)
        if part.ndim != 1 or len(part) != len(y):
            raise CmkdError(
                f"npz file {path}: ids{block} has {len(part)} rows but y{block} has {len(y)}"
            )
        ids.append(part)
    out = np.concatenate(ids)
    if len(set(out.tolist())) != n:
        values, counts = np.unique(out, return_counts=True)
        raise CmkdError(f"npz file {path}: ids are not unique ('{values[counts > 1][0]}' repeats)")
    return out


def _split(path: Path, arrays, blocks: list[str], ys: list) -> np.ndarray | None:
    """Train, val or test per row, or None when the file carries no split."""
    if len(blocks) > 1:
        return np.concatenate(
            [np.full(len(y), b[1:] or "train") for b, y in zip(blocks, ys, strict=True)]
        )
    if "split" not in arrays:
        return None
    split = arrays["split"]
    if split.ndim != 1 or split.dtype.kind not in "US" or len(split) != len(ys[0]):
        raise CmkdError(
            f"npz file {path}: split must be a 1-D array of strings, one per row of y "
            f"({len(ys[0])}), got {split.dtype} {split.shape}"
        )
    split = split.astype(str)
    odd = sorted(set(split.tolist()) - set(SPLIT_NAMES))
    if odd:
        raise CmkdError(
            f"npz file {path}: split holds {odd[0]!r}; each entry must be train, val or test"
        )
    for needed in ("train", "test"):
        if not (split == needed).any():
            raise CmkdError(f"npz file {path}: split has no {needed} rows")
    return split


def _every_class_present(path: Path, y: np.ndarray, classes: list[str]) -> None:
    counts = np.bincount(y, minlength=len(classes))
    if (counts == 0).any():
        empty = classes[int(np.flatnonzero(counts == 0)[0])]
        raise CmkdError(
            f"npz file {path}: class {empty!r} has no sample (classes lists {len(classes)} "
            "names); drop it from classes or add its samples"
        )
