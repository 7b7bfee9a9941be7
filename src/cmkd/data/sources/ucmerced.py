"""UC Merced Land Use (Yang & Newsam 2010): 2,100 aerial RGB images of US cities (USGS, about
0.3 m per pixel), 21 land-use classes of 100 images each, about 256 x 256 pixels.

Layout under the data root: ucmerced/<class>/<class><nn>.jpg (or the original .tif). Its label
set is not EuroSAT's: a UC Merced teacher teaches a EuroSAT student through a class map
(`distill.class_map`, see `cmkd.classmap`).

A few images are a little smaller or larger than 256 x 256 (242 to 257 pixels a side), so every
image is resized to `size` x `size` when it is decoded, with antialiasing (`read_pil`); the
cache keeps the resized arrays, one file per size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmkd.data.cache import cached_arrays, fingerprint_files
from cmkd.data.samples import Samples
from cmkd.data.sources._files import class_files, decode_all, read_pil, require_dir, sample_id
from cmkd.errors import CmkdError

# Bump when the resampling changes, so cached arrays of the old filter are not reused.
RESAMPLING = "pil-bilinear-antialiased-v1"


def load_ucmerced(root: Path, size: int = 256) -> Samples:
    """UC Merced as uint8 N x 3 x size x size (default 256, the images' own size; 64 matches
    EuroSAT's patches, a 4x reduction from 0.3 m to about 1.2 m per pixel)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CmkdError(f"UC Merced size must be a positive number of pixels, got {size!r}")
    folder = require_dir(Path(root) / "ucmerced", "UC Merced")
    files = class_files(folder, (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    paths = [p for group in files.values() for p in group]

    def read(path: Path) -> np.ndarray:
        arr = read_pil(path, size)
        if arr.shape[0] != 3:
            raise CmkdError(f"UC Merced file {path} has {arr.shape[0]} channels, expected 3")
        return arr

    def build() -> dict[str, np.ndarray]:
        return {"x": decode_all(paths, read)}

    key = {
        "files": fingerprint_files(paths, folder),
        "folder": str(folder.resolve()),
        "size": size,
        "resampling": RESAMPLING,
    }
    x = cached_arrays("ucmerced", key, build, rows=len(paths))["x"]
    y = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(files.values())])
    ids = np.array([sample_id(c, p) for c, group in files.items() for p in group])
    return Samples(x, y, ids, list(files))
