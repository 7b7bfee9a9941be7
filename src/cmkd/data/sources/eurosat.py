"""EuroSAT: Sentinel-2 multispectral (13 bands) and RGB patches of the same 10 land-cover classes.

Layout under the data root: eurosat/ms/<Class>/<Class>_<n>.tif and eurosat/rgb/<Class>/<...>.jpg.
An RGB file with the same basename as an MS file is the same patch (a "twin").
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmkd.data.cache import cached_arrays, fingerprint_files
from cmkd.data.download import download_and_verify
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

EUROSAT_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip

# Official archives, pinned as torchgeo (MS, sha256) and torchvision (RGB, md5) pin them; the
# original madm.dfki.de links are gone, these are the maintained Hugging Face mirrors.
MS_URL = (
    "https://hf.co/datasets/torchgeo/eurosat/resolve/"
    "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip"
)
MS_CHECKSUM = "sha256:751f070f9bffa2eed48b24ca2dd0b02959280c08837e8c9a5532a67ba611df59"
MS_ARCHIVE_DIR = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
RGB_URL = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)
RGB_CHECKSUM = "md5:c8fa014336c82ac7804f0398fcb19387"
RGB_ARCHIVE_DIR = "2750"

SUBSETS = ("all", "paired", "unpaired")


def load_eurosat_ms(
    root: Path, bands: Sequence[str] | None = None, download: bool = False
) -> Samples:
    """EuroSAT multispectral as uint16 N x C x 64 x 64, C = the chosen `bands` (default all 13,
    in file order). The cache holds all 13 bands, so choosing other bands does not re-decode."""
    band_index = _band_index(bands)
    folder = _folder(Path(root), "ms", download)
    files = class_files(folder, (".tif", ".tiff"))
    paths = [p for group in files.values() for p in group]

    def build() -> dict[str, np.ndarray]:
        return {"x": decode_all(paths, _read_ms)}

    key = {"files": fingerprint_files(paths, folder), "folder": str(folder.resolve())}
    x = cached_arrays("eurosat_ms", key, build, rows=len(paths))["x"]
    y, ids = _labels_ids(files)
    return Samples(x if bands is None else x[:, band_index], y, ids, list(files))


def load_eurosat_rgb(
    root: Path,
    subset: str = "all",
    per_class_limit: int | None = None,
    download: bool = False,
) -> Samples:
    """EuroSAT RGB as uint8 N x 3 x 64 x 64.

    subset: "paired" keeps the files with an MS twin of the same basename, "unpaired" the
    others, "all" everything. per_class_limit keeps the first k files of each class (sorted
    by name), for tests and quick runs.
    """
    if subset not in SUBSETS:
        raise CmkdError(f"unknown EuroSAT RGB subset {subset!r}; choose one of {list(SUBSETS)}")
    if per_class_limit is not None and per_class_limit < 1:
        raise CmkdError(f"per_class_limit must be a positive integer, got {per_class_limit}")
    root = Path(root)
    folder = _folder(root, "rgb", download)
    files = class_files(folder, (".jpg", ".jpeg"))
    if subset != "all":
        ms_folder = require_dir(root / "eurosat" / "ms", "EuroSAT MS", f" (needed by {subset=})")
        twins = {
            sample_id(c, p)
            for c, group in class_files(ms_folder, (".tif", ".tiff")).items()
            for p in group
        }
        keep = subset == "paired"
        files = {
            c: [p for p in group if (sample_id(c, p) in twins) == keep]
            for c, group in files.items()
        }
    if per_class_limit is not None:
        files = {c: group[:per_class_limit] for c, group in files.items()}
    paths = [p for group in files.values() for p in group]
    if not paths:
        raise CmkdError(f"no EuroSAT RGB files in {folder} for {subset=}")

    def build() -> dict[str, np.ndarray]:
        return {"x": decode_all(paths, _read_rgb)}

    key = {"files": fingerprint_files(paths, folder), "folder": str(folder.resolve())}
    x = cached_arrays("eurosat_rgb", key, build, rows=len(paths))["x"]
    y, ids = _labels_ids(files)
    return Samples(x, y, ids, list(files))


def load_eurosat_paired(
    root: Path, bands: Sequence[str] | None = None, download: bool = False
) -> dict[str, Samples]:
    """The MS files and their RGB twins, rows aligned by id."""
    ms = load_eurosat_ms(root, bands=bands, download=download)
    rgb = load_eurosat_rgb(root, subset="paired", download=download)
    if ms.classes != rgb.classes:
        extra = sorted(set(ms.classes) ^ set(rgb.classes))
        raise CmkdError(f"EuroSAT MS and RGB class folders differ: {extra[0]!r} is not in both")
    row = {sid: i for i, sid in enumerate(rgb.ids)}
    missing = [sid for sid in ms.ids if sid not in row]
    if missing:
        raise CmkdError(
            f"EuroSAT MS file {missing[0]} has no RGB twin {missing[0]}.jpg in "
            f"{Path(root) / 'eurosat' / 'rgb'} ({len(missing)} without a twin)"
        )
    return {"ms": ms, "rgb": rgb.subset(np.array([row[sid] for sid in ms.ids], dtype=np.int64))}


def _band_index(bands: Sequence[str] | None) -> list[int]:
    if bands is None:
        return list(range(len(EUROSAT_BANDS)))
    if isinstance(bands, str):
        bands = [bands]
    unknown = [b for b in bands if b not in EUROSAT_BANDS]
    if unknown:
        raise CmkdError(f"unknown EuroSAT band {unknown[0]!r}; valid: {list(EUROSAT_BANDS)}")
    if not bands:
        raise CmkdError(f"no EuroSAT bands chosen; valid: {list(EUROSAT_BANDS)}")
    return [EUROSAT_BANDS.index(b) for b in bands]


def _read_ms(path: Path) -> np.ndarray:
    arr = read_tif(path)
    if arr.shape[0] != len(EUROSAT_BANDS):
        raise CmkdError(f"EuroSAT MS file {path} has {arr.shape[0]} bands, expected 13")
    return arr


def _read_rgb(path: Path) -> np.ndarray:
    arr = read_pil(path)
    if arr.shape[0] != 3:
        raise CmkdError(f"EuroSAT RGB file {path} has {arr.shape[0]} channels, expected 3")
    return arr


def _labels_ids(files: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(files.values())])
    ids = np.array([sample_id(c, p) for c, group in files.items() for p in group])
    return y, ids


def _folder(root: Path, kind: str, download: bool) -> Path:
    folder = root / "eurosat" / kind
    if not folder.is_dir() and download:
        _download(root, kind)
    return require_dir(folder, f"EuroSAT {kind.upper()}", " (pass download=True to fetch it)")


def _download(root: Path, kind: str) -> None:
    """Fetch the official archive and move its class folders to eurosat/<kind>."""
    url, checksum, inner = (
        (MS_URL, MS_CHECKSUM, MS_ARCHIVE_DIR) if kind == "ms"
        else (RGB_URL, RGB_CHECKSUM, RGB_ARCHIVE_DIR)
    )  # fmt: skip
    staging = root / "eurosat" / f".download-{kind}"
    try:
        extracted = download_and_verify(url, staging, checksum) / inner
        require_dir(extracted, "extracted EuroSAT archive")
        extracted.rename(root / "eurosat" / kind)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
