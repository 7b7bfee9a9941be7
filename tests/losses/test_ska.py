"""SKA: CORAL against the direct covariance formulas, the token-weight algebra, the planners
(Sinkhorn against POT), the term between differently shaped networks, and the fast paths
(fused attention weights, one-pass refinement + CORAL, folded maps) against the term computed
the long way, value and gradients, on random and real inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.losses.base import build_term
from cmkd.losses.feature import resize
from cmkd.losses.ska import (
    SKA,
    FixedProjection,
    ReceivedAttention,
    TokenAttention,
    coral,
    cross_plan,
    cross_weights,
    refine,
    refined_coral,
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


# --- the fast paths against the long way ------------------------------------------------------


def long_way(ska: SKA, s_map, t_map, s_emb, t_emb) -> torch.Tensor:
    """SKA (tokens + pooled) as the authors compute it, written out here from the documented
    formulas and sharing no code with the term but its weights and `sinkhorn_plan`: both sides
    projected to width dim, per-head attention plans (b, heads, N, N), the explicit cross plan
    M = w_T (outer) w_S and its marginals over mean(w), the refinement as s * a * f, and CORAL
    from d x d sample covariances."""
    size = tuple(min(a, b) for a, b in zip(s_map.shape[-2:], t_map.shape[-2:], strict=True))

    def side(maps, projection, attention):
        x = projection(resize(maps, size)).flatten(2).transpose(1, 2)  # (b, N, dim)
        b, n, dim = x.shape
        heads = attention.heads
        q = (x @ attention.q.weight.T).view(b, n, heads, -1).transpose(1, 2)
        k = (x @ attention.k.weight.T).view(b, n, heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // heads)
        if attention.planner == "softmax":
            plan = scores.softmax(-1)
        else:
            plan = n * sinkhorn_plan(scores, attention.sinkhorn_iters)
        return x, plan.mean(-2)  # tokens, w (b, heads, N)

    t, w_t = side(t_map.detach(), ska.map_t, ska.attn_t)
    s, w_s = side(s_map, ska.map_s, ska.attn_s)
    m = w_t.unsqueeze(-1) * w_s.unsqueeze(-2)  # the cross plan (b, heads, N, N)
    a_t = m.mean(-1) / w_t.mean(-1, keepdim=True)
    a_s = m.mean(-2) / w_s.mean(-1, keepdim=True)

    def refined(f, a, eps=1e-12):  # eps as documented: it only guards 0 / 0
        weighted = a.mean(1).unsqueeze(-1) * f
        before, after = f.mean(1).pow(2).sum(-1), weighted.mean(1).pow(2).sum(-1)
        energy = ((before + eps) / (after + eps)).sqrt()
        return (energy[:, None, None] * weighted).flatten(1)

    def covariance_gap(x, y):
        b, d = x.shape
        if d <= 2048:
            gap = (torch.cov(x.T) - torch.cov(y.T)).pow(2).sum() * (b - 1) ** 2
        else:  # real maps: d x d matrices of 100s of MB; the b x b identity instead
            xc, yc = x - x.mean(0), y - y.mean(0)
            gap = sum(
                w * (u @ v.T).pow(2).sum() for w, u, v in [(1, xc, xc), (1, yc, yc), (-2, xc, yc)]
            )
        return gap / (4 * d**3 if ska.reference_coral else 4 * d * d * (b - 1) ** 2)

    tokens = covariance_gap(refined(t, a_t), refined(s, a_s))
    return tokens + covariance_gap(ska.embed_t(t_emb.detach()), ska.embed_s(s_emb))


def exact_isometries(ska: SKA) -> SKA:
    """The fixed maps are orthonormal to float32 precision (drawn in float32); the term folds
    them assuming P^T P = I. For comparisons at float64 precision, make that exact."""
    for module in ska.modules():
        if isinstance(module, FixedProjection) and module.weight.shape[0] > module.weight.shape[1]:
            q, r = torch.linalg.qr(module.weight)
            module.weight.copy_(q * r.diagonal().sign())
    return ska


def value_and_gradients(ska: SKA, s_map, t_map, s_emb, t_emb, fast: bool):
    """The term's total (fast) or the long way's, and its gradients w.r.t. the student's map and
    embedding and every trainable parameter of the term."""
    if fast:
        b = s_map.shape[0]
        out = ska(
            ModelOutput(torch.zeros(b, 3, dtype=s_map.dtype), s_emb, s_map),
            ModelOutput(torch.zeros(b, 3, dtype=s_map.dtype), t_emb, t_map),
            {},
        )
        value = out["tokens"] + out["pooled"]
    else:
        value = long_way(ska, s_map, t_map, s_emb, t_emb)
    inputs = [s_map, s_emb, *ska.parameters()]
    return value, torch.autograd.grad(value, inputs)


CASES = {
    "one width, shared fixed map": ((16, 16), (3, 3), {}),
    "two widths under dim": ((16, 24), (4, 3), {}),
    "teacher wider than dim": ((16, 64), (2, 2), {}),
    "student wider than dim": ((64, 16), (3, 3), {}),
    "both at dim": ((32, 32), (3, 3), {}),
    "grid upsampled": ((16, 16), (2, 3), {}),
    "learnt maps": ((16, 24), (3, 3), {"projection": "learnt"}),
    "authors' CORAL scaling": ((16, 16), (3, 3), {"reference_coral": True}),
    "sinkhorn": ((16, 24), (3, 3), {"planner": "sinkhorn", "sinkhorn_iters": 7}),
}


@pytest.mark.parametrize("case", CASES)
def test_term_equals_the_long_way_with_its_gradients(case: str) -> None:
    """Value and every gradient in float64: the fast paths change the order of operations
    only, so the difference is rounding (well below 1e-9 relative). The Sinkhorn planner's
    weights are uniform whatever q and k are, so its q, k gradients are rounding noise (~1e-20)
    on both sides: gradients are compared against the largest one's scale."""
    (ws, wt), (gs, gt), options = CASES[case]
    torch.manual_seed(0)
    ska = exact_isometries(SKA(ws, wt, ws, wt, dim=32, heads=4, **options).double())
    b = 6
    s_map = torch.randn(b, ws, gs, gs, dtype=torch.float64).relu().requires_grad_()
    s_emb = torch.randn(b, ws, dtype=torch.float64, requires_grad=True)
    t_map = torch.randn(b, wt, gt, gt, dtype=torch.float64).relu()
    t_emb = torch.randn(b, wt, dtype=torch.float64)
    fast, fast_grads = value_and_gradients(ska, s_map, t_map, s_emb, t_emb, fast=True)
    slow, slow_grads = value_and_gradients(ska, s_map, t_map, s_emb, t_emb, fast=False)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=0)
    assert len(fast_grads) == 2 + len(list(ska.parameters()))
    scale = max(g.abs().max().item() for g in slow_grads)
    for f, g in zip(fast_grads, slow_grads, strict=True):
        assert options.get("planner") == "sinkhorn" or g.abs().max() > 1e-6 * scale
        torch.testing.assert_close(f, g, rtol=1e-7, atol=1e-10 * scale)


@pytest.fixture(scope="module")
def real_maps(data_root):
    """small_cnn (the grid's backbone) on 32 EuroSAT twins, 64 x 64: an RGB student's and a
    13-band MS teacher's 128 x 4 x 4 feature maps and 128-wide embeddings, as SKA sees them."""
    from cmkd.data.normalize import Standardize
    from cmkd.data.sources import load_source
    from cmkd.models.backbones import create_network

    data = load_source("eurosat_paired", data_root)
    rows = torch.arange(0, 369, 11)[:32].numpy()
    ms = torch.from_numpy(data["ms"].x[rows].astype("float32"))
    rgb = torch.from_numpy(data["rgb"].x[rows]).float()
    torch.manual_seed(0)
    student = create_network("small_cnn", 3, 10)
    teacher = create_network("small_cnn", 13, 10)
    with torch.no_grad():
        s, t = student(Standardize.fit(rgb)(rgb)), teacher(Standardize.fit(ms)(ms))
    assert s.feature_map.shape == t.feature_map.shape == (32, 128, 4, 4)
    return s.feature_map, t.feature_map, s.embedding, t.embedding


@pytest.mark.parametrize("dim", [256, 512])
def test_term_equals_the_long_way_on_real_feature_maps(real_maps, dim: int) -> None:
    """The grid's setting (dim 256) and the default: float64 to rounding, and the float32
    term (what training runs) to float32 tolerance of the float64 long way."""
    torch.manual_seed(0)
    ska = exact_isometries(SKA(128, 128, 128, 128, dim=dim).double())
    s_map, t_map, s_emb, t_emb = (x.double() for x in real_maps)
    s_map, s_emb = s_map.requires_grad_(), s_emb.requires_grad_()
    slow, slow_grads = value_and_gradients(ska, s_map, t_map, s_emb, t_emb, fast=False)
    fast, fast_grads = value_and_gradients(ska, s_map, t_map, s_emb, t_emb, fast=True)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=0)
    for f, g in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(f, g, rtol=1e-7, atol=1e-9 * g.abs().max().item())
    ska = ska.float()
    s_map, s_emb = (x.detach().float().requires_grad_() for x in (s_map, s_emb))
    fast, fast_grads = value_and_gradients(
        ska, s_map, t_map.float(), s_emb, t_emb.float(), fast=True
    )
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=0)
    for f, g in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(f.double(), g, rtol=1e-3, atol=1e-4 * g.abs().max().item())


@pytest.mark.parametrize("folded", [False, True])
def test_received_attention_backward_is_the_chain_rule(folded: bool) -> None:
    torch.manual_seed(0)
    attn = TokenAttention(8, heads=2).double()
    input_map = FixedProjection(5, 8).weight.double() if folded else None
    x = torch.randn(3, 4, 5 if folded else 8, dtype=torch.float64, requires_grad=True)
    wq, wk = attn.q.weight, attn.k.weight
    assert torch.autograd.gradcheck(
        lambda *a: ReceivedAttention.apply(*a, input_map, 2), (x, wq, wk)
    )
    # The forward is TokenAttention's weights averaged over heads.
    torch.testing.assert_close(attn.received(x, input_map), attn(x, input_map).mean(1))
    # A teacher's tokens need no gradient: none is computed, the weights still get theirs.
    out = attn.received(x.detach(), input_map)
    assert torch.autograd.grad(out.sum(), [wq])[0].abs().sum() > 0


@pytest.mark.parametrize("reference", [False, True])
def test_refined_coral_is_coral_of_the_refined_tokens(reference: bool) -> None:
    torch.manual_seed(0)
    t, s = torch.randn(5, 6, 4, dtype=torch.float64), torch.randn(5, 6, 4, dtype=torch.float64)
    w_t, w_s = torch.rand(5, 6, dtype=torch.float64), torch.rand(5, 6, dtype=torch.float64)
    inputs = [s.requires_grad_(), w_t.requires_grad_(), w_s.requires_grad_()]
    one = refined_coral(t, s, w_t, w_s, width=50, reference=reference)
    two = coral(refine(t, w_t).flatten(1), refine(s, w_s).flatten(1), reference=reference, width=50)
    torch.testing.assert_close(one, two, rtol=1e-10, atol=0)
    for a, b in zip(
        torch.autograd.grad(one, inputs), torch.autograd.grad(two, inputs), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_refinement_ignores_a_factor_per_sample_on_the_weights() -> None:
    """Why the term skips the cross plan: its weights are each side's own times a constant."""
    torch.manual_seed(0)
    f, w = torch.randn(3, 10, 6, dtype=torch.float64), torch.rand(3, 4, 10, dtype=torch.float64)
    factor = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(refine(f, factor * w), refine(f, w))
    torch.testing.assert_close(refine(f, w.mean(1)), refine(f, w))


def test_equal_widths_share_one_fixed_map_and_keep_the_state_dict() -> None:
    ska = SKA(16, 16, 12, 12, dim=32, heads=4)
    assert ska.map_t is ska.map_s and ska.embed_t is ska.embed_s
    keys = {"map_s.weight", "map_t.weight", "embed_s.weight", "embed_t.weight"}
    assert keys <= set(ska.state_dict())
    other = SKA(16, 16, 12, 12, dim=32, heads=4)
    other.load_state_dict(ska.state_dict())  # a checkpoint written before the sharing loads
    assert ska.double().map_t is ska.map_s
    learnt = SKA(16, 16, 12, 12, dim=32, heads=4, projection="learnt")
    assert learnt.map_t is not learnt.map_s  # learnt maps are two sets of parameters


def every_k_calls(ska: SKA, s: ModelOutput, t: ModelOutput, calls: int) -> list[dict]:
    """The term's values over `calls` training calls, each with its own backward where it
    has a graph; asserts which calls are computed and which parameters get a gradient."""
    values = []
    for call in range(calls):
        ska.zero_grad(set_to_none=True)
        value = ska(s, t, {})
        total = value["tokens"] + value["pooled"]
        computed = call % ska.every == 0
        assert (total > 0) == computed
        if total.requires_grad:
            total.backward()
        grads = [p.grad for p in ska.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == computed
        values.append({k: v.detach() for k, v in value.items()})
    return values


def test_every_k_steps_is_an_unbiased_estimate() -> None:
    torch.manual_seed(0)
    exact = SKA(16, 24, 16, 24, dim=32, heads=4)
    every = SKA(16, 24, 16, 24, dim=32, heads=4, every=3)
    every.load_state_dict(exact.state_dict())
    s = ModelOutput(torch.zeros(6, 3), torch.randn(6, 16), torch.randn(6, 16, 3, 3))
    t = ModelOutput(torch.zeros(6, 3), torch.randn(6, 24), torch.randn(6, 24, 3, 3))
    want = exact(s, t, {})
    values = every_k_calls(every, s, t, 6)
    assert all(p.grad is None for p in every.parameters())  # a skipped call: no gradient
    for key in want:
        mean = torch.stack([v[key] for v in values]).mean()
        torch.testing.assert_close(mean, want[key].detach())
    every.eval()
    torch.testing.assert_close(every(s, t, {})["tokens"], want["tokens"])
    with pytest.raises(CmkdError, match="every"):
        SKA(4, 4, 4, 4, every=0)


def test_every_k_steps_under_ddp_uses_every_parameter(monkeypatch) -> None:
    """DDP (without find_unused_parameters) needs each parameter in every backward: there a
    skipped call's zero is joined to them all, and they get a zero gradient."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    torch.manual_seed(0)
    every = SKA(16, 16, 16, 16, dim=32, heads=4, every=2)
    s = ModelOutput(torch.zeros(6, 3), torch.randn(6, 16), torch.randn(6, 16, 3, 3))
    t = ModelOutput(torch.zeros(6, 3), torch.randn(6, 16), torch.randn(6, 16, 3, 3))
    every_k_calls(every, s, t, 2)
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in every.parameters())


def test_term_runs_under_mixed_precision() -> None:
    """Under autocast (bf16 on the CPU, the mixed precisions' path) the fused attention runs in
    the inputs' common dtype with autocast off, so its backward meets one dtype: the term
    trains every parameter and stays near its float32 value."""
    torch.manual_seed(0)
    ska = SKA(16, 24, 16, 24, dim=32, heads=4)
    conv = torch.nn.Conv2d(16, 16, 1)
    s_map, s_emb = torch.randn(6, 16, 3, 3), torch.randn(6, 16)
    t = ModelOutput(torch.zeros(6, 3), torch.randn(6, 24), torch.randn(6, 24, 3, 3))
    want = sum(ska(ModelOutput(torch.zeros(6, 3), s_emb, conv(s_map)), t, {}).values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = ModelOutput(torch.zeros(6, 3), s_emb, conv(s_map))
        assert student.feature_map.dtype == torch.bfloat16
        total = sum(ska(student, t, {}).values())
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ska.parameters())
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    torch.testing.assert_close(total.float(), want.detach(), rtol=0.05, atol=0)
