"""Shared fixtures: the real data root, a private decode cache, quiet run settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cmkd.config import RunConfig
from cmkd.data.root import resolve_data_root


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point CMKD_CACHE at a session temp dir so tests never read or write ~/.cache."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMKD_CACHE", str(tmp_path_factory.mktemp("cmkd-cache")))
        yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = resolve_data_root()
    if not (root / "eurosat").is_dir():
        pytest.skip(f"real data not found under {root} (set $CMKD_DATA or add ../shared/data)")
    return root


@pytest.fixture
def quiet_run(tmp_path: Path) -> RunConfig:
    """Run settings for tests: CPU, no progress bar, outputs in tmp_path."""
    return RunConfig(output_dir=str(tmp_path / "runs"), accelerator="cpu", progress_bar=False)
