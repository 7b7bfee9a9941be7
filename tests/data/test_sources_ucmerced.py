"""The UC Merced source: real files, every image resized at decode time with antialiasing, the
cache keyed by the size."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd.data.sources import load_source, source_options
from cmkd.data.sources.ucmerced import load_ucmerced
from cmkd.errors import CmkdError

# airplane55 is 253 x 256 and baseballdiamond35 252 x 256: sizes other than 256 x 256 occur.
FILES = {
    "airplane": ["airplane00.jpg", "airplane55.jpg"],
    "baseballdiamond": ["baseballdiamond00.jpg", "baseballdiamond35.jpg"],
}


@pytest.fixture
def small_tree(data_root: Path, tmp_path: Path) -> Path:
    for cls, names in FILES.items():
        (tmp_path / "ucmerced" / cls).mkdir(parents=True)
        for name in names:
            shutil.copy2(data_root / "ucmerced" / cls / name, tmp_path / "ucmerced" / cls / name)
    return tmp_path


def test_real_ucmerced_at_eurosat_size(data_root: Path) -> None:
    s = load_source("ucmerced", data_root, size=64)["rgb"]
    assert s.x.shape == (2100, 3, 64, 64) and s.x.dtype == np.uint8
    assert len(s.classes) == 21 and s.classes[:3] == ["agricultural", "airplane", "baseballdiamond"]
    assert np.bincount(s.y).tolist() == [100] * 21
    assert s.ids[0] == "agricultural/agricultural00" and len(set(s.ids)) == 2100
    assert "size" in source_options("ucmerced")


def test_resize_is_antialiased_and_every_image_gets_the_same_size(small_tree: Path) -> None:
    s = load_ucmerced(small_tree, size=64)
    assert s.x.shape == (4, 3, 64, 64)  # the 253 x 256 and 252 x 256 images too
    with Image.open(small_tree / "ucmerced" / "airplane" / "airplane00.jpg") as im:
        full = np.asarray(im.convert("RGB"), dtype=np.float64).transpose(2, 0, 1)  # 256 x 256
    # 256 -> 64: each output pixel should summarise its 4 x 4 footprint, as the box mean does;
    # sampling one pixel of it (nearest, no antialiasing) lands much further from that mean.
    box = full.reshape(3, 64, 4, 64, 4).mean(axis=(2, 4))
    nearest = full[:, 2::4, 2::4]
    ours = s.x[0].astype(np.float64)
    assert np.abs(ours - box).mean() < 0.5 * np.abs(nearest - box).mean()
    assert np.abs(ours - box).mean() < 4.0  # grey levels of 255


def test_each_size_is_cached_apart(small_tree: Path, fresh_cache: Path) -> None:
    small, native = load_ucmerced(small_tree, size=32), load_ucmerced(small_tree)
    assert small.x.shape[-2:] == (32, 32) and native.x.shape[-2:] == (256, 256)
    assert len(list(fresh_cache.glob("ucmerced-*.npz"))) == 2
    again = load_ucmerced(small_tree, size=32)  # from the cache
    assert np.array_equal(again.x, small.x)
    assert len(list(fresh_cache.glob("ucmerced-*.npz"))) == 2


def test_bad_size_and_missing_folder(small_tree: Path, tmp_path: Path) -> None:
    for size in (0, -4, 2.5, True):
        with pytest.raises(CmkdError, match="UC Merced size must be a positive number"):
            load_ucmerced(small_tree, size=size)
    with pytest.raises(CmkdError, match=r"UC Merced folder .*ucmerced does not exist"):
        load_ucmerced(tmp_path / "elsewhere")
