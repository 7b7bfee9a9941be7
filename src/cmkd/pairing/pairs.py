"""The pair list: which teacher sample teaches each student sample, as a file a user can read.

Pairs are stored by sample id (not by row) so a list outlives a re-split or a reordered
folder; `to_table` turns it into the row table a `FixedPairing` uses. The file is plain JSON,
one column per field, written atomically (a crashed run never leaves half a file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.io import write_json

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

    def __post_init__(self) -> None:
        self.student_ids = np.asarray(self.student_ids, dtype=str)
        self.teacher_ids = np.asarray(self.teacher_ids, dtype=str)
        self.student_labels = np.asarray(self.student_labels, dtype=np.int64)
        self.teacher_labels = np.asarray(self.teacher_labels, dtype=np.int64)
        self.classes = [str(c) for c in self.classes]
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
        for labels in (self.student_labels, self.teacher_labels):
            if n and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise CmkdError(f"pair list label outside its {len(self.classes)} classes")
        crossing = np.flatnonzero(self.student_labels != self.teacher_labels)
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
            **{c: getattr(self, c).tolist() for c in _COLUMNS},
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
                doc["teacher_ids"],
                doc["classes"],
                doc["student_labels"],
                doc["teacher_labels"],
                str(doc["method"]),
                scores,
                doc.get("n_teacher"),
            )
        except (CmkdError, TypeError, ValueError) as e:
            raise CmkdError(f"pair list {path}: {e}") from None

    def to_table(self, student_ids: np.ndarray, teacher_ids: np.ndarray) -> np.ndarray:
        """Row table for training: table[r] = teacher row of student row r.

        `student_ids` / `teacher_ids` are the ids of the training rows, in row order. The list
        may hold more students (other splits) than the training set; each training student
        must be in it, and its teacher must be a teacher training row.
        """
        pair = _rows_of(
            np.asarray(student_ids, dtype=str),
            self.student_ids,
            "student training sample '{id}' has no pair in the list ({count} missing)",
        )
        return _rows_of(
            self.teacher_ids[pair],
            np.asarray(teacher_ids, dtype=str),
            "teacher '{id}' of the pair list is not a teacher training sample ({count} pairs)",
        )

    @classmethod
    def from_table(
        cls,
        table: np.ndarray,
        student: Samples,
        teacher: Samples,
        method: str,
        scores: np.ndarray | None = None,
    ) -> PairList:
        """The list for a row table over two training sets (student row r -> table[r])."""
        table = np.asarray(table, dtype=np.int64)
        if len(table) != len(student):
            raise CmkdError(f"pair table has {len(table)} rows for {len(student)} students")
        if student.classes != teacher.classes:
            raise CmkdError(
                f"student and teacher class lists differ: {student.classes} vs {teacher.classes}"
            )
        return cls(
            student.ids,
            teacher.ids[table],
            list(student.classes),
            student.y,
            teacher.y[table],
            method,
            scores,
            len(teacher),
        )

    def summary(self, n_teacher: int | None = None) -> str:
        """What a user checks before training: coverage, reuse, and the same per class."""
        n = len(self)
        _, uses = np.unique(self.teacher_ids, return_counts=True)
        distinct = len(uses)
        lines = [f"pair list ({self.method}): {n} pairs, {len(self.classes)} classes"]
        n_teacher = n_teacher or self.n_teacher
        coverage = f"coverage: {distinct} distinct teacher samples used"
        if n_teacher:
            coverage += f" of {n_teacher} available ({100 * distinct / n_teacher:.1f} %)"
        lines.append(coverage)
        if distinct:
            lines.append(
                f"reuse per teacher sample: max {uses.max()}, mean {n / distinct:.2f}; "
                f"used more than 5 times: {int((uses > 5).sum())}"
            )
        width = max([len("class"), *(len(c) for c in self.classes)])
        lines.append(f"{'class':<{width}}  students  teachers used  max reuse")
        for label, name in enumerate(self.classes):
            mask = self.student_labels == label
            _, c_uses = np.unique(self.teacher_ids[mask], return_counts=True)
            top = c_uses.max() if len(c_uses) else 0
            lines.append(f"{name:<{width}}  {int(mask.sum()):>8}  {len(c_uses):>13}  {top:>9}")
        return "\n".join(lines)


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
