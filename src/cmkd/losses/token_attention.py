"""Token attention weights for SKA (`cmkd.losses.ska`): how much attention each last-stage
token receives, per head (`TokenAttention`) or averaged over heads through one autograd node
(`ReceivedAttention`); the softmax and Sinkhorn planners; and the authors' cross plan between
two sides, whose marginals are each side's own weights (`cross_weights`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


class ReceivedAttention(torch.autograd.Function):
    """w[b, j] = mean over heads h and queries i of softmax_j(q_hi . k_hj / sqrt(d_head)): how
    much softmax attention token j receives, (b, N), with q = x (W_q P)^T and k = x (W_k P)^T.

    One autograd node with a written-out backward instead of the ~15 small nodes (and their
    saved copies) that projection, heads, scores, softmax and the two means leave behind; the
    matrix products are the same. The backward is the chain rule through those steps (tests
    check it against autograd through the plain computation).
    """

    @staticmethod
    def forward(ctx, x, wq, wk, input_map, heads):
        # Under autocast (mixed precision) in the inputs' common dtype, autocast off: the
        # backward below runs outside autocast and needs one dtype throughout.
        dtype = torch.promote_types(x.dtype, wq.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return ReceivedAttention._forward(ctx, *(
                None if a is None else a.to(dtype) for a in (x, wq, wk, input_map)
            ), heads)  # fmt: skip

    @staticmethod
    def _forward(ctx, x, wq, wk, input_map, heads):
        b, n, width = x.shape
        dim = wq.shape[0]
        d_head = dim // heads
        # q and k at the tokens' width (the map folded in); 1/sqrt(d_head) scales W_q's rows,
        # dim x width values instead of b x heads x N^2 scores.
        scale = 1 / math.sqrt(d_head)
        if input_map is not None:
            wq, wk = (wq @ input_map).mul_(scale), wk @ input_map
        else:
            wq = wq * scale
        rows = x.reshape(b * n, width)
        q = (rows @ wq.T).view(b, n, heads, d_head).transpose(1, 2).contiguous()
        k = (rows @ wk.T).view(b, n, heads, d_head).transpose(1, 2).contiguous()
        attention = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        ctx.save_for_backward(rows, wq, wk, input_map, q, k, attention)
        ctx.shape = (b, n, width, heads)
        return attention.sum(dim=(1, 2)) / (heads * n)

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return ReceivedAttention._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        rows, wq, wk, input_map, q, k, attention = ctx.saved_tensors
        b, n, width, heads = ctx.shape
        dim = wq.shape[0]
        grad = grad.to(rows.dtype)
        # dL/dA[b, h, i, j] = grad[b, j] / (heads n) for every head and query; through the
        # softmax: dS = A * (dA - sum_j A_ij dA_ij).
        g = (grad / (heads * n)).view(b, 1, 1, n)
        d_scores = attention * (g - attention @ g.transpose(-2, -1))
        d_q = (d_scores @ k).transpose(1, 2).reshape(b * n, dim)
        d_k = (d_scores.transpose(-2, -1) @ q).transpose(1, 2).reshape(b * n, dim)
        d_x = None
        if ctx.needs_input_grad[0]:
            d_x = torch.addmm(d_q @ wq, d_k, wk).view(b, n, width)
        d_wq = d_wk = None
        if ctx.needs_input_grad[1]:
            d_wq = d_q.T @ rows
            d_wq = d_wq if input_map is None else d_wq @ input_map.T
            d_wq.mul_(1 / math.sqrt(dim // heads))
        if ctx.needs_input_grad[2]:
            d_wk = d_k.T @ rows
            d_wk = d_wk if input_map is None else d_wk @ input_map.T
        return d_x, d_wq, d_wk, None, None


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

    def received(self, tokens: torch.Tensor, input_map: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` averaged over heads too, (b, N): all that SKA reads. The softmax planner
        goes through `ReceivedAttention` (same values and gradients, fewer nodes)."""
        if self.planner == "softmax":
            return ReceivedAttention.apply(
                tokens, self.q.weight, self.k.weight, input_map, self.heads
            )
        return self(tokens, input_map).mean(dim=1)


def cross_plan(w_t: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """The authors' cross plan M = w_T (outer) w_S: (b, heads, N_T, N_S), for tests."""
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
