from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cmkd.data.sources import eurosat
from cmkd.data.sources.eurosat import (
    EUROSAT_BANDS,
    load_eurosat_ms,
    load_eurosat_paired,
    load_eurosat_rgb,
)
from cmkd.errors import CmkdError

CLASSES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip


def copy_files(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(src_dir / name, dst_dir / name)


def _small_tree(data_root: Path, dst: Path, per_class: int = 2, classes=CLASSES[:2]) -> Path:
    """A EuroSAT layout with a few real MS files and their RGB twins."""
    for c in classes:
        names = sorted(p.stem for p in (data_root / "eurosat" / "ms" / c).iterdir())[:per_class]
        copy_files(data_root / "eurosat" / "ms" / c, dst / "eurosat" / "ms" / c,
                   [n + ".tif" for n in names])  # fmt: skip
        copy_files(data_root / "eurosat" / "rgb" / c, dst / "eurosat" / "rgb" / c,
                   [n + ".jpg" for n in names])  # fmt: skip
    return dst


def test_paired_has_369_twins_aligned_by_id(data_root: Path) -> None:
    pair = load_eurosat_paired(data_root)
    ms, rgb = pair["ms"], pair["rgb"]
    assert ms.x.shape == (369, 13, 64, 64) and ms.x.dtype == np.uint16
    assert rgb.x.shape == (369, 3, 64, 64) and rgb.x.dtype == np.uint8
    assert ms.classes == rgb.classes == CLASSES
    assert np.array_equal(ms.ids, rgb.ids) and np.array_equal(ms.y, rgb.y)
    assert len(set(ms.ids)) == 369 and "Forest/Forest_1010" in ms.ids
    assert np.bincount(ms.y).tolist() == [40, 40, 40, 34, 35, 30, 35, 40, 35, 40]
    # The twins really are the same patch: MS B04 and RGB red correlate strongly.
    red_ms, red_rgb = ms.x[:, 3].reshape(369, -1), rgb.x[:, 0].reshape(369, -1)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(red_ms[:20], red_rgb[:20], strict=True)]
    assert np.median(corr) > 0.8


def test_band_selection(data_root: Path) -> None:
    full = load_eurosat_ms(data_root)
    some = load_eurosat_ms(data_root, bands=["B04", "B03", "B02", "B8A"])
    assert some.x.shape == (369, 4, 64, 64)
    assert np.array_equal(some.x[:, 3], full.x[:, EUROSAT_BANDS.index("B8A")])
    assert np.array_equal(some.x[:, 0], full.x[:, 3])
    with pytest.raises(CmkdError, match=r"'B13'.*B8A"):
        load_eurosat_ms(data_root, bands=["B04", "B13"])


def test_rgb_subsets_and_limit(data_root: Path) -> None:
    paired = load_eurosat_rgb(data_root, subset="paired")
    assert len(paired) == 369
    unpaired = load_eurosat_rgb(data_root, subset="unpaired", per_class_limit=5)
    assert len(unpaired) == 50 and np.bincount(unpaired.y).tolist() == [5] * 10
    assert not set(unpaired.ids) & set(paired.ids)
    assert unpaired.classes == CLASSES
    first = load_eurosat_rgb(data_root, per_class_limit=3)
    assert first.ids[:3].tolist() == ["AnnualCrop/AnnualCrop_1", "AnnualCrop/AnnualCrop_10",
                                      "AnnualCrop/AnnualCrop_100"]  # fmt: skip
    with pytest.raises(CmkdError, match="subset"):
        load_eurosat_rgb(data_root, subset="half")


def test_second_load_does_not_decode(data_root: Path, fresh_cache: Path, monkeypatch) -> None:
    first = load_eurosat_rgb(data_root, per_class_limit=20)

    def fail(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(eurosat, "_read_rgb", fail)
    monkeypatch.setattr(eurosat, "_read_ms", fail)
    second = load_eurosat_rgb(data_root, per_class_limit=20)
    assert np.array_equal(first.x, second.x)
    with pytest.raises(AssertionError):  # a different selection is a cache miss
        load_eurosat_rgb(data_root, per_class_limit=21)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match=f"{tmp_path / 'eurosat' / 'ms'}.*download=True"):
        load_eurosat_ms(tmp_path)


def test_corrupt_tif(data_root: Path, tmp_path: Path) -> None:
    root = _small_tree(data_root, tmp_path)
    bad = next((root / "eurosat" / "ms" / "Forest").iterdir())
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CmkdError, match=bad.name):
        load_eurosat_ms(root)


def test_tif_with_wrong_band_count(data_root: Path, tmp_path: Path) -> None:
    root = _small_tree(data_root, tmp_path)
    bad = next((root / "eurosat" / "ms" / "Forest").iterdir())
    tifffile.imwrite(bad, tifffile.imread(bad)[:, :, :3])
    with pytest.raises(CmkdError, match=rf"{bad.name} has 3 bands, expected 13"):
        load_eurosat_ms(root)


def test_empty_class(data_root: Path, tmp_path: Path) -> None:
    root = _small_tree(data_root, tmp_path)
    (root / "eurosat" / "ms" / "River").mkdir()
    with pytest.raises(CmkdError, match="River is empty"):
        load_eurosat_ms(root)


def test_class_only_in_ms_is_named(data_root: Path, tmp_path: Path) -> None:
    root = _small_tree(data_root, tmp_path)
    _small_tree(data_root, tmp_path / "more", classes=["River"])
    (root / "eurosat" / "ms" / "River").symlink_to(tmp_path / "more" / "eurosat" / "ms" / "River")
    with pytest.raises(CmkdError, match="'River'"):
        load_eurosat_paired(root)


def test_download_lays_out_the_official_archive(data_root: Path, tmp_path: Path,
                                                monkeypatch) -> None:  # fmt: skip
    small = _small_tree(data_root, tmp_path / "small")
    archive = tmp_path / "EuroSATallBands.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (small / "eurosat" / "ms").rglob("*.tif"):
            zf.write(f, f"{eurosat.MS_ARCHIVE_DIR}/{f.parent.name}/{f.name}")
    monkeypatch.setattr(eurosat, "MS_URL", archive.as_uri())
    monkeypatch.setattr(
        eurosat, "MS_CHECKSUM", "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    )
    root = tmp_path / "root"
    ms = load_eurosat_ms(root, download=True)
    assert ms.x.shape == (4, 13, 64, 64)
    assert sorted(p.name for p in (root / "eurosat").iterdir()) == ["ms"]  # staging removed
