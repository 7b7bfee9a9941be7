"""Pseudo-views: the right bands by name, calibrated to the target's statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmkd.data.sources.eurosat import load_eurosat_ms, load_eurosat_rgb
from cmkd.errors import CmkdError
from cmkd.pairing.pseudo_views import PSEUDO_VIEWS, get_pseudo_view


@pytest.fixture(scope="module")
def ms_rgb(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    ms = load_eurosat_ms(data_root)
    rgb = load_eurosat_rgb(data_root, subset="unpaired", per_class_limit=5)
    return ms.x[:60], rgb.x


def test_picks_b04_b03_b02_by_name(data_root: Path, ms_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    ms, _ = ms_rgb
    raw = get_pseudo_view("eurosat_ms_to_rgb", calibrate=False)(ms)
    named = load_eurosat_ms(data_root, bands=["B04", "B03", "B02"]).x[:60]
    assert raw.dtype == np.float32 and raw.shape == (60, 3, 64, 64)
    np.testing.assert_array_equal(raw, named.astype(np.float32))
    # Not the authors' bands 1-3 (B01, B02, B03).
    assert not np.array_equal(raw, ms[:, :3].astype(np.float32))


def test_calibration_matches_target_statistics(ms_rgb: tuple[np.ndarray, np.ndarray]) -> None:
    ms, rgb = ms_rgb
    view = get_pseudo_view("eurosat_ms_to_rgb").fit(ms, rgb)
    out = view(ms)
    assert out.dtype == np.float32 and out.shape == (60, 3, 64, 64)
    target = rgb.astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), target.mean(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), target.std(axis=(0, 2, 3)), rtol=1e-4)
    # A per-band affine map: order within each band is kept.
    raw = ms[:, 3].astype(np.float64).ravel()
    assert np.corrcoef(raw, out[:, 0].ravel())[0, 1] > 0.9999


def test_unfitted_and_wrong_shapes_are_user_errors() -> None:
    view = get_pseudo_view("eurosat_ms_to_rgb")
    with pytest.raises(CmkdError, match="not fitted"):
        view(np.zeros((2, 13, 8, 8), np.uint16))
    with pytest.raises(CmkdError, match="13"):
        view.fit(np.zeros((2, 10, 8, 8)), np.zeros((2, 3, 8, 8)))


def test_rgb_to_ms_cannot_be_derived() -> None:
    assert "eurosat_rgb_to_ms" not in PSEUDO_VIEWS
    with pytest.raises(CmkdError, match="cannot be derived.*eurosat_ms_to_rgb"):
        get_pseudo_view("eurosat_rgb_to_ms")
    with pytest.raises(CmkdError, match="unknown pseudo-view 'nope'"):
        get_pseudo_view("nope")
