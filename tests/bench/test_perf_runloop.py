"""The run-loop section's data: real mfeat rows as a tiny npz source (the section itself runs
at toy size in test_perf_sections.py; its numbers come from `cmkd bench perf`, not a test)."""

from __future__ import annotations

import numpy as np

from cmkd.bench.perf.runloop import tiny_npz


def test_tiny_npz_holds_real_mfeat_rows(tmp_path, data_root) -> None:
    from cmkd.data.sources.mfeat import load_mfeat

    with np.load(tiny_npz(tmp_path)) as data:
        x, y = data["x_kar"], data["y"]
    kar = load_mfeat(data_root, ["kar"])["kar"]
    assert x.shape == (300, 50) and np.bincount(y).tolist() == [30] * 10
    np.testing.assert_array_equal(x[:30], kar.x[:30, :50])  # digit 0's first rows, unchanged
