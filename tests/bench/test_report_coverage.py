"""The page of a scenario with a class map: accuracy on the covered and on the uncovered student
classes, from per-class accuracies and test supports, against values worked out by hand. The
accuracies are invented; these tests check the arithmetic, not any method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmkd.bench.pagestore import read_store
from cmkd.bench.report.coverage import cell_groups, covered_classes, group_acc
from cmkd.bench.report.page import write_report
from cmkd.bench.scenarios import NO_KD, TEACHER
from cmkd.bench.store import CellKey, Store

SC, ARCH = "mapped", "S/S"
SUPPORT = {"A": 10, "B": 30, "C": 20}  # test samples per student class
MAP = {"t1": "A", "t2": "A", "t3": "B", "t4": None}  # covers A, B; C uncovered
# Per seed, per-class test accuracies. Covered = (10 a + 30 b) / 40; uncovered = c.
PER_CLASS = {
    NO_KD: [{"A": 0.5, "B": 0.7, "C": 0.4}, {"A": 0.6, "B": 0.6, "C": 0.5}],
    "KD": [{"A": 0.7, "B": 0.8, "C": 0.4}, {"A": 0.8, "B": 0.7, "C": 0.45}],
}


def _record(method: str, seed: int, per_class: dict[str, float] | None) -> dict:
    group = {TEACHER: "teacher-small_cnn", NO_KD: "student-small_cnn"}.get(method, ARCH)
    if per_class is None:  # the teacher: its own classes, no supports
        test, extra = {"acc": 0.9, "f1_macro": 0.9, "acc_per_class": {"t1": 0.9}}, {}
    else:
        acc = sum(per_class[c] * n for c, n in SUPPORT.items()) / sum(SUPPORT.values())
        test = {"acc": acc, "f1_macro": acc, "acc_per_class": per_class}
        extra = {"test_support": SUPPORT}
    return {
        "scenario": SC,
        "group": group,
        "method": method,
        "seed": seed,
        "grid": "mapped",
        "config_hash": "x",
        "result": {
            "epochs": 2,
            "best": {"epoch": 1, "val_acc": 0.5, "test": test},
            "last": {"epoch": 1, "test": test},
            "checkpoint": f"/nonexistent/{method}/seed{seed}/checkpoints/best.ckpt",
            "fit_seconds": 10.0,
            **extra,
        },
        "wall_seconds": 11.0,
    }


@pytest.fixture
def page(tmp_path: Path) -> Path:
    store = Store(tmp_path / "grid")
    for seed in (0, 1):
        records = [_record(TEACHER, seed, None)]
        records += [_record(m, seed, PER_CLASS[m][seed]) for m in (NO_KD, "KD")]
        for r in records:
            store.put(CellKey(SC, r["group"], r["method"], seed), r)
    info = {
        "name": "mapped",
        "scenarios": {SC: {"title": "a mapped toy", "class_map": MAP}},
        "methods": {SC: ["KD"]},
        "architectures": [{"name": ARCH, "teacher": "small_cnn", "student": "small_cnn"}],
        "seeds": [0, 1],
        "epochs": 2,
    }
    (tmp_path / "grid" / "grid.json").write_text(json.dumps(info))
    return write_report(tmp_path / "grid", tmp_path / "page.md", plots=False, echo=lambda *_: 0)


def test_group_accuracy_weights_classes_by_their_test_samples() -> None:
    covered = covered_classes({"class_map": MAP})
    assert covered == ("A", "B")
    cells = {s: _record("KD", s, PER_CLASS["KD"][s]) for s in (0, 1)}
    assert group_acc(cells, covered, "covered") == pytest.approx(
        {0: (10 * 0.7 + 30 * 0.8) / 40, 1: (10 * 0.8 + 30 * 0.7) / 40}
    )
    assert group_acc(cells, covered, "uncovered") == pytest.approx({0: 0.4, 1: 0.45})
    assert group_acc({0: _record(TEACHER, 0, None)}, covered, "covered") == {}
    assert covered_classes({"title": "no map"}) is None


def test_page_shows_covered_and_uncovered_accuracy_with_paired_deltas(page: Path) -> None:
    text = page.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    kd = next(line for line in text.splitlines() if line.startswith("| KD |"))
    cells = dict(zip(columns, (c.strip() for c in kd.strip("|").split("|")), strict=True))
    # KD covered: 77.5 and 72.5 (mean 75.0, std 3.5); no KD: 65.0 and 60.0 -> Δ +12.5 both
    # seeds: no spread, so the interval is the mean itself.
    assert cells["covered acc %"] == "75.0 ± 3.5"
    assert cells["Δ covered vs no-KD"] == "+12.5 [+12.5, +12.5] n=2"
    # Uncovered (C): KD 40.0, 45.0; no KD 40.0, 50.0 -> Δ 0.0 and -5.0: mean -2.5.
    assert cells["uncovered acc %"] == "42.5 ± 3.5"
    assert cells["Δ uncovered vs no-KD"].startswith("-2.5 [")
    teacher = next(line for line in text.splitlines() if line.startswith("| teacher |"))
    assert "—" in teacher  # the teacher's classes are not the student's
    assert "t1, t2 → A; t3 → B" in text and "Unused teacher classes: t4" in text
    assert "*By class group:*" in text


def test_compact_store_keeps_what_the_groups_need(page: Path) -> None:
    store = read_store(page)
    for kd in (c for c in store["cells"] if c["method"] == "KD"):
        full = _record("KD", kd["seed"], PER_CLASS["KD"][kd["seed"]])["result"]
        assert kd["result"]["best"]["test"]["acc_by_group"] == cell_groups(full, ("A", "B"))
        assert "test_support" not in kd["result"]
        assert "acc_per_class" not in json.dumps(kd)
    teacher = next(c for c in store["cells"] if c["method"] == TEACHER)
    assert "acc_by_group" not in teacher["result"]["best"]["test"]


def test_a_store_without_a_class_map_keeps_no_class_scores() -> None:
    from cmkd.bench.report.page import compact_cell

    record = _record("KD", 0, PER_CLASS["KD"][0])
    unmapped = compact_cell(record, curve_seed=1)["result"]
    assert "test_support" not in unmapped and unmapped["best"]["test"].keys() == {"acc", "f1_macro"}
    assert unmapped["best"]["test"]["acc"] == record["result"]["best"]["test"]["acc"]
    mapped = compact_cell(record, curve_seed=1, covered=("A", "B"))["result"]
    # covered A (10 test samples, 0.7), B (30, 0.8); uncovered C (0.4)
    assert mapped["best"]["test"]["acc_by_group"] == pytest.approx(
        {"covered": (10 * 0.7 + 30 * 0.8) / 40, "uncovered": 0.4}
    )
