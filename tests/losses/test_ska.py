"""SKA: CORAL against the direct covariance formulas, the token-weight algebra, the planners
(Sinkhorn against POT), and the term between differently shaped networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.losses.base import build_term
from cmkd.losses.ska import (
    SKA,
    FixedProjection,
    TokenAttention,
    coral,
    cross_plan,
    cross_weights,
    refine,
    scatter_gap,
    sinkhorn_plan,
)
from cmkd.models.outputs import ModelOutput


def direct_coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sun & Saenko's definition with d x d covariance matrices."""
    d = x.shape[1]
    return (torch.cov(x.T) - torch.cov(y.T)).pow(2).sum() / (4 * d * d)


def authors_coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """utils/loss_kd.py of the authors' code, written out."""
    d = source.shape[1]
    xm = source.mean(0, keepdim=True) - source
    xmt = target.mean(0, keepdim=True) - target
    return ((xm.T @ xm) - (xmt.T @ xmt)).pow(2).mean() / (4 * d)


@pytest.mark.parametrize("b, d", [(5, 40), (40, 5), (7, 7)])
def test_coral_matches_the_covariance_formulas(b: int, d: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(b, d, dtype=torch.float64), 2 * torch.randn(b, d, dtype=torch.float64) + 1
    torch.testing.assert_close(coral(x, y), direct_coral(x, y))
    torch.testing.assert_close(coral(x, y, reference=True), authors_coral(x, y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    torch.testing.assert_close(scatter_gap(xc, yc, gram=True), scatter_gap(xc, yc, gram=False))
    assert coral(x, x) == 0 and coral(x, x, reference=True) == 0  # exactly, despite the Gram form
    # A shift changes no covariance; the Gram form leaves only rounding (see scatter_gap).
    assert coral(x, x + 3.0) < 1e-12 * coral(x, y)


def test_refinement_keeps_the_energy_of_the_mean_token() -> None:
    torch.manual_seed(0)
    f = torch.randn(3, 10, 6, dtype=torch.float64)
    weights = torch.rand(3, 4, 10, dtype=torch.float64)  # (b, heads, N)
    refined = refine(f, weights)
    torch.testing.assert_close(refined.mean(1).norm(dim=-1), f.mean(1).norm(dim=-1))
    a = weights.mean(1, keepdim=True).transpose(1, 2)
    ratio = refined / (a * f)  # one scale per sample
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))


def test_cross_weights_equal_the_explicit_plan_and_reduce_to_n_times_w() -> None:
    torch.manual_seed(0)
    w_t, w_s = torch.rand(2, 3, 5, dtype=torch.float64), torch.rand(2, 3, 7, dtype=torch.float64)
    m = cross_plan(w_t, w_s)
    assert m.shape == (2, 3, 5, 7)
    a_t, a_s = cross_weights(w_t, w_s)
    torch.testing.assert_close(a_t, m.mean(-1) / w_t.mean(-1, keepdim=True))
    torch.testing.assert_close(a_s, m.mean(-2) / w_s.mean(-1, keepdim=True))
    # Attention rows summing to 1 make every w sum to 1: a = w * N_self / N_other.
    w_t, w_s = w_t / w_t.sum(-1, keepdim=True), w_s / w_s.sum(-1, keepdim=True)
    a_t, a_s = cross_weights(w_t, w_s)
    torch.testing.assert_close(a_t, w_t * 5 / 7)
    torch.testing.assert_close(a_s, w_s * 7 / 5)


def test_softmax_attention_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    attn = TokenAttention(16, heads=4)
    plan = attn.plan(torch.randn(2, 9, 16))
    assert plan.shape == (2, 4, 9, 9)
    torch.testing.assert_close(plan.sum(-1), torch.ones(2, 4, 9))
    torch.testing.assert_close(attn(torch.randn(2, 9, 16)).sum(-1), torch.ones(2, 4))


def test_sinkhorn_plan_has_uniform_marginals_and_matches_pot() -> None:
    ot = pytest.importorskip("ot")
    torch.manual_seed(0)
    q, k = (
        torch.randn(2, 3, 6, 4, dtype=torch.float64),
        torch.randn(2, 3, 6, 4, dtype=torch.float64),
    )
    reg = 2.0  # sqrt(d_head)
    plan = sinkhorn_plan(q @ k.transpose(-2, -1) / reg, n_iters=300)
    torch.testing.assert_close(plan.sum(-1), torch.full((2, 3, 6), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(-2), torch.full((2, 3, 6), 1 / 6, dtype=torch.float64))
    uniform = np.full(6, 1 / 6)
    for i, j in [(0, 0), (1, 2)]:
        cost = -(q[i, j] @ k[i, j].T).numpy()
        expected = ot.sinkhorn(uniform, uniform, cost, reg, numItermax=10000, stopThr=1e-12)
        np.testing.assert_allclose(plan[i, j].numpy(), expected, rtol=1e-7, atol=1e-12)


def test_sinkhorn_planner_gives_uniform_token_weights() -> None:
    """A balanced plan fixes the column sums, so the weights carry nothing (documented)."""
    torch.manual_seed(0)
    w = TokenAttention(16, heads=4, planner="sinkhorn", sinkhorn_iters=20)(torch.randn(2, 9, 16))
    torch.testing.assert_close(w, torch.full((2, 4, 9), 1 / 9))


def test_fixed_projection_is_a_frozen_isometry() -> None:
    proj = FixedProjection(6, 16)
    assert not list(proj.parameters())
    x = torch.randn(4, 6)
    torch.testing.assert_close(proj(x).norm(dim=1), x.norm(dim=1))
    maps = torch.randn(4, 6, 3, 2)
    torch.testing.assert_close(proj(maps)[..., 1, 0], proj(maps[..., 1, 0]))
    torch.testing.assert_close(FixedProjection(6, 16).weight, proj.weight)  # seeded


@pytest.mark.parametrize("options", [{}, {"projection": "learnt", "planner": "sinkhorn"}])
def test_ska_between_different_networks(network_pair, options: dict) -> None:
    (student, x_s), (teacher, x_t), kinds = network_pair
    if "mlp" in kinds:
        with pytest.raises(CmkdError, match="feature map"):
            build_term("ska", student, teacher, dim=32, heads=4, **options)
        return
    term = build_term("ska", student, teacher, dim=32, heads=4, sinkhorn_iters=5, **options)
    assert isinstance(term, SKA) and term.needs == {"feature_map", "embedding"}
    value = term(student(x_s), teacher(x_t), {})
    assert set(value) == {"tokens", "pooled"}
    total = value["tokens"] + value["pooled"]
    assert total.ndim == 0 and torch.isfinite(total) and total > 0
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for name, p in term.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"


def test_bad_options_raise() -> None:
    for options in ({"planner": "exact"}, {"dim": 30, "heads": 8}, {"projection": "x"}):
        with pytest.raises(CmkdError):
            SKA(4, 4, 4, 4, **options)


def projected_ska(ska: SKA, s_map, t_map, s_emb, t_emb) -> torch.Tensor:
    """SKA computed the plain way: every side projected to width dim first, then attention,
    refinement and CORAL on the d = N * dim flattened tokens by the covariance formula."""
    from cmkd.losses.feature import resize

    size = tuple(min(a, b) for a, b in zip(s_map.shape[-2:], t_map.shape[-2:], strict=True))
    s = ska.map_s(resize(s_map, size)).flatten(2).transpose(1, 2)
    t = ska.map_t(resize(t_map, size)).flatten(2).transpose(1, 2)
    a_t, a_s = cross_weights(ska.attn_t(t), ska.attn_s(s))
    f_t, f_s = refine(t, a_t), refine(s, a_s)
    tokens = direct_coral(f_t.flatten(1).double(), f_s.flatten(1).double())
    return tokens + coral(ska.embed_t(t_emb), ska.embed_s(s_emb)).double()


@pytest.mark.parametrize(
    "widths, grids",
    [((16, 16), (3, 3)), ((16, 24), (4, 3)), ((16, 64), (2, 2)), ((64, 16), (3, 3))],
)
def test_folded_projections_equal_the_projected_computation(widths, grids) -> None:
    """Narrow sides stay at their own width (the isometry folded into q and k, the CORAL cross
    term through P_T^T P_S): same loss and same gradients as projecting to dim first."""
    torch.manual_seed(0)
    (ws, wt), (gs, gt), b, dim = widths, grids, 6, 32
    ska = SKA(ws, wt, ws, wt, dim=dim, heads=4)
    folded = [ska._folded(m) is not None for m in (ska.map_s, ska.map_t)]
    assert folded == [ws < dim, wt < dim]
    s_map = torch.randn(b, ws, gs, gs, requires_grad=True)
    t_map, s_emb, t_emb = torch.randn(b, wt, gt, gt), torch.randn(b, ws), torch.randn(b, wt)
    out = ska(
        ModelOutput(torch.zeros(b, 3), s_emb, s_map),
        ModelOutput(torch.zeros(b, 3), t_emb, t_map),
        {},
    )
    fast = out["tokens"] + out["pooled"]
    fast_grads = torch.autograd.grad(fast, [s_map, ska.attn_s.q.weight, ska.attn_t.k.weight])
    slow = projected_ska(ska, s_map, t_map, s_emb, t_emb)
    slow_grads = torch.autograd.grad(slow, [s_map, ska.attn_s.q.weight, ska.attn_t.k.weight])
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=1e-9)
    for f, s in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(f.double(), s.double(), rtol=1e-3, atol=1e-7)
