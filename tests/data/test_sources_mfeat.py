from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cmkd.data.sources.mfeat import MFEAT_VIEWS, load_mfeat
from cmkd.errors import CmkdError

DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}


def test_six_row_aligned_views(data_root: Path) -> None:
    views = load_mfeat(data_root)
    assert list(views) == list(MFEAT_VIEWS)
    for name, s in views.items():
        assert s.x.shape == (2000, DIMS[name]) and s.x.dtype == np.float32
        assert s.y.tolist() == (np.arange(2000) // 200).tolist()
        assert s.ids[0] == "mfeat_0" and s.classes == [str(d) for d in range(10)]
    assert views["mor"].x[0, 3] == pytest.approx(133.15)


def test_view_choice(data_root: Path) -> None:
    assert list(load_mfeat(data_root, views=["pix", "kar"])) == ["pix", "kar"]
    with pytest.raises(CmkdError, match=r"'abc'.*fou"):
        load_mfeat(data_root, views=["abc"])


def test_row_counts_must_agree(data_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mfeat"
    folder.mkdir()
    shutil.copy2(data_root / "mfeat" / "mfeat-fou.csv", folder / "mfeat-fou.csv")
    lines = (data_root / "mfeat" / "mfeat-kar.csv").read_text().splitlines()
    (folder / "mfeat-kar.csv").write_text("\n".join(lines[:1001]) + "\n")
    with pytest.raises(CmkdError, match="mfeat-kar.csv has 1000 rows but .*mfeat-fou.csv has 2000"):
        load_mfeat(tmp_path, views=["fou", "kar"])
    with pytest.raises(CmkdError, match="mfeat-zer.csv does not exist"):
        load_mfeat(tmp_path, views=["fou", "zer"])
