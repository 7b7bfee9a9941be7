"""Relational terms: match how samples relate within a batch, not the features themselves.

Every relation here is a batch x batch (or batch^3) structure, so teacher and student widths
never need to agree and no adapter is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmkd.losses.base import DistillationTerm, register
from cmkd.losses.feature import check_on, feature, require_feature_maps

# --- RKD ------------------------------------------------------------------------------------


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances with a zero diagonal; the clamp keeps sqrt's gradient finite."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between distance matrices, each divided by its mean off-diagonal distance."""

    def normalised(e: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(e)
        mean = d.sum() / max(len(e) * (len(e) - 1), 1)
        return d / mean.clamp(min=1e-12)

    return F.smooth_l1_loss(normalised(student), normalised(teacher))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between cos(angle at i between j and k) for all triplets (i, j, k)."""

    def angles(e: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i
        return torch.bmm(unit, unit.transpose(1, 2)).flatten()

    return F.smooth_l1_loss(angles(student), angles(teacher))


@register(
    "rkd",
    "Relational KD: Huber on normalised pairwise distances (x25) and triplet angles (x50) of "
    "embeddings (Park et al. 2019)",
)
class RKD(DistillationTerm):
    needs = frozenset({"embedding"})

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student, teacher, batch):
        s, t = student.embedding, teacher.embedding.detach()
        return {
            "distance": self.distance_weight * rkd_distance_loss(s, t),
            "angle": self.angle_weight * rkd_angle_loss(s, t),
        }


# --- PKT ------------------------------------------------------------------------------------


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL(P_T || P_S) of cosine kernels mapped to [0, 1] and row-normalised.

    As in Passalis' reference code, the KL terms are averaged over all b x b entries (not
    summed over each row) and the diagonal is kept.
    """

    def conditional(e: torch.Tensor) -> torch.Tensor:
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        k = (e @ e.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(student), conditional(teacher)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


@register(
    "pkt",
    "Probabilistic knowledge transfer: KL between cosine-kernel conditional probabilities of "
    "embeddings (Passalis & Tefas 2018)",
)
class PKT(DistillationTerm):
    needs = frozenset({"embedding"})

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student, teacher, batch):
        return pkt_loss(student.embedding, teacher.embedding.detach(), self.eps)


# --- SP -------------------------------------------------------------------------------------


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G_T - G_S||_F^2 / b^2 with G = row-L2-normalised F F^T of the flattened features."""
    b = len(student)

    def gram(f: torch.Tensor) -> torch.Tensor:
        f = f.reshape(b, -1)
        return F.normalize(f @ f.t(), p=2, dim=1)

    return (gram(teacher) - gram(student)).pow(2).sum() / b**2


@register(
    "sp",
    "Similarity-preserving KD: match row-normalised batch similarity matrices (Tung & Mori 2019)",
)
class SP(DistillationTerm):
    """on='embedding' (default, works for MLPs) or 'feature_map' (flattened; sizes may differ)."""

    def __init__(self, on: str = "embedding") -> None:
        super().__init__()
        self.on = check_on("sp", on)
        self.needs = frozenset({on})

    @classmethod
    def from_networks(cls, student, teacher, context, on: str = "embedding") -> SP:
        if check_on("sp", on) == "feature_map":
            require_feature_maps("sp", student, teacher, "sp with on: embedding")
        return cls(on)

    def forward(self, student, teacher, batch):
        return sp_loss(feature(student, self.on), feature(teacher, self.on).detach())
