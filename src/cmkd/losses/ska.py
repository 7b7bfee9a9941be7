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
- Teacher inputs are detached; the teacher-side attention (and learnt maps) still train.
- The attention keeps only its q and k projections: the authors' v and output projections never
  reach the loss, so they would never get a gradient.
- CORAL is ||C_T - C_S||_F^2 / (4 d^2) with C the sample covariance, computed in the smaller of
  the d x d and b x b spaces; `reference=True` gives the authors' scaling instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.losses.feature import require_feature_maps, resize
from cmkd.models.outputs import ModelOutput

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
    b, d = x.shape[0], width or x.shape[1]
    centred = y_as_x if y_as_x is None else y_as_x - y_as_x.mean(0, keepdim=True)
    gap = scatter_gap(x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True), y_as_x=centred)
    if reference:
        return gap / (4 * d**3)
    return gap / (4 * d**2 * max(b - 1, 1) ** 2)


# --- token weights --------------------------------------------------------------------------


def sinkhorn_plan(scores: torch.Tensor, n_iters: int = 50) -> torch.Tensor:
    """Entropic OT plan with uniform marginals for the kernel exp(scores), batched over the
    leading dims: scores = -cost / reg (here QK^T / sqrt(d_head), cost -QK^T, reg sqrt(d_head)).

    Log-domain Sinkhorn, so large scores do not overflow. Returns P (..., n, m) with rows
    summing to 1/n (up to convergence) and columns to 1/m (exactly: the column update is last).
    Same plan as POT's ot.sinkhorn(1/n, 1/m, cost, reg).
    """
    n, m = scores.shape[-2:]
    log_a, log_b = -math.log(n), -math.log(m)
    f = scores.new_zeros(scores.shape[:-1])
    g = scores.new_zeros(scores.shape[:-2] + (m,))
    for _ in range(n_iters):
        f = log_a - torch.logsumexp(scores + g.unsqueeze(-2), dim=-1)
        g = log_b - torch.logsumexp(scores + f.unsqueeze(-1), dim=-2)
    return torch.exp(f.unsqueeze(-1) + scores + g.unsqueeze(-2))


class TokenAttention(nn.Module):
    """Multi-head q, k projections (no bias) over tokens; returns how much attention each token
    receives, w = A averaged over queries: (b, heads, N).

    planner='softmax': A = softmax(QK^T / sqrt(d_head)) per row, the closed form of entropic OT
    with only the row marginal fixed (cost -QK^T, regulariser sqrt(d_head)): the paper's
    "Lagrangian optimisation". planner='sinkhorn': A = N * the balanced plan (both marginals
    uniform) for the same cost, so rows again sum to 1. Caution: a balanced plan fixes the
    column sums, so w is uniform (1/N) whatever Q and K are; the refinement then leaves the
    tokens unchanged and q, k get no useful gradient. It is the plan the option asks for, kept
    as an ablation (SKA reduced to plain CORAL), not a stronger variant.
    """

    def __init__(
        self, dim: int, heads: int = 8, planner: str = "softmax", sinkhorn_iters: int = 50
    ) -> None:
        super().__init__()
        self.heads, self.planner, self.sinkhorn_iters = heads, planner, sinkhorn_iters
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)

    def plan(self, tokens: torch.Tensor, input_map: torch.Tensor | None = None) -> torch.Tensor:
        """A: (b, heads, N, N), rows summing to 1. input_map (dim x width): the tokens are
        given at `width` and mean input_map @ token (the projection folded into q and k)."""
        b, n, _ = tokens.shape
        c = self.q.weight.shape[0]
        wq, wk = self.q.weight, self.k.weight
        if input_map is not None:
            wq, wk = wq @ input_map, wk @ input_map
        q = F.linear(tokens, wq).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = F.linear(tokens, wk).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)
        if self.planner == "softmax":
            return scores.softmax(dim=-1)
        return n * sinkhorn_plan(scores, self.sinkhorn_iters)

    def forward(self, tokens: torch.Tensor, input_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.plan(tokens, input_map).mean(dim=-2)


def cross_plan(w_t: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """The authors' cross plan M = w_T (outer) w_S: (b, heads, N_T, N_S). O(N^2); kept to test
    `cross_weights` against."""
    return w_t.unsqueeze(-1) * w_s.unsqueeze(-2)


def cross_weights(w_t: torch.Tensor, w_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weights from the cross plan: a_T = mean_S(M) / mean(w_T), a_S = mean_T(M) / mean(w_S)
    (means per sample and head), computed without forming M through the exact identity

        mean_j M[i, j] = w_T[i] * mean(w_S)  =>  a_T = w_T * mean(w_S) / mean(w_T)

    and likewise a_S = w_S * mean(w_T) / mean(w_S). M is a product, so its marginals return the
    factors: when every attention row sums to 1, mean(w) = 1/N and a_T = w_T * N_T / N_S (= N w_T
    on one grid). The cross plan therefore does not mix the two sides: each side's weights come
    from its own attention, scaled by a constant that the refinement's energy scale removes.
    """
    mean_t, mean_s = w_t.mean(-1, keepdim=True), w_s.mean(-1, keepdim=True)
    return w_t * mean_s / mean_t, w_s * mean_t / mean_s


def refine(tokens: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """f' = s * (a ⊙ f) with a = weights averaged over heads (b, N, 1) and
    s = sqrt(||mean_N f||^2 / ||mean_N (a ⊙ f)||^2) per sample: re-weighting moves the tokens
    without changing the energy of the mean token (eps only guards 0 / 0)."""
    a = weights.mean(dim=1).unsqueeze(-1)
    weighted = a * tokens
    before = tokens.mean(dim=1).pow(2).sum(dim=-1, keepdim=True)
    after = weighted.mean(dim=1).pow(2).sum(dim=-1, keepdim=True)
    return ((before + eps) / (after + eps)).sqrt().unsqueeze(-1) * weighted


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
    projection ('fixed' | 'learnt', see the module docstring)."""

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
        self.reference_coral = reference_coral
        learnt = projection == "learnt"
        self.map_s = _projection(student_channels, dim, conv=True, learnt=learnt)
        self.map_t = _projection(teacher_channels, dim, conv=True, learnt=learnt)
        self.embed_s = _projection(student_embedding, dim, conv=False, learnt=learnt)
        self.embed_t = _projection(teacher_embedding, dim, conv=False, learnt=learnt)
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
        if (
            isinstance(projection, FixedProjection)
            and projection.weight.shape[0] > (projection.weight.shape[1])
        ):
            return projection.weight
        return None

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

    def token_coral(self, f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        """CORAL between refined token sets, each (b, N, its width) as `tokens` gives them."""
        p_t, p_s = self._folded(self.map_t), self._folded(self.map_s)
        if p_t is None and p_s is None:
            return coral(f_t.flatten(1), f_s.flatten(1), self.reference_coral)
        # Student tokens in the teacher's coordinates: G = P_T^T P_S (an unfolded side's map
        # is the identity at width dim). Equal fixed maps give G = I.
        if p_t is not None and p_s is not None and torch.equal(p_t, p_s):
            s_as_t = f_s
        else:
            g = p_s if p_t is None else (p_t.T if p_s is None else p_t.T @ p_s)
            s_as_t = f_s @ g.T
        width = f_t.shape[1] * self.attn_t.q.weight.shape[0]
        return coral(f_t.flatten(1), f_s.flatten(1), self.reference_coral, s_as_t.flatten(1), width)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict
    ) -> dict[str, torch.Tensor]:
        if student.feature_map is None or teacher.feature_map is None:
            raise CmkdError("'ska' reads feature maps, but a network output has none")
        s, t = self.tokens(student.feature_map, teacher.feature_map.detach())
        a_t, a_s = cross_weights(
            self.attn_t(t, self._folded(self.map_t)), self.attn_s(s, self._folded(self.map_s))
        )
        f_t, f_s = refine(t, a_t), refine(s, a_s)
        e_s, e_t = self.embed_s(student.embedding), self.embed_t(teacher.embedding.detach())
        return {
            "tokens": self.token_coral(f_t, f_s),
            "pooled": coral(e_t, e_s, self.reference_coral),
        }
