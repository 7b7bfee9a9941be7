"""DistilVPR: each geometry's relation matrix against formulas written out pair by pair, the
agents' matrices, zero at the teacher, gradients, differing widths and the weights."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.losses import LOSSES, build_term
from cmkd.losses.distilvpr import (
    DistilVPR,
    agent_matrices,
    cross_agent_losses,
    hyperbolic_distance_loss,
    poincare_distances,
    relation_matrix,
    to_poincare,
)
from cmkd.losses.relation import rkd_angle_loss, rkd_distance_loss
from cmkd.models.outputs import ModelOutput

TERMS = (
    "self_distance",
    "self_angle",
    "self_hyperbolic",
    "st2ss_euclidean",
    "st2ss_spherical",
    "st2ss_hyperbolic",
    "tt2st_euclidean",
    "tt2st_spherical",
    "tt2st_hyperbolic",
)
ALL_ON = {name: 1.0 for name in TERMS}


def _inside_ball(n: int, d: int, c: float, seed: int = 0) -> torch.Tensor:
    """n float64 points strictly inside the ball of curvature c (radii up to 0.95 / sqrt(c))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    radius = 0.95 * torch.rand(n, 1, generator=g, dtype=torch.float64) / math.sqrt(c)
    return x / x.norm(dim=1, keepdim=True) * radius


def _mobius_add(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    xy, x2, y2 = float(x @ y), float(x @ x), float(y @ y)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c**2 * x2 * y2)


def _out(e: torch.Tensor) -> ModelOutput:
    return ModelOutput(logits=e[:, :2], embedding=e)


def test_euclidean_and_spherical_relations_pair_by_pair() -> None:
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    euclid, cos = relation_matrix(x, "euclidean", 0.1), relation_matrix(x, "spherical", 0.1)
    for i in range(6):
        for j in range(6):
            d = 0.0 if i == j else math.sqrt(sum((x[i, k] - x[j, k]).item() ** 2 for k in range(5)))
            dot = sum((x[i, k] * x[j, k]).item() for k in range(5))
            ni = math.sqrt(sum(v.item() ** 2 for v in x[i]))
            nj = math.sqrt(sum(v.item() ** 2 for v in x[j]))
            assert euclid[i, j].item() == pytest.approx(d, abs=1e-6)
            assert cos[i, j].item() == pytest.approx(dot / (ni * nj), abs=1e-12)


def test_poincare_distance_c1_is_the_arccosh_formula() -> None:
    x = _inside_ball(7, 4, 1.0)
    d = poincare_distances(x, 1.0)
    for i in range(7):
        for j in range(7):
            diff2 = (x[i] - x[j]).pow(2).sum().item()
            ni2, nj2 = x[i].pow(2).sum().item(), x[j].pow(2).sum().item()
            ref = math.acosh(1 + 2 * diff2 / ((1 - ni2) * (1 - nj2)))
            assert d[i, j].item() == pytest.approx(ref, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("c", [0.1, 0.5, 2.0])
def test_poincare_distance_any_curvature_is_the_mobius_form(c: float) -> None:
    # hyptorch's form: 2 / sqrt(c) artanh(sqrt(c) ||(-x) (+)_c y||), away from its clamp.
    x = _inside_ball(6, 3, c, seed=2)
    d = poincare_distances(x, c)
    for i in range(6):
        for j in range(6):
            norm = _mobius_add(-x[i], x[j], c).norm().item()
            ref = 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * norm)
            assert d[i, j].item() == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_to_poincare_is_the_exponential_map_then_the_clip() -> None:
    c = 0.1
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[0] *= 100.0  # tanh rounds to 1: clipped to the ball's margin
    y = to_poincare(x, c)
    for i in range(5):
        n = x[i].norm().item()
        radius = min(math.tanh(math.sqrt(c) * n), 1 - 1e-3) / math.sqrt(c)
        torch.testing.assert_close(y[i], x[i] / n * radius)
    assert (y.norm(dim=1) < 1 / math.sqrt(c)).all()


def test_agent_matrices_are_the_ss_st_tt_blocks() -> None:
    torch.manual_seed(4)
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    su, tu = s / s.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    ss, st, tt = agent_matrices(s, t, "euclidean", 0.1)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert ss[i, j].item() == pytest.approx((su[i] - su[j]).norm().item())
                assert tt[i, j].item() == pytest.approx((tu[i] - tu[j]).norm().item())
            assert st[i, j].item() == pytest.approx((su[j] - tu[i]).norm().item(), abs=1e-6)
    _, st_h, _ = agent_matrices(s, t, "hyperbolic", 0.1)
    ref = poincare_distances(to_poincare(torch.cat([tu, su]), 0.1), 0.1)[:4, 4:]
    torch.testing.assert_close(st_h, ref)
    # L2 normalisation first: the scale of either side does not matter.
    for geometry in ("euclidean", "spherical", "hyperbolic"):
        scaled = agent_matrices(3 * s, t / 7, geometry, 0.1)
        for a, b in zip(agent_matrices(s, t, geometry, 0.1), scaled, strict=True):
            torch.testing.assert_close(a, b)


def test_zero_at_the_teacher_and_positive_elsewhere() -> None:
    torch.manual_seed(5)
    t = torch.randn(8, 6, dtype=torch.float64)
    term = DistilVPR(6, 6, **ALL_ON)
    assert term.projection is None
    at_teacher = term(_out(t.clone()), _out(t), {})
    assert set(at_teacher) == set(TERMS)
    for name, value in at_teacher.items():
        assert value.item() == pytest.approx(0.0, abs=1e-9), name
    elsewhere = term(_out(torch.randn(8, 6, dtype=torch.float64)), _out(t), {})
    for name, value in elsewhere.items():
        assert value.item() > 1e-4, name


def test_each_term_is_its_weight_times_its_formula() -> None:
    torch.manual_seed(6)
    s, t = torch.randn(7, 5), torch.randn(7, 5)
    weights = {name: float(i + 2) for i, name in enumerate(TERMS)}
    out = DistilVPR(5, 5, curvature=0.3, **weights)(_out(s), _out(t), {})
    torch.testing.assert_close(out["self_distance"], 2 * rkd_distance_loss(s, t))
    torch.testing.assert_close(out["self_angle"], 3 * rkd_angle_loss(s, t))
    torch.testing.assert_close(out["self_hyperbolic"], 4 * hyperbolic_distance_loss(s, t, 0.3))
    for k, geometry in enumerate(("euclidean", "spherical", "hyperbolic")):
        st2ss, tt2st = cross_agent_losses(s, t, geometry, 0.3)
        torch.testing.assert_close(out[f"st2ss_{geometry}"], (5 + k) * st2ss)
        torch.testing.assert_close(out[f"tt2st_{geometry}"], (8 + k) * tt2st)


def test_defaults_are_the_authors_and_zero_weights_switch_terms_off() -> None:
    torch.manual_seed(7)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    out = DistilVPR(4, 4)(_out(s), _out(t), {})
    assert set(out) == {"self_distance", "self_angle", "self_hyperbolic"} | {
        f"st2ss_{g}" for g in ("euclidean", "spherical", "hyperbolic")
    }
    torch.testing.assert_close(out["self_angle"], 10 * rkd_angle_loss(s, t))
    torch.testing.assert_close(
        out["st2ss_spherical"], 0.1 * cross_agent_losses(s, t, "spherical", 0.1)[0]
    )
    only = DistilVPR(4, 4, self_distance=0, self_angle=0, st2ss_euclidean=0, st2ss_hyperbolic=0)
    assert set(only(_out(s), _out(t), {})) == {"self_hyperbolic", "st2ss_spherical"}


@pytest.mark.parametrize("name", TERMS)
def test_each_term_sends_gradient_to_the_student_and_none_to_the_teacher(name: str) -> None:
    torch.manual_seed(8)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 9, requires_grad=True)  # differing widths: a projection for the cross terms
    term = DistilVPR(5, 9, **{n: (1.0 if n == name else 0.0) for n in TERMS})
    out = term(_out(s), _out(t), {})
    assert set(out) == {name}
    out[name].backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    if name.startswith("self_"):
        assert term.projection is None  # self-agent relations need no common width
    else:
        assert term.projection.weight.grad.abs().sum() > 0


def test_differing_widths_get_a_bias_free_student_projection() -> None:
    torch.manual_seed(9)
    term = build_term(
        "distilvpr", type("S", (), {"embedding_dim": 12})(), type("T", (), {"embedding_dim": 20})()
    )
    assert isinstance(term.projection, torch.nn.Linear) and term.projection.bias is None
    assert tuple(term.projection.weight.shape) == (20, 12)
    s, t = torch.randn(5, 12, requires_grad=True), torch.randn(5, 20)
    total = sum(term(_out(s), _out(t), {}).values())
    assert torch.isfinite(total)
    total.backward()
    assert s.grad.abs().sum() > 0
    # No cross-agent term on: no projection, nothing trainable left without a gradient.
    self_only = DistilVPR(12, 20, st2ss_euclidean=0, st2ss_spherical=0, st2ss_hyperbolic=0)
    assert self_only.projection is None and not list(self_only.parameters())


def test_large_embeddings_stay_finite() -> None:
    # Raw embeddings with norms ~1e3: every point is clipped to the ball's margin.
    torch.manual_seed(10)
    s = (1e3 * torch.randn(6, 5)).requires_grad_()
    out = DistilVPR(5, 5)(_out(s), _out(1e3 * torch.randn(6, 5)), {})
    total = sum(out.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_bad_parameters_are_clear_errors() -> None:
    net = type("N", (), {"embedding_dim": 4})()
    with pytest.raises(CmkdError, match="curvature"):
        build_term("distilvpr", net, net, curvature=0.0)
    with pytest.raises(CmkdError, match=">= 0"):
        build_term("distilvpr", net, net, self_angle=-1.0)
    with pytest.raises(CmkdError, match="every weight is 0"):
        build_term("distilvpr", net, net, **{name: 0.0 for name in TERMS})
    with pytest.raises(CmkdError, match="bad parameters"):
        build_term("distilvpr", net, net, rkdg_weight=10)
    with pytest.raises(CmkdError, match="geometry"):
        relation_matrix(torch.randn(3, 2), "elliptic", 0.1)
    assert "Wang et al. 2024" in LOSSES["distilvpr"].description
