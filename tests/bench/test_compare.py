"""The comparison behind `cmkd demo` and `cmkd bench losses`, shortened."""

from __future__ import annotations

import json

from cmkd.comparison import NO_KD, TEACHER, compare_students, mean_std
from cmkd.config import DistillConfig, TermConfig


def test_mean_std_is_in_percent_with_sample_std() -> None:
    assert mean_std([0.5, 0.7]) == "60.0 ± 14.1"
    assert mean_std([0.25]) == "25.0 ± 0.0"


def test_compare_students_writes_the_table(tmp_path, data_root) -> None:
    kd = DistillConfig(terms=[TermConfig("kd", 0.5, {"temperature": 4.0})])
    lines: list[str] = []
    table = compare_students({"KD": kd}, [0, 1], 1, str(tmp_path), echo=lines.append)
    assert (tmp_path / "results.md").read_text() == table
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
