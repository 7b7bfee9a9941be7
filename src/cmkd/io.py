"""Atomic file writes: the one helper every artifact goes through (results, configs, pair
lists, caches, checkpoints, pages, plots).

A file is written to a temp file in its own folder, flushed, and renamed over the target
(`os.replace`, atomic on one filesystem): a reader, or a process killed mid-write, never sees
half a file. Files honour the process umask like any file `open()` creates (mkstemp alone
would make them 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """Yields a temp path beside `path`; on a clean exit it is renamed over `path`, on an error
    removed. `durable` also fsyncs the file and its folder (checkpoints, pair lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: makes a rename in it durable; skipped where folders
    cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any], durable: bool = False) -> None:
    """Atomically write `path` through `write(binary file object)` (torch.save, np.savez ...)."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        write(f)


def write_atomic(path: str | Path, text: str, durable: bool = False) -> None:
    """Atomically write a text file (UTF-8)."""
    write_with(path, lambda f: f.write(text.encode("utf-8")), durable)


def write_json(
    path: str | Path, obj: Any, durable: bool = False, allow_nan: bool = True, indent: int = 2
) -> None:
    """Atomically write `obj` as indented JSON (`allow_nan=False`: strict JSON, NaN refused)."""
    write_atomic(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n", durable)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write arrays as an uncompressed .npz (read back with allow_pickle=False)."""
    write_with(path, lambda f: np.savez(f, **arrays))
