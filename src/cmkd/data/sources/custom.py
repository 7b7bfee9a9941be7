"""The user's own data: image folders (one subfolder per class) or one .npz file."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from cmkd.data.cache import cached_arrays, fingerprint_files
from cmkd.data.samples import Samples
from cmkd.data.sources._files import (
    class_files,
    decode_all,
    read_pil,
    read_tif,
    require_dir,
    require_file,
    sample_id,
)
from cmkd.errors import CmkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def load_folders(folders: dict[str, str | Path]) -> dict[str, Samples]:
    """One modality per folder, each <folder>/<class>/<image>; ids are "<class>/<file stem>",
    so files of the same name in two modalities are the same (paired) sample.

    All modalities must have the same class subfolders, so labels mean the same thing.
    """
    if not folders:
        raise CmkdError("the folder source needs folders={modality: path, ...}")
    out: dict[str, Samples] = {}
    for modality, path in folders.items():
        folder = require_dir(Path(path).expanduser(), f"{modality!r}")
        out[modality] = _load_folder(folder)
    names = list(out)
    ref = out[names[0]]
    for modality in names[1:]:
        classes = out[modality].classes
        if classes != ref.classes:
            odd = sorted(set(classes) ^ set(ref.classes))[0]
            where = modality if odd in classes else names[0]
            raise CmkdError(
                f"class {odd!r} is only in modality {where!r} ({folders[where]}); "
                f"every modality needs the same class subfolders"
            )
    return out


def _load_folder(folder: Path) -> Samples:
    files = class_files(folder, IMAGE_SUFFIXES)
    ids = [sample_id(c, p) for c, group in files.items() for p in group]
    dups = [i for i, count in Counter(ids).items() if count > 1]
    if dups:
        dup = dups[0]
        raise CmkdError(f"two files in {folder} share the name {dup}.*; ids must be unique")
    paths = [p for group in files.values() for p in group]

    def build() -> dict[str, np.ndarray]:
        return {"x": decode_all(paths, _read_image)}

    key = {"files": fingerprint_files(paths, folder), "folder": str(folder.resolve())}
    x = cached_arrays("folder", key, build, rows=len(paths))["x"]
    y = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(files.values())])
    return Samples(x, y, np.array(ids), list(files))


def _read_image(path: Path) -> np.ndarray:
    return read_tif(path) if path.suffix.lower() in (".tif", ".tiff") else read_pil(path)


def load_npz(path: str | Path) -> dict[str, Samples]:
    """Arrays x_<modality> (one or more, rows aligned), y, optional ids and classes.

    Without `classes` the names are "0".."max(y)"; without `ids`, "<row>".
    """
    path = require_file(Path(path).expanduser(), "npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CmkdError(f"cannot read npz file {path}: {err}") from err
    xs = {k[2:]: v for k, v in arrays.items() if k.startswith("x_") and len(k) > 2}
    unexpected = set(arrays) - {f"x_{m}" for m in xs} - {"y", "ids", "classes"}
    if unexpected:
        raise CmkdError(
            f"npz file {path} has unexpected array {sorted(unexpected)[0]!r}; "
            "expected x_<modality>, y, ids, classes"
        )
    if not xs or "y" not in arrays:
        raise CmkdError(f"npz file {path} needs at least one x_<modality> array and y")
    y = arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise CmkdError(f"npz file {path}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    n = len(y)
    ids = arrays["ids"].astype(str) if "ids" in arrays else np.array([str(i) for i in range(n)])
    for name, arr in [*((f"x_{m}", v) for m, v in xs.items()), ("ids", ids)]:
        if arr.ndim == 0 or len(arr) != n:
            rows = len(np.atleast_1d(arr))
            raise CmkdError(f"npz file {path}: {name} has {rows} rows but y has {n}")
    if len(set(ids.tolist())) != n:
        raise CmkdError(f"npz file {path}: ids are not unique")
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
    else:
        classes = [str(i) for i in range(int(y.max(initial=-1)) + 1)]
    bad = y[(y < 0) | (y >= len(classes))]
    if len(bad):
        raise CmkdError(f"npz file {path}: label {int(bad[0])} is an unknown class "
                        f"(classes are {classes})")  # fmt: skip
    return {m: Samples(x, y, ids, list(classes)) for m, x in xs.items()}
