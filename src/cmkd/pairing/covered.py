"""Pairing under a class map (`cmkd.classmap`): student samples of uncovered classes (no teacher
class maps to theirs) get no teacher.

Every strategy is built on the covered student rows only, against a teacher bank relabelled into
the student's classes, so it pairs within a student class exactly as without a map; the wrapper
puts those pairs back in place and gives every uncovered row the teacher row -1 ("none"), which
the distillation masks out of every term. Any registered strategy works this way unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from cmkd.pairing.base import Pairing

NO_TEACHER = -1
"""The teacher row of a student row that has no teacher (an uncovered class)."""


class CoveredPairing(Pairing):
    """`inner` pairs the covered student rows (`covered_rows`, in order) among `n_student`
    rows; the others get NO_TEACHER."""

    def __init__(self, inner: Pairing, covered_rows: np.ndarray, n_student: int) -> None:
        self.inner = inner
        self.covered_rows = np.asarray(covered_rows, dtype=np.int64)
        position = np.full(n_student, NO_TEACHER, dtype=np.int64)
        position[self.covered_rows] = np.arange(len(self.covered_rows))
        self._position = torch.from_numpy(position)
        self._on: dict[torch.device, torch.Tensor] = {}

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        device = student_rows.device
        if device not in self._on:
            self._on[device] = self._position.to(device)
        position = self._on[device][student_rows]
        covered = position >= 0
        out = torch.full_like(position, NO_TEACHER)
        if covered.any():
            out[covered] = self.inner.teacher_rows(position[covered], epoch)
        return out

    def table_for(self, epoch: int) -> np.ndarray:
        table = np.full(len(self._position), NO_TEACHER, dtype=np.int64)
        table[self.covered_rows] = self.inner.table_for(epoch)
        return table

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)
