"""On-disk cache of decoded arrays, so a second run does not decode the source files again."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from cmkd.data.root import cache_dir
from cmkd.io import save_npz

# Bump when the on-disk layout or a decoder changes meaning, so old entries are not reused.
CACHE_VERSION = 1


def fingerprint_files(paths: Iterable[Path], root: Path) -> str:
    """Hash of the files' paths (relative to `root`), sizes and mtimes: changes when any file
    is added, removed, renamed or rewritten, without reading file contents."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        rel = Path(path).relative_to(root).as_posix()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(name: str, key: dict) -> Path:
    """The cache file for `name` and `key` (a JSON-serialisable dict)."""
    text = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    return cache_dir() / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.npz"


def cached_arrays(
    name: str,
    key: dict,
    build: Callable[[], dict[str, np.ndarray]],
    rows: int | None = None,
    required: tuple[str, ...] = ("x",),
) -> dict[str, np.ndarray]:
    """Return the arrays cached under (name, key), calling `build` only on a miss.

    A corrupt or unreadable cache file is rebuilt, and so is a readable one that lacks a
    `required` array or whose arrays do not have `rows` rows (a truncated or foreign file);
    a cache that cannot be written only warns, since the decoded arrays are still correct.
    """
    path = cache_path(name, key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            problem = _mismatch(arrays, rows, required)
            if problem is None:
                return arrays
            warnings.warn(f"rebuilding corrupt cache file {path}: {problem}", stacklevel=2)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"rebuilding corrupt cache file {path}: {err}", stacklevel=2)
    arrays = build()
    try:
        _write_atomic(path, arrays)
    except OSError as err:
        warnings.warn(f"could not write cache file {path}: {err}", stacklevel=2)
    return arrays


def _mismatch(arrays: dict[str, np.ndarray], rows: int | None, required: tuple) -> str | None:
    missing = [k for k in required if k not in arrays]
    if missing:
        return f"no array {missing[0]!r}"
    if rows is not None:
        for k, v in arrays.items():
            if v.ndim == 0 or len(v) != rows:
                return f"array {k!r} has shape {v.shape}, expected {rows} rows"
    return None


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Atomic (cmkd.io): a reader never sees a half-written file, even when two runs fill the
    # cache at once.
    save_npz(path, **arrays)
