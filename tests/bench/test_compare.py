"""The comparison behind `cmkd demo` and `cmkd bench losses`, shortened: its page and the
compact store the page is rendered from."""

from __future__ import annotations

import json

import pytest

from cmkd.bench.compare import compare_students, render_compare_page
from cmkd.bench.scenarios import NO_KD, TEACHER
from cmkd.config import DistillConfig, TermConfig
from cmkd.stats import mean_std


def test_mean_std_is_in_percent_with_sample_std() -> None:
    assert mean_std([0.5, 0.7]) == "60.0 ± 14.1"
    assert mean_std([0.25]) == "25.0 ± 0.0"


def test_compare_students_writes_the_table(tmp_path, data_root) -> None:
    kd = DistillConfig(terms=[TermConfig("kd", 0.5, {"temperature": 4.0})])
    lines: list[str] = []
    table = compare_students(
        {"KD": kd}, [0, 1], 1, str(tmp_path), echo=lines.append, heading="A", command="cmkd x"
    )
    page = (tmp_path / "results.md").read_text()
    assert page == "# A\n\n`cmkd x`\n\n" + table
    rows = [
        line
        for line in table.splitlines()
        if line.startswith(f"| {TEACHER}")
        or line.startswith(f"| {NO_KD}")
        or line.startswith("| KD")
    ]
    assert len(rows) == 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and len(saved["runs"]["KD"]) == 2
    # Each seed's KD run used that seed's teacher.
    for seed, run in zip([0, 1], saved["runs"]["KD"], strict=True):
        assert run["seed"] == seed and f"seed{seed}" in run["teacher_checkpoint"]
    # The store alone renders the page again (no run folder read).
    assert saved["kind"] == "compare" and "acc_per_class" not in json.dumps(saved)
    assert render_compare_page(saved, tmp_path / "results.md") == page
    # A second call reuses every cell: its own clock is short, the compute stays the cells'.
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cells").rglob("seed*.json")]
    compare_students({"KD": kd}, [0, 1], 1, str(tmp_path), echo=lines.append)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["compute_seconds"] == saved["compute_seconds"] > 0
    assert again["compute_seconds"] == pytest.approx(sum(c["wall_seconds"] for c in cells))
    assert again["wall_seconds"] < saved["wall_seconds"]
    page = (tmp_path / "results.md").read_text()
    assert f"Compute {saved['compute_seconds'] / 60:.1f} min" in page
