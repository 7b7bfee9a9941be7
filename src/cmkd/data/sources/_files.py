"""Folder checks shared by the sources: every problem is a CmkdError naming the path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cmkd.errors import CmkdError


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise CmkdError(f"{what} folder {path} does not exist{hint}")
    return path


def require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise CmkdError(f"{what} file {path} does not exist{hint}")
    return path


def class_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    """Map each class subfolder of `folder` (sorted) to its files with one of `suffixes`
    (lower case, sorted by name).

    Hidden files are ignored; any other file with an unexpected suffix, and a class with no
    files, is an error rather than silently skipped.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CmkdError(f"folder {folder} has no class subfolders")
    files: dict[str, list[Path]] = {}
    for name in classes:
        found = []
        for path in sorted((folder / name).iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in suffixes:
                raise CmkdError(f"unexpected entry {path} (expected {'/'.join(suffixes)} files)")
            found.append(path)
        if not found:
            raise CmkdError(f"class folder {folder / name} is empty (no {'/'.join(suffixes)})")
        files[name] = found
    return files


def sample_id(cls: str, path: Path) -> str:
    return f"{cls}/{path.stem}"


def read_tif(path: Path) -> np.ndarray:
    """A TIFF as C x H x W, whether its samples are pixel-interleaved or planar."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    except Exception as err:  # tifffile raises many types on a damaged file
        raise CmkdError(f"cannot read TIFF {path}: {err}") from err
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and axes.endswith("YXS"):
        return arr.transpose(2, 0, 1)
    if arr.ndim == 3 and axes.endswith("YX"):
        return arr
    raise CmkdError(f"TIFF {path} has an unsupported layout {axes} {arr.shape}")


def read_pil(path: Path, size: int | None = None) -> np.ndarray:
    """A JPEG/PNG as C x H x W in its stored dtype (palette and 1-bit images are expanded).

    `size`: resized to size x size first, with PIL's bilinear filter, which widens with the
    reduction factor when shrinking (antialiased, as torchvision's antialias=True): a 256 ->
    64 reduction averages each output pixel's 4 x 4 footprint instead of aliasing."""
    try:
        with Image.open(path) as im:
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode in ("P", "PA"):
                alpha = im.mode == "PA" or "transparency" in im.info
                im = im.convert("RGBA" if alpha else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise CmkdError(f"cannot read image {path}: {err}") from err
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_all(paths: list[Path], read: Callable[[Path], np.ndarray]) -> np.ndarray:
    """Decode every file into one N x ... array; all must share shape and dtype."""
    first = read(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=first.dtype)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        arr = read(path)
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise CmkdError(
                f"{path} is {_desc(arr)} but {paths[0]} is {_desc(first)}; "
                "all images of a modality must match"
            )
        out[i] = arr
    return out


def _desc(arr: np.ndarray) -> str:
    return f"{'x'.join(map(str, arr.shape))} {arr.dtype} (C x H x W)"
