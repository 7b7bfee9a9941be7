"""Contrastive representation distillation (CRD).

This is the softmax (InfoNCE) form of CRD, not the reference code's NCE estimator with uniform
noise and a fixed normaliser Z: it has no Z to estimate and behaves well with few negatives.
The positive for a student sample is the projection of its own (paired) teacher embedding in
the current batch; negatives come from a memory of earlier projections, either a FIFO queue
(MoCo-style, `memory: queue`) or CRD's per-sample bank with momentum updates (`memory: bank`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log softmax of the positive among [positive, negatives], averaged over anchors.

    anchor, positive: B x D; negatives: K x D shared by all anchors; exclude: B x K, True
    where a negative is really the anchor's own sample (a bank slot) and must not count.
    """
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = anchor @ negatives.t()
    if exclude is not None:
        neg = neg.masked_fill(exclude, float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(len(anchor), dtype=torch.long, device=anchor.device)
    return F.cross_entropy(logits, target)


def crd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    neg_s: torch.Tensor,
    neg_t: torch.Tensor,
    temperature: float = 0.07,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric CRD on unit projections: student anchors against teacher negatives plus
    teacher anchors against student negatives (summed, as CRD sums its two directions)."""
    return info_nce(s, t, neg_t, temperature, exclude) + info_nce(t, s, neg_s, temperature, exclude)


@register(
    "crd",
    "Contrastive representation distillation: InfoNCE between projected student and teacher "
    "embeddings with a memory of negatives (Tian et al. 2020)",
)
class CRD(DistillationTerm):
    """Linear heads project both embeddings to `feat_dim` (L2-normalised); the teacher head is
    trained too (its backbone stays frozen). Memory rows start as random unit vectors, as in
    MoCo; they are replaced without gradient after each training-mode forward."""

    needs = frozenset({"embedding"})

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_train: int = 0,
        feat_dim: int = 128,
        memory: str = "queue",
        queue_size: int = 4096,
        nce_k: int = 4096,
        momentum: float = 0.5,
        nce_t: float = 0.07,
    ) -> None:
        super().__init__()
        if memory not in ("queue", "bank"):
            raise CmkdError(f"'crd' option memory must be 'queue' or 'bank', got {memory!r}")
        if memory == "bank" and num_train < 1:
            raise CmkdError("'crd' with memory: bank needs the training-set size (num_train is 0)")
        if memory == "queue" and queue_size < 1:
            raise CmkdError(f"'crd' queue_size must be >= 1, got {queue_size}")
        self.memory, self.nce_k, self.momentum, self.nce_t = memory, nce_k, momentum, nce_t
        self.head_s = nn.Linear(student_dim, feat_dim)
        self.head_t = nn.Linear(teacher_dim, feat_dim)
        rows = queue_size if memory == "queue" else num_train
        self.register_buffer("memory_s", F.normalize(torch.randn(rows, feat_dim), dim=1))
        self.register_buffer("memory_t", F.normalize(torch.randn(rows, feat_dim), dim=1))
        if memory == "queue":
            self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> CRD:
        return cls(student.embedding_dim, teacher.embedding_dim, context.num_train, **params)

    def project(
        self, student: torch.Tensor, teacher: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.head_s(student), dim=1), F.normalize(self.head_t(teacher), dim=1)

    def forward(self, student, teacher, batch):
        s, t = self.project(student.embedding, teacher.embedding.detach())
        if self.memory == "queue":
            # Clones: the update below must not change tensors autograd saved for backward.
            neg_s, neg_t, exclude = self.memory_s.clone(), self.memory_t.clone(), None
        else:
            index = batch["index"].to(s.device)
            rows = len(self.memory_s)
            pick = (
                torch.arange(rows, device=s.device)
                if self.nce_k >= rows
                else torch.randperm(rows, device=s.device)[: self.nce_k]
            )
            neg_s, neg_t = self.memory_s[pick], self.memory_t[pick]
            exclude = index.unsqueeze(1) == pick.unsqueeze(0)
        loss = crd_loss(s, t, neg_s, neg_t, self.nce_t, exclude)
        if self.training:
            self._update(s.detach(), t.detach(), batch)
        return loss

    @torch.no_grad()
    def _update(self, s: torch.Tensor, t: torch.Tensor, batch: dict) -> None:
        s, t = s.to(self.memory_s.dtype), t.to(self.memory_t.dtype)  # e.g. under autocast
        if self.memory == "queue":
            size = len(self.memory_s)
            s, t = s[-size:], t[-size:]  # a batch larger than the queue keeps its last rows
            rows = (self.ptr + torch.arange(len(s), device=s.device)) % size
            self.memory_s[rows], self.memory_t[rows] = s, t
            self.ptr.copy_((self.ptr + len(s)) % size)
        else:
            index = batch["index"].to(s.device)
            for bank, new in ((self.memory_s, s), (self.memory_t, t)):
                mixed = bank[index] * self.momentum + new * (1 - self.momentum)
                bank[index] = F.normalize(mixed, dim=1)
