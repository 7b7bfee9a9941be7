"""KD against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.losses import LOSSES, build_term
from cmkd.losses.logits import kd_loss
from cmkd.models.outputs import ModelOutput


def test_kd_matches_hand_computed_kl_at_t1() -> None:
    # p_T = (3/4, 1/4), p_S = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2).
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(zs, zt, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_temperature_and_t2_factor() -> None:
    # At T = 2 the teacher's (ln 3, 0) softens to p = (sqrt3, 1) / (sqrt3 + 1).
    zs = torch.tensor([[0.0, 0.0]])
    zt = torch.tensor([[math.log(3.0), 0.0]])
    p = torch.tensor([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1.0)
    kl = float((p * torch.log(2 * p)).sum())
    assert kd_loss(zs, zt, 2.0, scale_by_t2=False).item() == pytest.approx(kl, rel=1e-5)
    assert kd_loss(zs, zt, 2.0, scale_by_t2=True).item() == pytest.approx(4 * kl, rel=1e-5)


def test_kd_is_a_batch_mean_and_zero_for_equal_logits() -> None:
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 7), torch.randn(5, 7)
    per_sample = torch.stack([kd_loss(zs[i : i + 1], zt[i : i + 1], 3.0) for i in range(5)])
    torch.testing.assert_close(kd_loss(zs, zt, 3.0), per_sample.mean())
    assert kd_loss(zt, zt, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_term_through_the_registry() -> None:
    term = build_term("kd", None, None, temperature=2.0)
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    value = term(ModelOutput(zs, zs), ModelOutput(zt, zt), {})
    torch.testing.assert_close(value, kd_loss(zs, zt, 2.0))
    assert term.needs == frozenset({"logits"})
    assert "Hinton" in LOSSES["kd"].description


def test_unknown_term_and_bad_parameter_are_user_errors() -> None:
    with pytest.raises(CmkdError, match="unknown distillation term 'nope'"):
        build_term("nope", None, None)
    with pytest.raises(CmkdError, match="bad parameters for distillation term 'kd'"):
        build_term("kd", None, None, temprature=2.0)
