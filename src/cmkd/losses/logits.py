"""Logit-based distillation terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmkd.losses.base import DistillationTerm, register


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_T / T) || softmax(z_S / T)), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton 2015); SemBridge's code
    omits it, so it is a switch.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2 if scale_by_t2 else kl


@register(
    "kd", "Hinton KD: T^2 KL between softened teacher and student logits (Hinton et al. 2015)"
)
class KD(DistillationTerm):
    def __init__(self, temperature: float = 4.0, scale_by_t2: bool = True) -> None:
        super().__init__()
        self.temperature, self.scale_by_t2 = temperature, scale_by_t2

    def forward(self, student, teacher, batch):
        return kd_loss(student.logits, teacher.logits, self.temperature, self.scale_by_t2)
