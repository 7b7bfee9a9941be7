"""The user's own images: one folder per modality, one subfolder per class (an .npz file of
arrays is `cmkd.data.sources.npz`)."""

from __future__ import annotations

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
