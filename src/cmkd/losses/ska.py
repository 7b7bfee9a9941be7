"""SKA, Semantic-aware Knowledge Alignment (Wei et al. 2025, SemBridge's alignment term).

Each side re-weights its last-stage tokens by how much attention they receive, keeping the
feature energy of the mean token, and the two re-weighted token sets are aligned by CORAL (Sun &
Saenko 2016); the pooled embeddings are aligned by CORAL too. See docs/methods.md, section 1.

What differs from the authors' code (github weirl-922/ACKD, commit 21a20f8):
- Their backbones give equal widths (512) and equal token grids; ours may not. Feature maps are
  brought to the smaller grid with `feature.resize`, then to one width `dim` per channel (a 1x1
  map); pooled embeddings to `dim` likewise. A side whose width is already `dim` is left as it
  is (their setting, reproduced exactly). By default (projection="fixed") the maps are frozen,
  seeded random isometries (`FixedProjection`), not learnt: CORAL only compares second moments,
  and a learnt linear map on each side can match those by itself (whiten, then recolour), so
  the term's own adapters would drive the loss to zero with the networks untouched. Measured
  on two small CNNs with frozen features, Adam lr 1e-3, 1000 steps: learnt maps cut the token
  loss 3500x and the pooled loss 1300x; fixed maps leave the pooled loss as it is and the
  attention alone moves the token loss 13 %. projection="learnt" (bias-free 1x1 convs and
  Linear layers) is kept as an option. Resizing first and projecting second equals the other
  order (both are linear, the resize weights sum to 1) and is cheaper.
- A fixed map from a narrower width (a small CNN's 128 channels to dim 512) is an isometry P
  (P^T P = I), so the whole term can stay in the native width: q(Px) = (W_q P) x, the
  energy-keeping refinement commutes with P, and CORAL's Gram matrices keep their inner
  products (the cross term through G = P_T^T P_S, I when both widths agree). The result and the
  gradients are the projected computation's, at width/dim of its cost: the attention's linear
  maps, which dominate SKA's time, shrink by that factor (see benchmarks/performance.md).
- No N x N cross plan: its marginals are its factors, so each side's token weights are its
  own attention weights (`cross_weights`, `SKA.forward`). The weights come from one autograd
  node (`ReceivedAttention`), refinement and token CORAL from one pass (`refined_coral`).
  What is left at small scale is the attention's matrix products (4 dim x dim maps: at dim
  256, 2.6 times a 100k-parameter student's weights); `every` trades exactness for them.
- Teacher inputs are detached; the teacher-side attention (and learnt maps) still train.
- The attention keeps only its q and k projections: the authors' v and output projections never
  reach the loss, so they would never get a gradient.
- CORAL is ||C_T - C_S||_F^2 / (4 d^2) with C the sample covariance, computed in the smaller of
  the d x d and b x b spaces; `reference=True` gives the authors' scaling instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.losses.feature import require_feature_maps, resize
from cmkd.losses.token_attention import (
    ReceivedAttention,
    TokenAttention,
    cross_plan,
    cross_weights,
    sinkhorn_plan,
)
from cmkd.models.outputs import ModelOutput

__all__ = [
    "SKA",
    "FixedProjection",
    "ReceivedAttention",
    "TokenAttention",
    "coral",
    "cross_plan",
    "cross_weights",
    "refine",
    "refined_coral",
    "scatter_gap",
    "sinkhorn_plan",
]

Tensor = torch.Tensor
Map = torch.Tensor | None  # a folded fixed map (see SKA._folded), or None

PLANNERS = ("softmax", "sinkhorn")
PROJECTIONS = ("fixed", "learnt")

# --- CORAL ----------------------------------------------------------------------------------


def scatter_gap(
    xc: torch.Tensor,
    yc: torch.Tensor,
    gram: bool | None = None,
    y_as_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """||Xc^T Xc - Yc^T Yc||_F^2 for centred b x d matrices.

    y_as_x: Yc's rows expressed in Xc's coordinates, for rows given in native coordinates of
    two isometric embeddings (SKA's folded projections): then Xc and Yc may differ in width,
    their own Gram matrices are the embedded ones, and the cross Gram is Xc y_as_x^T (forces
    the Gram path).

    With d in the thousands (flattened token grids) and b a batch, the d x d scatter matrices
    cost O(b d^2) time and O(d^2) memory, so by default (gram=None) the identity
        ||Xc^T Xc - Yc^T Yc||_F^2 = ||Xc Xc^T||_F^2 + ||Yc Yc^T||_F^2 - 2 ||Xc Yc^T||_F^2
    (all b x b: O(b^2 d) time, O(b^2) memory) is used whenever d > b. It subtracts large
    numbers, so when the two scatters nearly agree its absolute error is about machine epsilon
    times ||Xc^T Xc||_F^2; the result is clamped at 0. Identical inputs give exactly 0.
    """
    if gram is None:
        gram = xc.shape[1] > xc.shape[0] or y_as_x is not None
    if not gram:
        return (xc.T @ xc - yc.T @ yc).pow(2).sum()
    cross = xc @ (yc if y_as_x is None else y_as_x).T
    gap = (xc @ xc.T).pow(2).sum() + (yc @ yc.T).pow(2).sum() - 2 * cross.pow(2).sum()
    return gap.clamp_min(0)


def coral(
    x: torch.Tensor,
    y: torch.Tensor,
    reference: bool = False,
    y_as_x: torch.Tensor | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """CORAL between two b x d samples (Sun & Saenko 2016).

    reference=False: ||C_x - C_y||_F^2 / (4 d^2), C = Xc^T Xc / (b - 1) the sample covariance.
    reference=True: the authors' code (utils/loss_kd.py): unnormalised scatters Xc^T Xc and the
    MEAN over the d^2 entries of the squared difference divided by 4d, i.e.
    ||Xc^T Xc - Yc^T Yc||_F^2 / (4 d^3). It grows with b^2 and shrinks with d^3, so its size
    depends on the batch and on the flattened width; kept for reproducing their numbers.
    y_as_x and width: x and y in native coordinates of isometric embeddings into a common
    width-d space, y_as_x being y in x's coordinates (see scatter_gap); width is that d.
    """
    if y_as_x is None and (x.shape != y.shape or x.ndim != 2):
        raise CmkdError(f"coral needs two b x d tensors of one shape, got {x.shape}, {y.shape}")
    centred = y_as_x if y_as_x is None else y_as_x - y_as_x.mean(0, keepdim=True)
    gap = scatter_gap(x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True), y_as_x=centred)
    return _normalised(gap, x.shape[0], width or x.shape[1], reference)


def _normalised(gap: torch.Tensor, b: int, d: int, reference: bool) -> torch.Tensor:
    """The scatter gap as CORAL (see `coral`): / (4 d^2 (b - 1)^2), or the authors' / 4d^3."""
    return gap / (4 * d**3) if reference else gap / (4 * d**2 * max(b - 1, 1) ** 2)


# --- refinement ---------------------------------------------------------------------------


def refine(tokens: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """f' = s * (a ⊙ f) with a the token weights (b, N), or (b, heads, N) averaged over heads,
    and s = sqrt(||mean_N f||^2 / ||mean_N (a ⊙ f)||^2) per sample: re-weighting moves the
    tokens without changing the energy of the mean token (eps only guards 0 / 0). A positive
    factor per sample on the weights therefore changes nothing (up to eps)."""
    a = weights if weights.ndim == 2 else weights.mean(dim=1)
    return _energy_scaled(tokens, a, eps).unsqueeze(-1) * tokens


def _energy_scaled(tokens: torch.Tensor, a: torch.Tensor, eps: float) -> torch.Tensor:
    """s * a, (..., N), for tokens (..., N, c): `refine` as weights, before they touch f."""
    before = tokens.mean(dim=-2).pow(2).sum(dim=-1)
    after = (a.unsqueeze(-2) @ tokens).squeeze(-2).div(tokens.shape[-2]).pow(2).sum(dim=-1)
    return a * ((before + eps) / (after + eps)).sqrt().unsqueeze(-1)


def refined_coral(
    t: torch.Tensor,
    s: torch.Tensor,
    w_t: torch.Tensor,
    w_s: torch.Tensor,
    width: int | None = None,
    reference: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    """coral(refine(t, w_t).flatten(1), refine(s, w_s).flatten(1), reference, width=width) for
    token sets of one shape (b, N, c) in common coordinates, weights (b, N), in fewer passes
    over the tokens: both sides stacked, each energy scale folded into its (b, N) weights
    before they touch the tokens, and the three b x b Gram matrices of CORAL taken as blocks
    of one 2b x 2b product."""
    b = t.shape[0]
    both = torch.stack([t, s])
    z = (_energy_scaled(both, torch.stack([w_t, w_s]), eps).unsqueeze(-1) * both).flatten(2)
    z = (z - z.mean(dim=1, keepdim=True)).view(2 * b, -1)
    squares = (z @ z.T).pow(2).view(2, b, 2, b).sum(dim=(1, 3))  # [[xx, xy], [yx, yy]]
    gap = (squares[0, 0] + squares[1, 1] - squares[0, 1] - squares[1, 0]).clamp_min(0)
    return _normalised(gap, b, width or z.shape[1], reference)


# --- the term -------------------------------------------------------------------------------


class FixedProjection(nn.Module):
    """A frozen random map from `width` to `dim` channels (a buffer, not a parameter), for
    b x width vectors or b x width x H x W maps. Orthonormal columns when width <= dim: an
    isometry, so covariance spectra pass unchanged; orthonormal rows (a random subspace)
    otherwise. Seeded, so every build gives the same map, and equal widths get equal maps."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        weight = torch.empty(dim, width)
        nn.init.orthogonal_(weight, generator=torch.Generator().manual_seed(0))
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return torch.einsum("dc,bchw->bdhw", self.weight, x)
        return x @ self.weight.T


def _projection(width: int, dim: int, conv: bool, learnt: bool) -> nn.Module:
    if width == dim:
        return nn.Identity()
    if not learnt:
        return FixedProjection(width, dim)
    return nn.Conv2d(width, dim, 1, bias=False) if conv else nn.Linear(width, dim, bias=False)


@register(
    "ska",
    "Semantic-aware knowledge alignment: attention-weighted tokens and pooled embeddings "
    "aligned by CORAL (Wei et al. 2025)",
)
class SKA(DistillationTerm):
    """Returns {"tokens": L_ot1, "pooled": L_ot2}; the authors' weight l_ot * w_ot = 0.3 * 0.01
    belongs in the config weight, not here. Options: dim (common width), heads, planner
    ('softmax' | 'sinkhorn'), sinkhorn_iters, reference_coral (the authors' CORAL scaling),
    projection ('fixed' | 'learnt', see the module docstring), every.

    every = k > 1 is an approximation that cuts SKA's cost k-fold: in training mode the term
    is computed on every k-th call only, multiplied by k, and is 0 on the calls between, so
    its expected value and gradient over k steps are the exact term's (an unbiased estimate,
    like subsampling the steps; `_skipped` says what the parameters see in between). Logged
    values are those estimates: their epoch mean is the term's. Evaluation mode always
    computes the term. The default 1 is exact."""

    needs = frozenset({"feature_map", "embedding"})

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        student_embedding: int,
        teacher_embedding: int,
        dim: int = 512,
        heads: int = 8,
        planner: str = "softmax",
        sinkhorn_iters: int = 50,
        reference_coral: bool = False,
        projection: str = "fixed",
        every: int = 1,
    ) -> None:
        super().__init__()
        if planner not in PLANNERS:
            raise CmkdError(f"'ska' option planner must be one of {PLANNERS}, got {planner!r}")
        if not (isinstance(heads, int) and heads >= 1 and isinstance(dim, int) and dim >= 1):
            raise CmkdError(f"'ska' needs positive integers dim and heads, got {dim!r}, {heads!r}")
        if dim % heads:
            raise CmkdError(f"'ska' option dim ({dim}) must be a multiple of heads ({heads})")
        if projection not in PROJECTIONS:
            raise CmkdError(
                f"'ska' option projection must be one of {PROJECTIONS}, got {projection!r}"
            )
        if not (isinstance(sinkhorn_iters, int) and sinkhorn_iters >= 1):
            raise CmkdError(f"'ska' option sinkhorn_iters must be >= 1, got {sinkhorn_iters!r}")
        if not (isinstance(every, int) and every >= 1):
            raise CmkdError(f"'ska' option every must be an integer >= 1, got {every!r}")
        self.reference_coral, self.every, self.calls = reference_coral, every, 0
        learnt = projection == "learnt"
        self.map_s = _projection(student_channels, dim, conv=True, learnt=learnt)
        self.map_t = _projection(teacher_channels, dim, conv=True, learnt=learnt)
        self.embed_s = _projection(student_embedding, dim, conv=False, learnt=learnt)
        self.embed_t = _projection(teacher_embedding, dim, conv=False, learnt=learnt)
        # Equal widths give equal fixed maps (seeded): one module for both sides, so that
        # `_common` sees them as one without comparing them every step. Both names stay in
        # the state dict.
        if isinstance(self.map_s, FixedProjection) and student_channels == teacher_channels:
            self.map_t = self.map_s
        if isinstance(self.embed_s, FixedProjection) and student_embedding == teacher_embedding:
            self.embed_t = self.embed_s
        self.attn_s = TokenAttention(dim, heads, planner, sinkhorn_iters)
        self.attn_t = TokenAttention(dim, heads, planner, sinkhorn_iters)

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> SKA:
        require_feature_maps("ska", student, teacher, "an embedding term such as rkd")
        return cls(
            student.feature_channels,
            teacher.feature_channels,
            student.embedding_dim,
            teacher.embedding_dim,
            **params,
        )

    @staticmethod
    def _folded(projection: nn.Module) -> torch.Tensor | None:
        """The matrix of a fixed isometric map (width < dim), applied implicitly; else None."""
        fixed = isinstance(projection, FixedProjection)
        return (
            projection.weight
            if fixed and projection.weight.shape[0] > projection.weight.shape[1]
            else None
        )

    def tokens(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Both maps on the smaller grid as (b, N, width) token sequences: at width dim, or
        at their own width where the map to dim is a folded isometry (see `_folded`)."""
        (hs, ws), (ht, wt) = student.shape[-2:], teacher.shape[-2:]
        size = (min(hs, ht), min(ws, wt))
        s, t = resize(student, size), resize(teacher, size)
        if self._folded(self.map_s) is None:
            s = self.map_s(s)
        if self._folded(self.map_t) is None:
            t = self.map_t(t)
        return s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2)

    def _skipped(self) -> torch.Tensor:
        """A skipped step's 0: under DDP joined to every parameter of the term (DDP expects
        each in every backward; they get a zero gradient), elsewhere a constant (they get
        none, so the optimiser skips them: Adam over SKA's parameters is ~3 % of a small_cnn
        step)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return sum(p.sum() for p in self.parameters()) * 0.0
        return self.attn_s.q.weight.new_zeros(())

    def token_coral(self, f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        """CORAL between refined token sets, each (b, N, its width) as `tokens` gives them."""
        return self._common_coral(f_t, f_s, self._folded(self.map_t), self._folded(self.map_s))

    @staticmethod
    def _common(x_t: Tensor, x_s: Tensor, p_t: Map, p_s: Map) -> tuple[Tensor, Tensor] | None:
        """Teacher and student rows (..., width) in one set of coordinates with the Gram
        matrices of the rows at width dim: a side with a folded map p (see `_folded`) stands
        for p @ x, a side without one is at width dim already. Isometries keep Gram matrices,
        so rows under one shared map stay as they are and a lone folded side is lifted by its
        map. None when the two sides are folded by different maps."""
        if p_t is not None and p_s is not None:
            return (x_t, x_s) if p_t is p_s or torch.equal(p_t, p_s) else None
        if p_s is not None:
            return x_t, x_s @ p_s.T
        if p_t is not None:
            return x_t @ p_t.T, x_s
        return x_t, x_s

    def _common_coral(self, x_t: Tensor, x_s: Tensor, p_t: Map, p_s: Map) -> Tensor:
        """CORAL between teacher and student rows (b, ..., width) flattened per sample, the
        rows meaning what `_common` says."""
        width = math.prod(x_t.shape[1:-1]) * self.attn_t.q.weight.shape[0]
        pair = self._common(x_t, x_s, p_t, p_s)
        if pair is None:  # the cross Gram through G = P_T^T P_S, in x_t's coordinates
            s_as_t = (x_s @ (p_t.T @ p_s).T).flatten(1)
            return coral(x_t.flatten(1), x_s.flatten(1), self.reference_coral, s_as_t, width)
        return coral(pair[0].flatten(1), pair[1].flatten(1), self.reference_coral, width=width)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict
    ) -> dict[str, torch.Tensor]:
        if student.feature_map is None or teacher.feature_map is None:
            raise CmkdError("'ska' reads feature maps, but a network output has none")
        scale = 1.0
        if self.training and self.every > 1:
            self.calls += 1
            if (self.calls - 1) % self.every:
                return {"tokens": (zero := self._skipped()), "pooled": zero}
            scale = float(self.every)
        s, t = self.tokens(student.feature_map, teacher.feature_map.detach())
        p_t, p_s = self._folded(self.map_t), self._folded(self.map_s)
        # The cross plan's token weights are each side's own attention weights times a
        # constant (`cross_weights`: every softmax row, or Sinkhorn column, sums to 1, so
        # mean(w) = 1/N on either side), and the refinement's energy scale removes a constant
        # factor: the refinement reads the weights directly, the same loss and gradients.
        w_t, w_s = self.attn_t.received(t, p_t), self.attn_s.received(s, p_s)
        pair = self._common(t, s, p_t, p_s)
        if pair is None:
            tokens = self.token_coral(refine(t, w_t), refine(s, w_s))
        else:
            width = t.shape[1] * self.attn_t.q.weight.shape[0]
            tokens = refined_coral(*pair, w_t, w_s, width, self.reference_coral)
        e_t, e_s = teacher.embedding.detach(), student.embedding
        q_t, q_s = self._folded(self.embed_t), self._folded(self.embed_s)
        pooled = self._common_coral(
            e_t if q_t is not None else self.embed_t(e_t),
            e_s if q_s is not None else self.embed_s(e_s),
            q_t,
            q_s,
        )
        out = {"tokens": tokens, "pooled": pooled}
        return {k: scale * v for k, v in out.items()} if scale != 1.0 else out
