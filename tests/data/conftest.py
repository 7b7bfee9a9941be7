"""Fixtures for the data tests (the data root and private cache come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache for tests that must see the first (decoding) call."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CMKD_CACHE", str(cache))
    return cache
