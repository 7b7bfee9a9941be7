"""The run-loop benchmark's measurements run end to end on real data and render (small sizes:
the numbers themselves come from `python -m cmkd.bench.perf_runloop`, not from a test)."""

from __future__ import annotations

import numpy as np

from cmkd.bench.perf_runloop import fit_vs_plain, render_runloop, tiny_npz


def test_tiny_npz_holds_real_mfeat_rows(tmp_path, data_root) -> None:
    from cmkd.data.sources.mfeat import load_mfeat

    with np.load(tiny_npz(tmp_path)) as data:
        x, y = data["x_kar"], data["y"]
    kar = load_mfeat(data_root, ["kar"])["kar"]
    assert x.shape == (300, 50) and np.bincount(y).tolist() == [30] * 10
    np.testing.assert_array_equal(x[:30], kar.x[:30, :50])  # digit 0's first rows, unchanged


def test_fit_vs_plain_measures_every_variant_and_renders(tmp_path, data_root) -> None:
    report = fit_vs_plain(repeats=1, epochs=20, output_dir=tmp_path)
    variants = [k for k, v in report.items() if isinstance(v, dict)]
    assert variants[0] == "plain PyTorch loop" and len(variants) == 6
    for name in variants:
        entry = report[name]
        assert entry["seconds"]["median"] > 0 and entry["ratio"]["n"] == 1
    assert report["plain PyTorch loop"]["ratio"]["median"] == 1.0
    # 20 epochs: the defaults validate every epoch, so one data epoch per Lightning epoch;
    # validating every 20 makes the whole run one block.
    assert report["cmkd (defaults)"]["epochs_per_lightning_epoch"] == 1
    assert (
        report["cmkd, validate and checkpoint every 20 epochs"]["epochs_per_lightning_epoch"] == 20
    )
    lines = render_runloop({"fit_vs_plain": report})
    assert any(line.startswith("| cmkd (defaults) |") for line in lines)
