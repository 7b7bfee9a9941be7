"""DynM, SemBridge's dynamic matching: re-pair each student sample with the same-class teacher
sample whose softened logits the current student follows best, at curriculum epochs.

The authors' code scores one student sample at a time against its class gallery. Here the whole
KL matrix of a class is one matrix product,

    KL(p_T^j || p_S^i) = sum_c p_T^jc log p_T^jc - (log p_S^i) . p_T^j,

the first term a per-teacher constant (minus the entropy), the second a (students x K) by
(K x teachers) matmul; the argmin over teachers is taken chunk by chunk of students.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError

# The authors' re-match epochs (0-based, as in their `for epoch in range(200)`), 200 epochs.
# S2S-EU and S2S-CN are truncated curricula: the formula (e0=30, de=30, emu=5 and e0=45,
# de=15, emu=5) goes on to 180 and 170, both < 200, which their lists omit. M2S-GL (e0=15,
# de=30, emu=5) is the full curriculum: its next epoch, 215, is past the end.
AUTHORS_SCHEDULES: dict[str, list[int]] = {
    "S2S_EU": [30, 60, 95, 135],
    "S2S_CN": [45, 60, 80, 105, 135],
    "M2S_GL": [15, 45, 80, 120, 165],
}


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int], device: torch.device):
    return torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).to(
        device=device, dtype=torch.long
    )


def _class_name(label: int, classes: Sequence[str] | None) -> str:
    if classes is not None and 0 <= label < len(classes):
        return f"class {classes[label]!r}"
    return f"class {label}"


def min_kl_match(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_labels: torch.Tensor | np.ndarray,
    teacher_labels: torch.Tensor | np.ndarray,
    temperature: float = 3.0,
    chunk_size: int = 4096,
    classes: Sequence[str] | None = None,
) -> torch.LongTensor:
    """For each student row i, the same-class teacher row j minimising
    KL(softmax(z_T^j / T) || softmax(z_S^i / T)); ties go to the lowest teacher row.

    Computed class by class, so pairs never cross classes and no masking is needed; within a
    class, students go `chunk_size` at a time. Peak extra memory: one chunk_size x Nt_c float32
    block (Nt_c the largest class's teacher count, so at most 4 * chunk_size * Nt bytes: 115 MB
    for 4096 x 7000) plus the softened copies of both logit matrices, (Ns + Nt) x K floats.
    Runs on the logits' device and returns a LongTensor[Ns] there.
    """
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise CmkdError("min_kl_match needs 2-d logits (samples x classes)")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise CmkdError(
            f"student logits have {student_logits.shape[1]} classes, "
            f"teacher logits {teacher_logits.shape[1]}"
        )
    if chunk_size < 1:
        raise CmkdError(f"chunk_size must be >= 1, got {chunk_size}")
    device = student_logits.device
    s_lab = _as_labels(student_labels, device)
    t_lab = _as_labels(teacher_labels, device)
    if len(s_lab) != len(student_logits) or len(t_lab) != len(teacher_logits):
        raise CmkdError(
            f"labels do not match logits: {len(s_lab)} student labels for "
            f"{len(student_logits)} rows, {len(t_lab)} teacher labels for {len(teacher_logits)}"
        )
    with torch.no_grad():
        log_ps = F.log_softmax(student_logits.detach().float() / temperature, dim=1)
        log_pt = F.log_softmax(teacher_logits.detach().to(device).float() / temperature, dim=1)
        pt = log_pt.exp()
        neg_entropy = (pt * log_pt).sum(dim=1)  # sum_c p log p, one per teacher row
        out = torch.empty(len(s_lab), dtype=torch.long, device=device)
        for label in torch.unique(s_lab).tolist():
            s_rows = torch.nonzero(s_lab == label).squeeze(1)
            t_rows = torch.nonzero(t_lab == label).squeeze(1)
            if len(t_rows) == 0:
                raise CmkdError(
                    f"{_class_name(label, classes)} has {len(s_rows)} student samples but no "
                    "teacher sample to match them with"
                )
            pt_c, h_c = pt[t_rows], neg_entropy[t_rows]
            for start in range(0, len(s_rows), chunk_size):
                rows = s_rows[start : start + chunk_size]
                # KL = h_j - log p_S^i . p_T^j, in one allocation (addmm: beta*h + alpha*A@B)
                kl = torch.addmm(h_c.unsqueeze(0), log_ps[rows], pt_c.T, alpha=-1.0)
                out[rows] = t_rows[kl.argmin(dim=1)]
    return out


def curriculum_epochs(e0: int, de: int, emu: int, max_epochs: int) -> list[int]:
    """e_t = e0 + sum_{i=1..t} (de + emu (i - 1)) for t = 0, 1, ... while e_t < max_epochs.

    Gaps grow by `emu`: the student gets longer to settle between re-matches as it improves.
    (30, 30, 5) on 200 epochs gives 30, 60, 95, 135, 180; the authors' S2S-EU list stops at
    135 (see AUTHORS_SCHEDULES), so pass their list explicitly to reproduce it.
    """
    if e0 < 0 or de < 1 or emu < 0:
        raise CmkdError(f"curriculum needs e0 >= 0, de >= 1, emu >= 0; got {e0=}, {de=}, {emu=}")
    epochs, epoch, gap = [], e0, de
    while epoch < max_epochs:
        epochs.append(epoch)
        epoch, gap = epoch + gap, gap + emu
    return epochs


def schedule_from(config: Any, max_epochs: int) -> list[int]:
    """Re-match epochs (0-based) from an explicit list or a curriculum (e0, de, emu).

    `config` is a list of epochs, a mapping, or an object (PairingConfig) with `schedule`
    (explicit list or None) and `e0`, `de`, `emu`. An explicit list wins; its epochs must be
    distinct and inside [0, max_epochs) so that a typo is not silently never run.
    """
    if isinstance(config, Sequence) and not isinstance(config, str):
        explicit = config
    else:

        def get(key: str) -> Any:
            if isinstance(config, Mapping):
                return config.get(key)
            return getattr(config, key, None)

        explicit = get("schedule")
        if explicit is None:
            missing = [k for k in ("e0", "de", "emu") if get(k) is None]
            if missing:
                raise CmkdError(
                    "re-match schedule needs an explicit list or e0, de, emu; "
                    f"{missing[0]} is missing"
                )
            return curriculum_epochs(int(get("e0")), int(get("de")), int(get("emu")), max_epochs)
    epochs = [int(e) for e in explicit]
    bad = [e for e in epochs if not 0 <= e < max_epochs]
    if bad:
        raise CmkdError(f"re-match epoch {bad[0]} is outside 0..{max_epochs - 1}")
    if len(set(epochs)) != len(epochs):
        raise CmkdError(f"re-match schedule {epochs} repeats an epoch")
    return sorted(epochs)
