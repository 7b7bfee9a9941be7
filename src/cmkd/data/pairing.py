"""Who teaches whom: a pairing maps each student training row to a teacher training row.

Paired data is the identity pairing (row i of the student's train split is the same sample
as row i of the teacher's). Asymmetric strategies (class-random, matched, dynamic) implement
the same `teacher_rows` and may refresh at epoch boundaries.
"""

from __future__ import annotations

import numpy as np
import torch

from cmkd.errors import CmkdError


class Pairing:
    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError


class IdentityPairing(Pairing):
    """Same sample in both modalities; checked once by sample id."""

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

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        return student_rows
