"""DistilVPR: relations of embeddings from several agents in several geometries.

Wang et al., "DistilVPR: Cross-Modal Knowledge Distillation for Visual Place Recognition"
(AAAI 2024, arXiv 2312.10616; code github.com/sijieaaa/DistilVPR). The loss compares batch x
batch relations of pooled embeddings built from two kinds of "agents":

- self-agents (teacher-teacher and student-student relations; the authors'
  `selfagent/rkdg.py`, `compute_rkdg_loss`), on the raw embeddings:
    * `self_distance`: RKD distance term, smooth L1 between Euclidean distance matrices each
      divided by its mean off-diagonal entry (reuses `relation.rkd_distance_loss`);
    * `self_angle`: RKD angle term, smooth L1 between cos(angle at i between j and k) over all
      triplets (reuses `relation.rkd_angle_loss`);
    * `self_hyperbolic`: the same as the distance term with Poincare-ball distances: both
      embeddings mapped into the ball of curvature c by the exponential map at 0 and clipped to
      radius (1 - 1e-3) / sqrt(c) (hyptorch `ToPoincare(riemannian=False, clip_r=None)`).
  The authors weight the three 1 : 1 : 1 and scale the sum by `--rkdgloss_weight` (10 in the
  README's Oxford command, 1 in its Boreas one): defaults 10 each here.
- cross-agents (teacher-student relations; the authors' `compute_distil_loss.py`,
  `compute_crosslogit{dist,sim,geodist}_loss`), on L2-normalised embeddings s_i, t_i. With R a
  relation between two points and the agents' matrices SS[i, j] = R(s_i, s_j),
  ST[i, j] = R(t_i, s_j), TT[i, j] = R(t_i, t_j) (full b x b, diagonals included):
    * st2ss: MSE(SS, stopgrad(ST)), the student's self relations pulled to the cross relations;
    * tt2st: MSE(ST, TT), the cross relations pulled to the teacher's self relations;
  for three relations R: `euclidean` ||a - b||, `spherical` cos(a, b), `hyperbolic` the
  Poincare distance after the same map into the ball. The README's commands set the three
  st2ss weights to 0.1 and leave tt2st at its default 0 (`tools/options.py`); so do we.
The curvature c is 0.1 (`--curvature` in `tools/options.py`, used by both families).

Poincare distance on the ball of curvature c (c = 1: arccosh(1 + 2||x-y||^2 /
((1-||x||^2)(1-||y||^2)))), written in the equal form
d_c(x, y) = (2 / sqrt(c)) asinh(sqrt(c) ||x - y|| / sqrt((1 - c||x||^2)(1 - c||y||^2))).

**Reconstruction, and what differs from the authors' code** (no code is copied):
- Widths: the authors' student and teacher embeddings have the same width (384 = 256 image +
  128 point-cloud channels of the MinkLoc++ teacher; their adaptor is `nn.Identity`). Cross-agent
  relations need one space, so where the widths differ the student's embedding passes through a
  bias-free learnt Linear (student width -> teacher width) owned by this term, before the L2
  normalisation, and only for the cross-agent terms; with equal widths there is none, as in the
  authors' code. Self-agent relations never need it.
- The Poincare distance uses the closed form above on b x b matrices. hyptorch's `dist_matrix`
  computes 2/sqrt(c) artanh(sqrt(c) ||(-x) (+)_c y||) through a b x b x D Mobius sum with 1e-5
  added to its denominator and the artanh argument clamped at 1 - 1e-5, which caps distances at
  about 12.2 / sqrt(c) and gives far pairs no gradient. Equal otherwise; ours has no cap.
- Mean normalisation divides by the mean off-diagonal entry; the authors take the mean of the
  entries > 0 (the same unless two samples coincide or rounding leaves a diagonal entry > 0).
- The spherical term divides the dot products by the norms, as the authors'
  `crosslogitsimloss_divide=True`; after the L2 normalisation that is the plain dot product.
- Only the authors' defaults are kept: MSE for the cross terms (their `*_type`), L2
  normalisation (`*_logit_norm_fn`), identity `logit_mapping_fn`.

Notes on the authors' design, kept as they are (no bug that loses a gradient or leaks one into
the teacher was found: the teacher's embeddings are precomputed under `no_grad`):
- st2ss targets the *detached* cross matrix ST, which moves with the student. SS's diagonal is
  0 and carries no gradient, so the diagonal entries ST[i, i] = ||s_i - t_i|| (the only ones
  tying a sample to its own twin) add value but no gradient; the pull towards the teacher is
  indirect, through the off-diagonal entries. The value is zero only when s = t.
- `self_hyperbolic` maps the *raw* embeddings: once sqrt(c) ||f|| exceeds about 9 (||f|| > 28
  at c = 0.1) tanh rounds to 1 in float32, every point is clipped to the same radius, and the
  term keeps only the angular part of the relation (no gradient along the norm).
- On unit vectors ||a - b||^2 = 2 - 2 cos(a, b): the euclidean and spherical cross terms see the
  same relation through two monotone maps (and so, at a fixed radius, does the hyperbolic one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.losses.relation import pairwise_distances, rkd_angle_loss, rkd_distance_loss

GEOMETRIES = ("euclidean", "spherical", "hyperbolic")
BALL_MARGIN = 1e-3
"""Points are kept within radius (1 - BALL_MARGIN) / sqrt(c) of the ball (hyptorch's float32)."""


def to_poincare(x: torch.Tensor, c: float) -> torch.Tensor:
    """Exponential map at the origin onto the Poincare ball of curvature c,
    tanh(sqrt(c) ||x||) x / (sqrt(c) ||x||), clipped to radius (1 - 1e-3) / sqrt(c)."""
    sqrt_c = math.sqrt(c)
    norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-5)
    radius = torch.tanh(sqrt_c * norm) / sqrt_c
    return x / norm * radius.clamp(max=(1 - BALL_MARGIN) / sqrt_c)


def poincare_distances(x: torch.Tensor, c: float) -> torch.Tensor:
    """b x b geodesic distances between points inside the ball of curvature c:
    (2 / sqrt(c)) asinh(sqrt(c) ||x_i - x_j|| / sqrt((1 - c||x_i||^2)(1 - c||x_j||^2)))."""
    sqrt_c = math.sqrt(c)
    room = (1 - c * x.pow(2).sum(dim=1)).clamp(min=1e-12)  # 1 - c||x||^2 > 0 inside the ball
    scale = (room.unsqueeze(1) * room.unsqueeze(0)).sqrt()
    return 2 / sqrt_c * torch.asinh(sqrt_c * pairwise_distances(x) / scale)


def relation_matrix(x: torch.Tensor, geometry: str, c: float) -> torch.Tensor:
    """b x b relation between the rows of `x` (L2-normalised by the caller)."""
    if geometry == "euclidean":
        return pairwise_distances(x)
    if geometry == "spherical":
        norm = x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return (x @ x.t()) / (norm * norm.t())
    if geometry == "hyperbolic":
        return poincare_distances(to_poincare(x, c), c)
    raise CmkdError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")


def agent_matrices(
    student: torch.Tensor, teacher: torch.Tensor, geometry: str, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(SS, ST, TT) with ST[i, j] = R(t_i, s_j), from one relation matrix of the 2b stacked
    L2-normalised embeddings (the two must have one width)."""
    b = len(student)
    both = torch.cat([F.normalize(student, dim=1), F.normalize(teacher, dim=1)])
    r = relation_matrix(both, geometry, c)
    return r[:b, :b], r[b:, :b], r[b:, b:]


def cross_agent_losses(
    student: torch.Tensor, teacher: torch.Tensor, geometry: str, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(st2ss, tt2st) = (MSE(SS, stopgrad ST), MSE(ST, stopgrad TT)); the caller passes the
    teacher's embedding detached."""
    ss, st, tt = agent_matrices(student, teacher, geometry, c)
    return F.mse_loss(ss, st.detach()), F.mse_loss(st, tt.detach())


def hyperbolic_distance_loss(
    student: torch.Tensor, teacher: torch.Tensor, c: float
) -> torch.Tensor:
    """Smooth L1 between Poincare distance matrices of the mapped embeddings, each divided by
    its mean off-diagonal entry (the authors' RKD geodesic term)."""

    def normalised(e: torch.Tensor) -> torch.Tensor:
        d = poincare_distances(to_poincare(e, c), c)
        mean = d.sum() / max(len(e) * (len(e) - 1), 1)
        return d / mean.clamp(min=1e-12)

    return F.smooth_l1_loss(normalised(student), normalised(teacher))


@register(
    "distilvpr",
    "DistilVPR: self-agent RKD distance, angle and Poincare-distance relations (x10) plus "
    "teacher-student cross-agent Euclidean, cosine and Poincare relations (x0.1) of "
    "embeddings (Wang et al. 2024; reconstruction from the authors' code)",
)
class DistilVPR(DistillationTerm):
    """Weights of 0 switch a term off (and it is not computed); the value is a dict with one
    entry per term that is on, named as its weight."""

    needs = frozenset({"embedding"})

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        self_distance: float = 10.0,
        self_angle: float = 10.0,
        self_hyperbolic: float = 10.0,
        st2ss_euclidean: float = 0.1,
        st2ss_spherical: float = 0.1,
        st2ss_hyperbolic: float = 0.1,
        tt2st_euclidean: float = 0.0,
        tt2st_spherical: float = 0.0,
        tt2st_hyperbolic: float = 0.0,
        curvature: float = 0.1,
    ) -> None:
        super().__init__()
        if not curvature > 0:
            raise CmkdError(f"distilvpr curvature must be > 0, got {curvature}")
        self.curvature = float(curvature)
        self.self_weights = {
            "self_distance": float(self_distance),
            "self_angle": float(self_angle),
            "self_hyperbolic": float(self_hyperbolic),
        }
        self.cross_weights = {
            g: (float(w_st2ss), float(w_tt2st))
            for g, w_st2ss, w_tt2st in zip(
                GEOMETRIES,
                (st2ss_euclidean, st2ss_spherical, st2ss_hyperbolic),
                (tt2st_euclidean, tt2st_spherical, tt2st_hyperbolic),
                strict=True,
            )
        }
        weights = [
            *self.self_weights.values(),
            *(w for p in self.cross_weights.values() for w in p),
        ]
        if any(w < 0 for w in weights):
            raise CmkdError(f"distilvpr weights must be >= 0, got {weights}")
        if not any(weights):
            raise CmkdError("distilvpr: every weight is 0, nothing to distil")
        needs_projection = student_dim != teacher_dim and any(
            w for p in self.cross_weights.values() for w in p
        )
        # Student -> teacher width, for the cross-agent relations only (none with equal widths).
        self.projection = (
            nn.Linear(student_dim, teacher_dim, bias=False) if needs_projection else None
        )

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> DistilVPR:
        return cls(student.embedding_dim, teacher.embedding_dim, **params)

    def forward(self, student, teacher, batch):
        s, t = student.embedding, teacher.embedding.detach()
        out: dict[str, torch.Tensor] = {}
        w = self.self_weights
        if w["self_distance"]:
            out["self_distance"] = w["self_distance"] * rkd_distance_loss(s, t)
        if w["self_angle"]:
            out["self_angle"] = w["self_angle"] * rkd_angle_loss(s, t)
        if w["self_hyperbolic"]:
            out["self_hyperbolic"] = w["self_hyperbolic"] * hyperbolic_distance_loss(
                s, t, self.curvature
            )
        s_cross = s if self.projection is None else self.projection(s)
        for geometry, (w_st2ss, w_tt2st) in self.cross_weights.items():
            if not (w_st2ss or w_tt2st):
                continue
            st2ss, tt2st = cross_agent_losses(s_cross, t, geometry, self.curvature)
            if w_st2ss:
                out[f"st2ss_{geometry}"] = w_st2ss * st2ss
            if w_tt2st:
                out[f"tt2st_{geometry}"] = w_tt2st * tt2st
        return out
