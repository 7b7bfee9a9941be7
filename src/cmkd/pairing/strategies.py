"""The built-in pairing strategies (see `cmkd.pairing.base` for the contract and registry).

Paired data is the identity pairing (row i of the student's train split is the same sample
as row i of the teacher's). Asymmetric strategies (class-random, matched, dynamic, unpaired
zip) implement the same `teacher_rows` and may refresh at epoch boundaries. Every strategy is
a pure function of its inputs, a seed and the epoch, so all DDP ranks compute the same pairs
without talking; DynM's re-matched tables are broadcast from rank 0 and saved in checkpoints
through `state_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmkd.errors import CmkdError
from cmkd.pairing.base import Pairing, register_pairing

if TYPE_CHECKING:
    from cmkd.config import PairingConfig
    from cmkd.data.samples import Samples


@register_pairing("paired", "the same sample seen in both modalities (matched by id)")
class IdentityPairing(Pairing):
    """Same sample in both modalities; checked once by sample id."""

    @classmethod
    def build(
        cls, cfg: PairingConfig, student: Samples, teacher: Samples, seed: int
    ) -> IdentityPairing:
        return cls(student.ids, teacher.ids)

    def __init__(self, student_ids: np.ndarray, teacher_ids: np.ndarray) -> None:
        if len(student_ids) != len(teacher_ids) or not np.array_equal(student_ids, teacher_ids):
            mismatch = next(
                (
                    f"'{s}' vs '{t}'"
                    for s, t in zip(student_ids, teacher_ids, strict=False)
                    if s != t
                ),
                f"{len(student_ids)} vs {len(teacher_ids)} samples",
            )
            raise CmkdError(
                "paired distillation needs the same samples in both modalities; "
                f"first mismatch: {mismatch}"
            )
        self._n = len(student_ids)

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        return student_rows

    def table_for(self, epoch: int) -> np.ndarray:
        return np.arange(self._n, dtype=np.int64)


class _TablePairing(Pairing):
    """A student-row -> teacher-row table, looked up on the caller's device (copied once)."""

    def __init__(self) -> None:
        self._table = np.empty(0, dtype=np.int64)
        self._on: dict[torch.device, torch.Tensor] = {}

    def _set(self, table: np.ndarray) -> None:
        self._table = table
        self._on = {}

    def _lookup(self, student_rows: torch.Tensor) -> torch.Tensor:
        device = student_rows.device
        if device not in self._on:
            self._on[device] = torch.from_numpy(self._table).to(device)
        return self._on[device][student_rows]


@register_pairing("class_random", "a random teacher sample of the same class, re-drawn every epoch")
class ClassRandomPairing(_TablePairing):
    """Each student row gets a uniformly random teacher row of its class, re-drawn each epoch.

    The draw for epoch e comes from np.random.default_rng([seed, e]): the same on every rank
    and on a resumed run, different from epoch to epoch.
    """

    def __init__(
        self,
        student_labels: np.ndarray,
        teacher_labels: np.ndarray,
        seed: int = 0,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        s_lab = np.asarray(student_labels, dtype=np.int64)
        t_lab = np.asarray(teacher_labels, dtype=np.int64)
        self.seed = int(seed)
        self._groups: list[tuple[np.ndarray, np.ndarray]] = []
        for label in np.unique(s_lab):
            s_rows, t_rows = np.flatnonzero(s_lab == label), np.flatnonzero(t_lab == label)
            if len(t_rows) == 0:
                name = classes[label] if classes is not None else int(label)
                raise CmkdError(
                    f"class {name!r} has {len(s_rows)} student samples but no teacher sample "
                    "to pair them with"
                )
            self._groups.append((s_rows, t_rows))
        self._n = len(s_lab)
        self._epoch: int | None = None

    @classmethod
    def build(
        cls, cfg: PairingConfig, student: Samples, teacher: Samples, seed: int
    ) -> ClassRandomPairing:
        return cls(student.y, teacher.y, seed, classes=student.classes)

    def table_for(self, epoch: int) -> np.ndarray:
        """The full student-row -> teacher-row table of `epoch`."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        table = np.empty(self._n, dtype=np.int64)
        for s_rows, t_rows in self._groups:
            table[s_rows] = t_rows[rng.integers(0, len(t_rows), size=len(s_rows))]
        return table

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._set(self.table_for(epoch))
            self._epoch = epoch
        return self._lookup(student_rows)


@register_pairing(
    "unpaired",
    "DisCoM-KD's way: each set shuffled on its own every epoch and zipped, labels unused",
)
class UnpairedZipPairing(_TablePairing):
    """DisCoM-KD's unpaired training: each modality's set shuffled on its own and the two
    streams zipped. Labels are not used, so a student sample is often taught by a teacher
    sample of another class: that is the method, not a bug.

    The table of epoch e is a permutation p of the teacher rows drawn from
    np.random.default_rng([seed, e, 1]) (the same on every rank and on a resumed run; the
    trailing 1 keeps it independent of the student loader's own [seed, e] shuffle, which would
    otherwise be the very same permutation when both sets have the same size), and student row
    i gets teacher row p[i mod n_T]. With fewer teacher than student rows the permutation is
    cycled, so every teacher row teaches floor(n_S / n_T) or one more students per epoch; with
    more, it is truncated to its first n_S entries, so no teacher row repeats and the unused
    ones change from epoch to epoch. Zipping two shuffled loaders is the same draw: the student
    loader's order is independent of p, so student and teacher are paired uniformly at random.
    """

    def __init__(self, n_student: int, n_teacher: int, seed: int = 0) -> None:
        super().__init__()
        if n_student < 1 or n_teacher < 1:
            raise CmkdError(
                f"unpaired pairing needs samples on both sides, got {n_student} student and "
                f"{n_teacher} teacher samples"
            )
        self.n_student, self.n_teacher, self.seed = int(n_student), int(n_teacher), int(seed)
        self._epoch: int | None = None

    @classmethod
    def build(
        cls, cfg: PairingConfig, student: Samples, teacher: Samples, seed: int
    ) -> UnpairedZipPairing:
        return cls(len(student), len(teacher), seed)

    def table_for(self, epoch: int) -> np.ndarray:
        """The full student-row -> teacher-row table of `epoch`."""
        perm = np.random.default_rng([self.seed, int(epoch), 1]).permutation(self.n_teacher)
        return perm[np.arange(self.n_student) % self.n_teacher].astype(np.int64)

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._set(self.table_for(epoch))
            self._epoch = epoch
        return self._lookup(student_rows)


def _checked_table(table: np.ndarray | torch.Tensor) -> np.ndarray:
    """A private int64 copy of a student-row -> teacher-row table, checked."""
    if torch.is_tensor(table):
        table = table.detach().cpu().numpy()
    table = np.array(table)
    if table.ndim != 1 or not np.issubdtype(table.dtype, np.integer):
        raise CmkdError(f"a pair table is a 1-d integer array, got {table.dtype} {table.shape}")
    # -1 is "no teacher": a student of a class no teacher class maps to (cmkd.pairing.covered).
    if len(table) and table.min() < -1:
        raise CmkdError(f"pair table holds a negative teacher row ({table.min()})")
    return table.astype(np.int64)


@register_pairing("matched", "a pair list from `cmkd match` (pairing.pairs: its JSON file)")
class FixedPairing(_TablePairing):
    """A fixed table, table[student row] = teacher row: what a matched pair list becomes."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self._set(_checked_table(table))

    @classmethod
    def build(
        cls, cfg: PairingConfig, student: Samples, teacher: Samples, seed: int
    ) -> FixedPairing:
        from cmkd.pairing.pairs import PairList

        if not cfg.pairs:
            raise CmkdError("pairing strategy 'matched' needs a pair list: set pairing.pairs")
        try:
            return cls(PairList.load(cfg.pairs).to_table(student.ids, teacher.ids))
        except CmkdError as err:  # name the file whatever went wrong with it
            if str(cfg.pairs) in str(err):
                raise
            raise CmkdError(f"pair list {cfg.pairs}: {err}") from None

    def table_for(self, epoch: int) -> np.ndarray:
        return self._table.copy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"table": torch.from_numpy(self._table.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "table" in state:
            self.table = state["table"]

    @property
    def table(self) -> np.ndarray:
        """The current table, read-only (assign a new one instead: lookups cache copies)."""
        view = self._table.view()
        view.flags.writeable = False
        return view

    @table.setter
    def table(self, table: np.ndarray | torch.Tensor) -> None:
        """Replace the table (a resumed checkpoint, rank 0's broadcast); same length only."""
        table = _checked_table(table)
        if len(table) != len(self._table):
            raise CmkdError(
                f"pair table has {len(table)} student rows, this pairing {len(self._table)}"
            )
        self._set(table)

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        return self._lookup(student_rows)


class DynamicPairing(FixedPairing):
    """SemBridge's DynM: a table that `rematch` replaces by min-KL same-class teachers.

    The caller (cmkd.pairing.rematch.DynamicMatching) runs `rematch` at the
    schedule's epochs (cmkd.matching.dynamic.schedule_from)
    with the current student's logits for every student training row, in row order, and the
    frozen teacher's logits for every teacher training row. `changes[k]` is how many students
    got a new teacher at the k-th re-match: a curve that should fall as matching settles.
    """

    def __init__(self, table: np.ndarray) -> None:
        super().__init__(table)
        self.changes: list[int] = []

    def rematch(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_labels: torch.Tensor | np.ndarray,
        teacher_labels: torch.Tensor | np.ndarray,
        temperature: float = 3.0,
    ) -> int:
        """Replace the table by DynM's matches; returns (and records) how many pairs changed."""
        from cmkd.pairing.dynamic import min_kl_match

        if len(student_logits) != len(self._table):
            raise CmkdError(
                f"re-match got logits for {len(student_logits)} students, the table has "
                f"{len(self._table)}"
            )
        # Rows without a teacher (uncovered classes under a class map) stay without one.
        taught = np.flatnonzero(self._table >= 0)
        new = np.full(len(self._table), -1, dtype=np.int64)
        rows = torch.from_numpy(taught)
        labels = torch.as_tensor(
            student_labels if torch.is_tensor(student_labels) else np.asarray(student_labels)
        )
        new[taught] = (
            min_kl_match(
                student_logits[rows.to(student_logits.device)],
                teacher_logits,
                labels[rows.to(labels.device)],
                teacher_labels,
                temperature,
            )
            .cpu()
            .numpy()
        )
        changed = int((new != self._table).sum())
        self._set(new)
        self.changes.append(changed)
        return changed
