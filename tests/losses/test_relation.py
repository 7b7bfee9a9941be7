"""RKD, PKT and SP against hand-computed values and direct formulas, and on real networks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.losses.base import LOSSES, TermContext, build_term
from cmkd.losses.relation import pkt_loss, rkd_angle_loss, rkd_distance_loss, sp_loss
from cmkd.models.outputs import ModelOutput

# Student: a right triangle; teacher: three collinear points.
RIGHT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_distance_three_points_by_hand() -> None:
    # Student distances (1, 1, sqrt2) / mean (2 + sqrt2)/3; teacher (1, 2, 1) / mean 4/3.
    a, c = 3 / (2 + math.sqrt(2)), 3 * math.sqrt(2) / (2 + math.sqrt(2))
    pairs = [a - 0.75, a - 1.5, c - 0.75]  # pairs (0,1), (0,2), (1,2)
    expected = 2 * sum(huber(x) for x in pairs) / 9  # each pair twice in the 3 x 3 matrix
    assert rkd_distance_loss(RIGHT, LINE).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_three_points_by_hand() -> None:
    # Only cos(angle at i between j, k) with j != k differs; each appears twice in 3 x 3 x 3.
    r = 1 / math.sqrt(2)
    diffs = [0.0 - 1.0, r - (-1.0), r - 1.0]  # angles at vertex 0, 1, 2: student - teacher
    expected = 2 * sum(huber(x) for x in diffs) / 27
    assert rkd_angle_loss(RIGHT, LINE).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_invariances_and_zero_for_identical() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(7, 5), torch.randn(7, 9)
    dist, angle = rkd_distance_loss(s, t), rkd_angle_loss(s, t)
    assert dist.item() > 0 and angle.item() > 0
    for c in (0.1, 3.0):
        torch.testing.assert_close(rkd_distance_loss(c * s, t), dist)
        torch.testing.assert_close(rkd_distance_loss(s, c * t), dist)
        torch.testing.assert_close(rkd_angle_loss(c * s + 2.0, t), angle)
        torch.testing.assert_close(rkd_angle_loss(s, c * t - 1.5), angle)
    assert rkd_distance_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_term_applies_the_paper_weights() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    out = build_term("rkd", None, None)(ModelOutput(s, s), ModelOutput(t, t), {})
    torch.testing.assert_close(out["distance"], 25 * rkd_distance_loss(s, t))
    torch.testing.assert_close(out["angle"], 50 * rkd_angle_loss(s, t))


def pkt_loop(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> float:
    b = len(s)

    def conditional(e: torch.Tensor) -> list[list[float]]:
        cos = [[float(F.cosine_similarity(e[i], e[j], dim=0)) for j in range(b)] for i in range(b)]
        k = [[(c + 1) / 2 for c in row] for row in cos]
        return [[k[i][j] / sum(k[i]) for j in range(b)] for i in range(b)]

    p_s, p_t = conditional(s), conditional(t)
    total = sum(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
        for i in range(b)
        for j in range(b)
    )
    return total / b**2


def test_pkt_matches_a_loop_and_is_zero_for_identical() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(5, 3), torch.randn(5, 8)
    assert pkt_loss(s, t).item() == pytest.approx(pkt_loop(s, t), rel=1e-4)
    assert pkt_loss(s, t).item() > 0
    assert pkt_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


def sp_direct(s: torch.Tensor, t: torch.Tensor) -> float:
    b = len(s)

    def gram(f: torch.Tensor) -> list[list[float]]:
        f = f.reshape(b, -1)
        g = [[float((f[i] * f[j]).sum()) for j in range(b)] for i in range(b)]
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in g]

    gs, gt = gram(s), gram(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_matches_the_formula_for_any_widths_and_maps() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(4, 5), torch.randn(4, 9)
    assert sp_loss(s, t).item() == pytest.approx(sp_direct(s, t), rel=1e-5)
    # Repeating every feature scales F F^T, which the row normalisation removes.
    torch.testing.assert_close(sp_loss(s.repeat(1, 3), t), sp_loss(s, t))
    ms, mt = torch.randn(4, 3, 4, 4), torch.randn(4, 7, 2, 2)
    assert sp_loss(ms, mt).item() == pytest.approx(sp_direct(ms, mt), rel=1e-5)
    assert sp_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


# --- every term on real networks ------------------------------------------------------------


TERMS = [("rkd", {}), ("pkt", {}), ("sp", {}), ("sp", {"on": "feature_map"})]


@pytest.mark.parametrize("name,params", TERMS)
def test_term_on_real_networks(name, params, network_pair) -> None:
    (student, xs), (teacher, xt), (student_kind, teacher_kind) = network_pair
    context = TermContext(num_train=6)
    if params.get("on") == "feature_map" and "mlp" in (student_kind, teacher_kind):
        with pytest.raises(CmkdError, match="has none; use sp with on: embedding"):
            build_term(name, student, teacher, context, **params)
        return
    term = build_term(name, student, teacher, context, **params)
    value = term(student(xs), teacher(xt), {"index": torch.arange(6)})
    total = sum(value.values()) if isinstance(value, dict) else value
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in student.features.parameters())
    assert all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert term.needs == {params.get("on", "embedding")}


def test_registered_descriptions_and_bad_option() -> None:
    assert "Park et al. 2019" in LOSSES["rkd"].description
    assert "Passalis & Tefas 2018" in LOSSES["pkt"].description
    assert "Tung & Mori 2019" in LOSSES["sp"].description
    with pytest.raises(CmkdError, match="'sp' option on must be"):
        build_term("sp", None, None, on="logits")
