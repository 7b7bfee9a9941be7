from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmkd.data.sources import SOURCES, load_source, official_test_mask
from cmkd.errors import CmkdError

MODALITIES = {
    "eurosat_paired": ({}, ["ms", "rgb"]),
    "eurosat_ms": ({"bands": ["B02"]}, ["ms"]),
    "eurosat_rgb": ({"subset": "unpaired", "per_class_limit": 2}, ["rgb"]),
    "fsdd": ({}, ["audio"]),
    "mnist": ({}, ["image"]),
    "mfeat": ({}, ["fou", "fac", "kar", "pix", "zer", "mor"]),
    "ucmerced": ({"size": 8}, ["rgb"]),
}


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_modality_names(data_root: Path, name: str) -> None:
    options, modalities = MODALITIES[name]
    assert list(load_source(name, data_root, **options)) == modalities


def test_folder_and_npz_via_registry(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_v=np.zeros((2, 3)), y=np.array([0, 1]))
    assert list(load_source("npz", tmp_path, path=str(tmp_path / "d.npz"))) == ["v"]
    with pytest.raises(CmkdError, match="needs option 'folders'"):
        load_source("folder", tmp_path)
    assert set(SOURCES) == set(MODALITIES) | {"folder", "npz"}


def test_unknown_source_and_option(data_root: Path) -> None:
    with pytest.raises(CmkdError, match=r"unknown data source 'cifar'.*eurosat_paired"):
        load_source("cifar", data_root)
    with pytest.raises(CmkdError, match=r"unknown option 'band'.*'bands'"):
        load_source("eurosat_ms", data_root, band=["B02"])


def test_official_test_mask() -> None:
    assert official_test_mask("fsdd", ["1_theo_3", "1_theo_30"]).tolist() == [True, False]
    with pytest.raises(CmkdError, match="'mnist' has no official test split"):
        official_test_mask("mnist", ["t10k_0"])
