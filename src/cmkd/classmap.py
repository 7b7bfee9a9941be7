"""Class maps: a teacher trained on another label set teaches a student over the classes the two
share (e.g. a UC Merced teacher, 21 aerial land-use classes, into a EuroSAT student, 10
land-cover classes).

A class map sends teacher classes to student classes, many to one (`denseresidential`,
`mediumresidential` and `sparseresidential` all to `Residential`). Teacher classes left out (or
mapped to null) are *unused*: their samples never teach and their probability mass is dropped.
Student classes that no teacher class reaches are *uncovered*: their samples train on
cross-entropy alone. The student classes that some teacher class reaches are the *covered*
classes, indexed 0..C-1 in the student's class order: the "covered space" every distillation
term works in under a map.

This module is the one place where the two label sets meet:

- `MappedTeacher` turns the frozen teacher's outputs into covered-space outputs: its logits for
  covered class c are log sum_{j -> c} exp(z_j), the log of the teacher's (unnormalised)
  probability mass summed over the teacher classes mapped to c, so softmax over them is the
  teacher's mass per covered class, renormalised over the covered classes. Embeddings and
  feature maps are passed through. The teacher cache, DynM's gallery, the class-mean control and
  the confidence quality all read the teacher through it.
- `ClassMap.view` turns a student batch into the covered samples only, with the student's logits
  restricted to the covered classes (softmax over them renormalises the student's distribution
  over the covered classes) and labels renumbered into the covered space.

Temperature. Every logit term divides both sides' covered-space logits by its temperature T, as
it does without a map, so the teacher's target at T is proportional to m_c ** (1 / T), m_c its
mass on covered class c at T = 1 (aggregate, then soften), and the student's is
softmax(z_S[covered] / T). This keeps one rule for fixed, learnt (CTKD) and multiple (MLKD)
temperatures, none of which the map needs to know. With a one-to-one map the mapped logits are
the teacher's own logits of the mapped classes, exactly (logsumexp of a single value), so every
logit term is then the usual term restricted to the covered classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.models.model import StandardizedNetwork
from cmkd.models.outputs import ModelOutput

ClassMapSpec = str | Path | Mapping[str, str | None]
"""A class map as a user gives it: a YAML file (teacher class: student class, one a line) or
the same mapping inline."""


@dataclass(frozen=True)
class ClassMap:
    """Teacher class -> student class, checked against both class lists.

    `mapping` holds the used teacher classes only; `where` names the map in messages (its file,
    or `distill.class_map` for an inline one).
    """

    teacher_classes: tuple[str, ...]
    student_classes: tuple[str, ...]
    mapping: dict[str, str]
    where: str = "distill.class_map"
    covered: tuple[str, ...] = field(init=False)
    """Student classes some teacher class reaches, in student order: covered index = position."""

    def __post_init__(self) -> None:
        reached = set(self.mapping.values())
        object.__setattr__(self, "covered", tuple(c for c in self.student_classes if c in reached))

    # --- building and checking -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        spec: ClassMapSpec | None,
        teacher_classes: Sequence[str],
        student_classes: Sequence[str],
    ) -> ClassMap | None:
        """The checked map of `spec` between the two class lists; None when there is nothing to
        map (no spec and the same classes in the same order). Different classes without a map
        are refused, naming the way out."""
        teacher_classes, student_classes = tuple(teacher_classes), tuple(student_classes)
        if spec is None:
            if teacher_classes == student_classes:
                return None
            raise CmkdError(
                f"teacher classes {list(teacher_classes)} differ from the student's "
                f"{list(student_classes)}; to distil between two label sets give a class map "
                "(distill.class_map: a YAML file or mapping of teacher class: student class)"
            )
        if isinstance(spec, ClassMap):
            spec.check(teacher_classes, student_classes)
            return spec
        entries, where = read_spec(spec)
        return cls.checked(entries, teacher_classes, student_classes, where)

    @classmethod
    def checked(
        cls,
        entries: Mapping[str, str | None],
        teacher_classes: Sequence[str],
        student_classes: Sequence[str],
        where: str = "distill.class_map",
    ) -> ClassMap:
        """Every name on both sides must be a class of its side: an unknown one is a one-line
        error naming it and the map's file; at least one teacher class must be used."""
        teacher_classes, student_classes = tuple(teacher_classes), tuple(student_classes)
        for teacher, student in entries.items():
            if teacher not in teacher_classes:
                raise CmkdError(
                    f"class map {where}: {teacher!r} is not a teacher class "
                    f"(teacher classes: {', '.join(teacher_classes)})"
                )
            if student is not None and student not in student_classes:
                raise CmkdError(
                    f"class map {where}: teacher class {teacher!r} maps to {student!r}, which "
                    f"is not a student class (student classes: {', '.join(student_classes)})"
                )
        mapping = {t: s for t, s in entries.items() if s is not None}
        if not mapping:
            raise CmkdError(f"class map {where} maps no teacher class to a student class")
        return cls(teacher_classes, student_classes, mapping, where)

    def check(self, teacher_classes: Sequence[str], student_classes: Sequence[str]) -> None:
        """A ready map must be between these class lists."""
        if tuple(teacher_classes) != self.teacher_classes:
            raise CmkdError(
                f"class map {self.where} is for teacher classes {list(self.teacher_classes)}, "
                f"not {list(teacher_classes)}"
            )
        if tuple(student_classes) != self.student_classes:
            raise CmkdError(
                f"class map {self.where} is for student classes {list(self.student_classes)}, "
                f"not {list(student_classes)}"
            )

    # --- what the map says ---------------------------------------------------------------------

    @property
    def uncovered(self) -> tuple[str, ...]:
        """Student classes no teacher class reaches: their samples train on CE only."""
        return tuple(c for c in self.student_classes if c not in self.covered)

    @property
    def unused(self) -> tuple[str, ...]:
        """Teacher classes the map leaves out: their samples never teach."""
        return tuple(c for c in self.teacher_classes if c not in self.mapping)

    def teachers_of(self, student_class: str) -> list[str]:
        """The teacher classes mapped to `student_class`, in teacher order."""
        return [t for t in self.teacher_classes if self.mapping.get(t) == student_class]

    @property
    def covered_labels(self) -> np.ndarray:
        """Student labels (indices into the student's classes) of the covered classes."""
        return np.array([self.student_classes.index(c) for c in self.covered], dtype=np.int64)

    def record(self) -> dict[str, object]:
        """The map as plain data, for results and pair lists."""
        return {
            "map": dict(self.mapping),
            "covered": list(self.covered),
            "uncovered": list(self.uncovered),
            "unused": list(self.unused),
        }

    # --- label spaces --------------------------------------------------------------------------

    def _student_to_covered(self) -> np.ndarray:
        table = np.full(len(self.student_classes), -1, dtype=np.int64)
        table[self.covered_labels] = np.arange(len(self.covered))
        return table

    def _teacher_to_covered(self) -> np.ndarray:
        return np.array(
            [self.covered.index(self.mapping[t]) if t in self.mapping else -1
             for t in self.teacher_classes],
            dtype=np.int64,
        )  # fmt: skip

    def to_covered(self, student_labels: torch.Tensor) -> torch.Tensor:
        """Student labels -> covered indices (-1 for an uncovered class)."""
        table = torch.from_numpy(self._student_to_covered()).to(student_labels.device)
        return table[student_labels.long()]

    def teacher_samples(self, bank: Samples) -> Samples:
        """The teacher's training samples that teach under this map: the rows of used teacher
        classes, relabelled with their student class (and the student's class list), so
        pairing, matching and DynM pair within a student class as they do without a map."""
        to_student = np.array(
            [self.student_classes.index(self.mapping[t]) if t in self.mapping else -1
             for t in self.teacher_classes],
            dtype=np.int64,
        )  # fmt: skip
        if list(bank.classes) != list(self.teacher_classes):
            self.check(bank.classes, self.student_classes)
        labels = to_student[bank.y]
        rows = np.flatnonzero(labels >= 0)
        split = None if bank.split is None else bank.split[rows]
        return Samples(
            bank.x[rows], labels[rows], bank.ids[rows], list(self.student_classes), split
        )

    def example_rows(self, student_labels: np.ndarray | torch.Tensor, n: int = 2) -> list[int]:
        """The first `n` rows of covered classes (a pre-flight batch that reaches the terms)."""
        labels = np.asarray(student_labels)
        covered = np.flatnonzero(np.isin(labels, self.covered_labels))
        rows = covered[:n] if len(covered) else np.arange(min(n, len(labels)))
        return rows.tolist()

    # --- outputs -------------------------------------------------------------------------------

    def teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """B x K_teacher logits -> B x C covered-space logits: logsumexp over the teacher classes
        mapped to each covered class (unused teacher classes dropped)."""
        group = torch.from_numpy(self._teacher_to_covered()).to(logits.device)
        member = (
            group.unsqueeze(0) == torch.arange(len(self.covered), device=logits.device)[:, None]
        )
        masked = logits.unsqueeze(1).masked_fill(~member.unsqueeze(0), float("-inf"))
        return torch.logsumexp(masked, dim=2)

    def student_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """B x K_student logits -> B x C: the covered classes' columns."""
        return logits[:, torch.from_numpy(self.covered_labels).to(logits.device)]

    def covered_mask(self, labels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Which samples of a batch the terms see: those of covered classes (and, given teacher
        `rows`, with a teacher: row >= 0)."""
        keep = self.to_covered(labels) >= 0
        return keep if rows is None else keep & (rows.to(keep.device) >= 0)

    def view(
        self, student: ModelOutput, batch: dict, keep: torch.Tensor
    ) -> tuple[ModelOutput, dict]:
        """What the terms see of a student batch: the `keep` samples' outputs with logits over
        the covered classes, and the batch of those samples with labels renumbered into the
        covered space (a term reading labels, e.g. DKD's target class, indexes those logits)."""
        pick = lambda t: None if t is None else t[keep]  # noqa: E731
        n = len(keep)
        sub = {
            k: (v[keep] if torch.is_tensor(v) and v.ndim and len(v) == n else v)
            for k, v in batch.items()
        }
        sub["label"] = self.to_covered(batch["label"])[keep]
        logits = self.student_logits(student.logits)[keep]
        return ModelOutput(logits, pick(student.embedding), pick(student.feature_map)), sub


class MappedTeacher(StandardizedNetwork):
    """The frozen teacher with its logits in the covered space of a class map (see the module
    docstring); embeddings and feature maps unchanged. It holds the very same submodules as the
    teacher it wraps (`normalize`, `network`), so state dicts keep their keys."""

    def __init__(self, teacher: StandardizedNetwork, class_map: ClassMap) -> None:
        super().__init__(teacher.network, teacher.normalize)
        self.class_map = class_map

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = super().forward(x)
        return ModelOutput(
            self.class_map.teacher_logits(out.logits), out.embedding, out.feature_map
        )


def read_spec(spec: str | Path | Mapping[str, str | None]) -> tuple[dict[str, str | None], str]:
    """(teacher class -> student class or None, where it came from) of a file or a mapping;
    every problem with the file is a one-line CmkdError naming it."""
    if isinstance(spec, Mapping):
        return _entries(spec, "distill.class_map"), "distill.class_map"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CmkdError(f"class map file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise CmkdError(f"class map {path} is not valid YAML{line}") from None
    except UnicodeDecodeError:
        raise CmkdError(f"class map {path} is not a UTF-8 text file") from None
    if not isinstance(doc, Mapping):
        raise CmkdError(
            f"class map {path} must be a mapping of teacher class: student class, one a line"
        )
    return _entries(doc, str(path)), str(path)


def _entries(doc: Mapping, where: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for teacher, student in doc.items():
        if not isinstance(teacher, str) or not (student is None or isinstance(student, str)):
            raise CmkdError(
                f"class map {where}: entry {teacher!r}: {student!r} is not teacher class: "
                "student class (two names, or null for an unused teacher class)"
            )
        out[teacher] = student
    return out
