from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd.data.sources.custom import load_folders
from cmkd.data.sources.npz import load_npz
from cmkd.errors import CmkdError

NAMES = {"Forest": ["Forest_1010", "Forest_1031"], "River": ["River_112", "River_1237"]}
AS_PNG = {"Forest_1031", "River_112"}  # mix formats within one modality


@pytest.fixture
def two_modalities(data_root: Path, tmp_path: Path) -> dict[str, str]:
    """Real EuroSAT twins as user folders: ms/<class>/*.tif and rgb/<class>/*.png|jpg."""
    for cls, names in NAMES.items():
        for sub in ("ms", "rgb"):
            (tmp_path / sub / cls).mkdir(parents=True)
        for name in names:
            shutil.copy2(data_root / "eurosat" / "ms" / cls / f"{name}.tif", tmp_path / "ms" / cls)
            rgb = data_root / "eurosat" / "rgb" / cls / f"{name}.jpg"
            if name in AS_PNG:
                Image.open(rgb).save(tmp_path / "rgb" / cls / f"{name}.png")
            else:
                shutil.copy2(rgb, tmp_path / "rgb" / cls)
    return {"ms": str(tmp_path / "ms"), "rgb": str(tmp_path / "rgb")}


def test_folders_pair_by_file_name(two_modalities: dict[str, str], data_root: Path) -> None:
    out = load_folders(two_modalities)
    ms, rgb = out["ms"], out["rgb"]
    assert ms.x.shape == (4, 13, 64, 64) and ms.x.dtype == np.uint16
    assert rgb.x.shape == (4, 3, 64, 64) and rgb.x.dtype == np.uint8
    assert ms.classes == rgb.classes == ["Forest", "River"]
    assert ms.ids.tolist() == rgb.ids.tolist() == [
        "Forest/Forest_1010", "Forest/Forest_1031", "River/River_112", "River/River_1237",
    ]  # fmt: skip
    assert ms.y.tolist() == [0, 0, 1, 1]
    jpg = np.asarray(Image.open(data_root / "eurosat/rgb/River/River_1237.jpg")).transpose(2, 0, 1)
    assert np.array_equal(rgb.x[3], jpg)


def test_folder_size_mismatch_names_the_file(two_modalities: dict[str, str]) -> None:
    odd = Path(two_modalities["rgb"]) / "River" / "River_1237.jpg"
    Image.open(odd).resize((32, 32)).save(odd)
    with pytest.raises(CmkdError, match=r"River_1237.jpg is 3x32x32 uint8"):
        load_folders(two_modalities)


def test_folder_class_mismatch_names_the_class(two_modalities: dict[str, str]) -> None:
    extra = Path(two_modalities["rgb"]) / "Lake"
    extra.mkdir()
    shutil.copy2(Path(two_modalities["rgb"]) / "Forest" / "Forest_1010.jpg", extra / "Lake_1.jpg")
    with pytest.raises(CmkdError, match=r"class 'Lake' is only in modality 'rgb'"):
        load_folders(two_modalities)


def test_folder_bad_inputs(two_modalities: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="nowhere"):
        load_folders({"rgb": str(tmp_path / "nowhere")})
    (Path(two_modalities["ms"]) / "Empty").mkdir()
    with pytest.raises(CmkdError, match="Empty is empty"):
        load_folders({"ms": two_modalities["ms"]})
    bad = Path(two_modalities["rgb"]) / "Forest" / "Forest_1010.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(CmkdError, match="cannot read image .*Forest_1010.jpg"):
        load_folders({"rgb": two_modalities["rgb"]})
    (Path(two_modalities["rgb"]) / "River" / "notes.txt").write_text("x")
    with pytest.raises(CmkdError, match="notes.txt"):
        load_folders({"rgb": two_modalities["rgb"]})


def test_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x_a, x_b = np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((3, 1, 2, 2), np.uint8)
    np.savez(path, x_a=x_a, x_b=x_b, y=np.array([0, 2, 1]), classes=np.array(["c", "d", "e"]))
    out = load_npz(path)
    assert list(out) == ["a", "b"] and np.array_equal(out["a"].x, x_a)
    assert out["b"].ids.tolist() == ["0", "1", "2"] and out["b"].classes == ["c", "d", "e"]
    np.savez(path, x_a=x_a, y=np.array([0, 1, 1]), ids=np.array(["p", "q", "r"]))
    assert load_npz(path)["a"].classes == ["0", "1"]
    assert load_npz(path)["a"].ids.tolist() == ["p", "q", "r"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_a": np.zeros((3, 2)), "y": np.arange(2)}, "x_a has 3 rows but y has 2"),
        ({"x_a": np.zeros((2, 2)), "y": np.array([0, 3]), "classes": np.array(["u", "v"])},
         "label 3 is an unknown class"),
        ({"x_a": np.zeros((2, 2)), "y": np.arange(2), "z": np.zeros(2)}, "unexpected array 'z'"),
        ({"y": np.arange(2)}, "needs at least one x_<modality>"),
        ({"x_a": np.zeros((2, 2)), "y": np.arange(2), "ids": np.array(["s", "s"])}, "not unique"),
    ],
)  # fmt: skip
def test_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CmkdError, match=f"bad.npz.*{message}"):
        load_npz(path)


def test_npz_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="nothing.npz does not exist"):
        load_npz(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CmkdError, match="cannot read npz file .*junk.npz"):
        load_npz(tmp_path / "junk.npz")
