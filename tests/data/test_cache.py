from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cmkd.data.cache import cache_path, cached_arrays, fingerprint_files


def _builder(calls: list[int]):
    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"x": np.arange(6, dtype=np.uint16).reshape(2, 3), "ids": np.array(["a", "b"])}

    return build


def test_second_call_reads_the_cache(fresh_cache: Path) -> None:
    calls: list[int] = []
    first = cached_arrays("t", {"k": 1}, _builder(calls))
    second = cached_arrays("t", {"k": 1}, _builder(calls))
    assert calls == [1]
    assert second["x"].dtype == np.uint16 and np.array_equal(first["x"], second["x"])
    assert second["ids"].tolist() == ["a", "b"]
    assert [p.suffix for p in fresh_cache.iterdir()] == [".npz"]  # no temp file left behind


def test_other_key_builds_again(fresh_cache: Path) -> None:
    calls: list[int] = []
    cached_arrays("t", {"k": 1}, _builder(calls))
    cached_arrays("t", {"k": 2}, _builder(calls))
    assert calls == [1, 1]


def test_corrupt_cache_file_is_rebuilt(fresh_cache: Path) -> None:
    calls: list[int] = []
    cached_arrays("t", {"k": 1}, _builder(calls))
    cache_path("t", {"k": 1}).write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="corrupt cache"):
        again = cached_arrays("t", {"k": 1}, _builder(calls))
    assert calls == [1, 1] and again["x"].shape == (2, 3)
    cached_arrays("t", {"k": 1}, _builder(calls))  # the rebuilt file is good again
    assert calls == [1, 1]


def test_fingerprint_changes_with_the_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    before = fingerprint_files([a, b], tmp_path)
    assert fingerprint_files([a, b], tmp_path) == before
    assert fingerprint_files([a], tmp_path) != before
    os.utime(b, ns=(0, 12345))
    assert fingerprint_files([a, b], tmp_path) != before


@pytest.mark.parametrize(
    "arrays, problem",
    [({"y": np.zeros(2)}, "no array 'x'"), ({"x": np.zeros((1, 3))}, "expected 2 rows")],
)
def test_readable_cache_file_of_the_wrong_content_is_rebuilt(
    fresh_cache: Path, arrays: dict, problem: str
) -> None:
    """A valid npz that is not what was cached (no x, a truncated x) is rebuilt, never read."""
    calls: list[int] = []
    cached_arrays("t", {"k": 1}, _builder(calls), rows=2)
    np.savez(cache_path("t", {"k": 1}), **arrays)
    with pytest.warns(UserWarning, match=problem):
        again = cached_arrays("t", {"k": 1}, _builder(calls), rows=2)
    assert calls == [1, 1] and again["x"].shape == (2, 3)
