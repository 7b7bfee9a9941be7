"""The pair list: which teacher sample teaches each student sample, as a file a user can read.

Pairs are stored by sample id (not by row) so a list outlives a re-split or a reordered
folder; `to_table` turns it into the row table a `FixedPairing` uses. The file is plain JSON,
one column per field, written atomically (a crashed run never leaves half a file).

Under a class map (`cmkd.classmap`; the list then records it) teacher labels are the student
classes the teacher's classes map to, and a student of an uncovered class (no teacher class
maps to it) has no teacher: null teacher id and label in the file, "" and -1 in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.io import write_json

if TYPE_CHECKING:
    from cmkd.classmap import ClassMap

FORMAT = "cmkd-pairs"
VERSION = 1
_COLUMNS = ("student_ids", "teacher_ids", "student_labels", "teacher_labels")


@dataclass
class PairList:
    """One pair per student sample: student_ids[k] is taught by teacher_ids[k].

    Labels are indices into `classes`; a pair must not cross classes. `scores` is the
    matcher's score per pair (cosine similarity, KL ...) or None.
    """

    student_ids: np.ndarray
    teacher_ids: np.ndarray
    classes: list[str]
    student_labels: np.ndarray
    teacher_labels: np.ndarray
    method: str
    scores: np.ndarray | None = None
    n_teacher: int | None = None
    """Teacher training samples there were to choose from (for the coverage figure)."""
    class_map: dict[str, str] | None = None
    """Teacher class -> student class, when teacher and student have different classes: then
    students of classes no teacher class reaches (uncovered) have no teacher."""

    def __post_init__(self) -> None:
        self.student_ids = np.asarray(self.student_ids, dtype=str)
        self.teacher_ids = np.asarray(self.teacher_ids, dtype=str)
        self.student_labels = np.asarray(self.student_labels, dtype=np.int64)
        self.teacher_labels = np.asarray(self.teacher_labels, dtype=np.int64)
        self.classes = [str(c) for c in self.classes]
        if self.class_map is not None:
            self.class_map = {str(t): str(s) for t, s in dict(self.class_map).items()}
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64)
        self._validate()

    def _validate(self) -> None:
        n = len(self.student_ids)
        lengths = {c: len(getattr(self, c)) for c in _COLUMNS}
        if self.scores is not None:
            lengths["scores"] = len(self.scores)
        odd = next((c for c, k in lengths.items() if k != n), None)
        if odd is not None:
            raise CmkdError(f"inconsistent pair list: {n} student ids but {lengths[odd]} {odd}")
        taught = self.teacher_labels >= 0 if self.class_map is not None else np.ones(n, bool)
        for labels in (self.student_labels, self.teacher_labels[taught]):
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise CmkdError(f"pair list label outside its {len(self.classes)} classes")
        if self.class_map is not None:
            self._validate_coverage(taught)
        crossing = np.flatnonzero(taught & (self.student_labels != self.teacher_labels))
        if len(crossing):
            k = crossing[0]
            raise CmkdError(
                f"pair crosses classes: student '{self.student_ids[k]}' "
                f"({self.classes[self.student_labels[k]]}) -> teacher '{self.teacher_ids[k]}' "
                f"({self.classes[self.teacher_labels[k]]})"
            )
        unique, counts = np.unique(self.student_ids, return_counts=True)
        if len(unique) != n:
            raise CmkdError(f"student '{unique[counts > 1][0]}' appears in more than one pair")

    def _validate_coverage(self, taught: np.ndarray) -> None:
        """Under a class map: a student has no teacher exactly when its class is uncovered."""
        unknown = sorted(set(self.class_map.values()) - set(self.classes))
        if unknown:
            raise CmkdError(f"pair list class map names {unknown[0]!r}, not one of its classes")
        covered = np.isin(self.student_labels, self.covered_labels)
        wrong = np.flatnonzero(covered != taught)
        if len(wrong):
            k = wrong[0]
            name = self.classes[self.student_labels[k]]
            raise CmkdError(
                f"student '{self.student_ids[k]}' of class {name!r} "
                + (
                    "has no teacher, but the class map covers its class"
                    if covered[k]
                    else "has a teacher, but no teacher class maps to its class (uncovered)"
                )
            )
        if (self.teacher_ids[~taught] != "").any():
            raise CmkdError("pair list gives a teacher id to a pair without a teacher label")

    @property
    def covered_labels(self) -> np.ndarray:
        """Labels of the classes some teacher class reaches (all of them without a map)."""
        if self.class_map is None:
            return np.arange(len(self.classes))
        reached = set(self.class_map.values())
        return np.array([i for i, c in enumerate(self.classes) if c in reached], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.student_ids)

    def save(self, path: str | Path) -> None:
        """Write the list as JSON via a temp file and os.replace (atomic on one filesystem)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "n_teacher": self.n_teacher,
            "classes": self.classes,
            **({"class_map": self.class_map} if self.class_map is not None else {}),
            **{c: _nulls(getattr(self, c).tolist()) for c in _COLUMNS},
            "scores": None
            if self.scores is None
            else [float(s) if np.isfinite(s) else None for s in self.scores],
        }
        write_json(path, doc, durable=True, allow_nan=False)

    @classmethod
    def load(cls, path: str | Path) -> PairList:
        """Read and validate a saved list; every problem is a CmkdError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise CmkdError(f"pair list not found: {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CmkdError(f"pair list {path} is not valid JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CmkdError(f'{path} is not a cmkd pair list (no "format": "{FORMAT}")')
        missing = [k for k in ("method", "classes", *_COLUMNS) if k not in doc]
        if missing:
            raise CmkdError(f"pair list {path} lacks the field {missing[0]!r}")
        scores = doc.get("scores")
        if scores is not None:
            scores = [np.nan if s is None else s for s in scores]
        try:
            return cls(
                doc["student_ids"],
                _filled(doc["teacher_ids"], ""),
                doc["classes"],
                doc["student_labels"],
                _filled(doc["teacher_labels"], -1),
                str(doc["method"]),
                scores,
                doc.get("n_teacher"),
                doc.get("class_map"),
            )
        except (CmkdError, TypeError, ValueError, AttributeError) as e:
            raise CmkdError(f"pair list {path}: {e}") from None

    def to_table(self, student_ids: np.ndarray, teacher_ids: np.ndarray) -> np.ndarray:
        """Row table for training: table[r] = teacher row of student row r.

        `student_ids` / `teacher_ids` are the ids of the training rows, in row order. The list
        may hold more students (other splits) than the training set; each training student
        must be in it, and its teacher must be a teacher training row. A student without a
        teacher (an uncovered class under a class map) gets row -1.
        """
        pair = _rows_of(
            np.asarray(student_ids, dtype=str),
            self.student_ids,
            "student training sample '{id}' has no pair in the list ({count} missing)",
        )
        taught = self.teacher_labels[pair] >= 0
        table = np.full(len(pair), -1, dtype=np.int64)
        table[taught] = _rows_of(
            self.teacher_ids[pair][taught],
            np.asarray(teacher_ids, dtype=str),
            "teacher '{id}' of the pair list is not a teacher training sample ({count} pairs)",
        )
        return table

    @classmethod
    def from_table(
        cls,
        table: np.ndarray,
        student: Samples,
        teacher: Samples,
        method: str,
        scores: np.ndarray | None = None,
        class_map: ClassMap | None = None,
    ) -> PairList:
        """The list for a row table over two training sets (student row r -> table[r]; -1: no
        teacher, under a `class_map` whose relabelled teacher samples `teacher` holds)."""
        table = np.asarray(table, dtype=np.int64)
        if len(table) != len(student):
            raise CmkdError(f"pair table has {len(table)} rows for {len(student)} students")
        if student.classes != teacher.classes:
            raise CmkdError(
                f"student and teacher class lists differ: {student.classes} vs {teacher.classes}"
            )
        taught = table >= 0
        if not taught.all() and class_map is None:
            raise CmkdError("a pair table without a class map must give every student a teacher")
        return cls(
            student.ids,
            np.where(taught, teacher.ids[np.where(taught, table, 0)], ""),
            list(student.classes),
            student.y,
            np.where(taught, teacher.y[np.where(taught, table, 0)], -1),
            method,
            scores,
            len(teacher),
            None if class_map is None else dict(class_map.mapping),
        )

    def summary(self, n_teacher: int | None = None) -> str:
        """What a user checks before training: coverage, reuse, and the same per class (under a
        class map: which teacher classes teach each student class, uncovered ones included)."""
        n = len(self)
        taught = self.teacher_labels >= 0
        _, uses = np.unique(self.teacher_ids[taught], return_counts=True)
        distinct = len(uses)
        lines = [f"pair list ({self.method}): {n} pairs, {len(self.classes)} classes"]
        if self.class_map is not None:
            covered = len(self.covered_labels)
            lines.append(
                f"class map: {len(self.class_map)} teacher classes onto {covered} of "
                f"{len(self.classes)} student classes; {int((~taught).sum())} students of "
                f"{len(self.classes) - covered} uncovered classes have no teacher (CE only)"
            )
        n_teacher = n_teacher or self.n_teacher
        coverage = f"coverage: {distinct} distinct teacher samples used"
        if n_teacher:
            coverage += f" of {n_teacher} available ({100 * distinct / n_teacher:.1f} %)"
        lines.append(coverage)
        if distinct:
            lines.append(
                f"reuse per teacher sample: max {uses.max()}, mean {taught.sum() / distinct:.2f}; "
                f"used more than 5 times: {int((uses > 5).sum())}"
            )
        width = max([len("class"), *(len(c) for c in self.classes)])
        head = f"{'class':<{width}}  students  teachers used  max reuse"
        lines.append(head + ("  teacher classes" if self.class_map is not None else ""))
        for label, name in enumerate(self.classes):
            mask = self.student_labels == label
            _, c_uses = np.unique(self.teacher_ids[mask & taught], return_counts=True)
            top = c_uses.max() if len(c_uses) else 0
            line = f"{name:<{width}}  {int(mask.sum()):>8}  {len(c_uses):>13}  {top:>9}"
            if self.class_map is not None:
                sources = [t for t, s in self.class_map.items() if s == name]
                line += "  " + (", ".join(sources) if sources else "uncovered (no teacher)")
            lines.append(line)
        return "\n".join(lines)


def _nulls(column: list) -> list:
    """A column for JSON: no teacher ("" or -1) as null."""
    return [None if v == "" or (isinstance(v, int) and v < 0) else v for v in column]


def _filled(column: list, missing: str | int) -> list:
    """A column from JSON: null as no teacher."""
    return [missing if v is None else v for v in column]


def _rows_of(query: np.ndarray, ids: np.ndarray, missing: str) -> np.ndarray:
    """Position of each query id in `ids` (vectorised); an id not there is a CmkdError whose
    message is `missing` formatted with the first such {id} and how many ({count})."""
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], query)
    found = pos < len(ids)
    found[found] = ids[order][pos[found]] == query[found]
    if not found.all():
        absent = query[~found]
        raise CmkdError(missing.format(id=absent[0], count=len(absent)))
    return order[pos].astype(np.int64)
