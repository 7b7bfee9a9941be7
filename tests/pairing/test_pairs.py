"""The pair list file: round trip, validation, ids to rows, the summary a user reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.pairing.pairs import PairList


def _pairs() -> PairList:
    # class a: s0,s1,s2 -> t0,t0,t1 ; class b: s3..s9 -> t2 six times, t3 once
    return PairList(
        student_ids=np.array([f"s{i}" for i in range(10)]),
        teacher_ids=np.array(["t0", "t0", "t1"] + ["t2"] * 6 + ["t3"]),
        classes=["a", "b"],
        student_labels=np.array([0] * 3 + [1] * 7),
        teacher_labels=np.array([0] * 3 + [1] * 7),
        method="ssm",
        scores=np.linspace(0, 1, 10),
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    pairs = _pairs()
    path = tmp_path / "sub" / "pairs.json"
    pairs.save(path)
    back = PairList.load(path)
    for field in ("student_ids", "teacher_ids", "student_labels", "teacher_labels", "scores"):
        np.testing.assert_array_equal(getattr(back, field), getattr(pairs, field))
    assert back.classes == pairs.classes and back.method == "ssm"
    assert [p.name for p in path.parent.iterdir()] == ["pairs.json"]  # no temp file left
    json.loads(path.read_text())  # plain JSON


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CmkdError, match="not found: .*nope.json"):
        PairList.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CmkdError, match="bad.json is not valid JSON"):
        PairList.load(bad)
    path = tmp_path / "p.json"
    _pairs().save(path)
    doc = json.loads(path.read_text())
    doc["teacher_labels"][4] = 0
    path.write_text(json.dumps(doc))
    with pytest.raises(CmkdError, match="p.json.*student 's4'.*crosses|p.json.*crosses.*'s4'"):
        PairList.load(path)
    doc["teacher_labels"] = doc["teacher_labels"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(CmkdError, match="p.json.*inconsistent"):
        PairList.load(path)


def test_to_table_maps_ids_to_rows() -> None:
    pairs = _pairs()
    student_ids = np.array(["s9", "s0", "s4"])  # a training subset, any order
    teacher_ids = np.array(["t3", "t2", "t1", "t0"])
    assert pairs.to_table(student_ids, teacher_ids).tolist() == [0, 3, 1]
    with pytest.raises(CmkdError, match="'s99' has no pair"):
        pairs.to_table(np.array(["s0", "s99"]), teacher_ids)
    with pytest.raises(CmkdError, match="teacher 't2' .*not a teacher training sample"):
        pairs.to_table(student_ids, np.array(["t0", "t1", "t3"]))


def test_from_table_and_cross_class_table() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    student = Samples(x, np.array([0, 0, 1, 1]), np.array(["a", "b", "c", "d"]), ["u", "v"])
    teacher = Samples(x, np.array([1, 0, 1, 0]), np.array(["w", "x", "y", "z"]), ["u", "v"])
    pairs = PairList.from_table(np.array([1, 3, 0, 2]), student, teacher, "class_random")
    assert pairs.teacher_ids.tolist() == ["x", "z", "w", "y"]
    assert pairs.to_table(student.ids, teacher.ids).tolist() == [1, 3, 0, 2]
    with pytest.raises(CmkdError, match="student 'a'"):
        PairList.from_table(np.array([0, 1, 2, 3]), student, teacher, "bad")


def test_summary_numbers() -> None:
    text = _pairs().summary(n_teacher=8)
    lines = text.splitlines()
    assert "10 pairs" in lines[0] and "ssm" in lines[0]
    assert "coverage: 4 distinct teacher samples used of 8 available (50.0 %)" in lines[1]
    assert "max 6, mean 2.50; used more than 5 times: 1" in lines[2]
    assert lines[4].split() == ["a", "3", "2", "2"]
    assert lines[5].split() == ["b", "7", "2", "6"]
    assert "available" not in _pairs().summary().splitlines()[1]
