"""FitNet and AT against hand-computed values, shape handling, and on real networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.losses.base import LOSSES, TermContext, build_term
from cmkd.losses.feature import FitNet, at_loss, attention_map, resize
from cmkd.models.backbones import create_network
from cmkd.models.outputs import ModelOutput


def out(x: torch.Tensor) -> ModelOutput:
    """An output whose embedding and feature map are both x (each test reads one)."""
    return ModelOutput(torch.zeros(len(x), 2), x, x)


def test_fitnet_with_identity_regressor_is_plain_mse() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    term = FitNet(4, 4).eval()
    conv, bn = term.regressor
    with torch.no_grad():
        conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    bn.eps = 0.0  # eval BN with running mean 0, var 1, affine (1, 0) is then the identity
    torch.testing.assert_close(term(out(s), out(t), {}), F.mse_loss(s, t))

    e_s, e_t = torch.randn(3, 6), torch.randn(3, 6)
    term = FitNet(6, 6, on="embedding")
    with torch.no_grad():
        term.regressor.weight.copy_(torch.eye(6))
        term.regressor.bias.zero_()
    torch.testing.assert_close(term(out(e_s), out(e_t), {}), F.mse_loss(e_s, e_t))


@pytest.mark.parametrize("teacher_size", [4, 8, 11])
def test_fitnet_across_channels_and_sizes_trains_the_regressor(teacher_size: int) -> None:
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 5, teacher_size, teacher_size)
    term = FitNet(3, 5)
    term(out(s), out(t), {}).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    assert s.grad is not None


def test_resize_pools_when_shrinking_and_interpolates_when_growing() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    grown = resize(x, (6, 6))
    torch.testing.assert_close(grown, F.interpolate(x, (6, 6), mode="bilinear"))
    assert resize(x, (4, 4)) is x


def test_at_by_hand_with_resizing() -> None:
    # Student: 3 channels of ones on 2 x 2 -> attention (1, 1, 1, 1) / 2.
    # Teacher: one channel, 2s in the top-left 2 x 2 block of a 4 x 4 map -> mean |f|^2 is 4
    # there; pooled to 2 x 2 that is (1, 0, 0, 0) after normalising.
    f_s = torch.ones(1, 3, 2, 2)
    f_t = torch.zeros(1, 1, 4, 4)
    f_t[..., :2, :2] = 2.0
    torch.testing.assert_close(attention_map(f_t, size=(2, 2)), torch.tensor([[1.0, 0, 0, 0]]))
    # Differences (-1/2, 1/2, 1/2, 1/2): mean square 1/4, times beta = 1000 (the authors' code,
    # no 1/2) gives 250.
    assert at_loss(f_s, f_t).item() == pytest.approx(250.0)
    assert at_loss(f_s, f_t, beta=2.0).item() == pytest.approx(0.5)


def test_at_pools_the_feature_map_before_the_attention_map() -> None:
    # As the reference code: pool f, then mean_c f^2. Pooling mean_c f^2 instead would differ:
    # a 2 x 2 cell holding (2, -2, 0, 0) pools to 0 here, to mean f^2 = 2 the other way.
    f_t = torch.zeros(1, 1, 4, 4)
    f_t[0, 0, 0, :2] = torch.tensor([2.0, -2.0])
    f_t[0, 0, 2:, 2:] = 1.0
    torch.testing.assert_close(attention_map(f_t, size=(2, 2)), torch.tensor([[0.0, 0, 0, 1]]))
    f_s = torch.ones(1, 3, 2, 2)
    diff = torch.tensor([0.5, 0.5, 0.5, -0.5])  # (1, 1, 1, 1) / 2 - (0, 0, 0, 1)
    assert at_loss(f_s, f_t).item() == pytest.approx(1000 * diff.pow(2).mean().item())


def test_at_is_invariant_to_channel_count_and_scale() -> None:
    torch.manual_seed(1)
    f_s, f_t = torch.randn(2, 4, 6, 6), torch.randn(2, 7, 3, 3)
    base = at_loss(f_s, f_t)
    torch.testing.assert_close(at_loss(f_s.repeat(1, 3, 1, 1), f_t), base)
    torch.testing.assert_close(at_loss(f_s, 5.0 * f_t), base)
    assert at_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-7)


# --- every term on real networks ------------------------------------------------------------


TERMS = [("fitnet", {}), ("fitnet", {"on": "embedding"}), ("at", {})]


@pytest.mark.parametrize("name,params", TERMS)
def test_term_on_real_networks(name, params, network_pair) -> None:
    (student, xs), (teacher, xt), (student_kind, teacher_kind) = network_pair
    context = TermContext(num_train=6)
    on = params.get("on", "feature_map")
    if on == "feature_map" and "mlp" in (student_kind, teacher_kind):
        with pytest.raises(CmkdError, match=f"'{name}' compares feature maps .* has none; use"):
            build_term(name, student, teacher, context, **params)
        return
    term = build_term(name, student, teacher, context, **params)
    value = term(student(xs), teacher(xt), {"index": torch.arange(6)})
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert all(p.grad is not None for p in student.features.parameters())
    assert all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert term.needs == {on}


def test_registered_descriptions_and_bad_option() -> None:
    assert "Romero et al. 2015" in LOSSES["fitnet"].description
    assert "Zagoruyko & Komodakis 2017" in LOSSES["at"].description
    with pytest.raises(CmkdError, match="'fitnet' option on must be"):
        build_term("fitnet", None, None, on="logits")
    with pytest.raises(CmkdError, match="bad parameters for distillation term 'at'"):
        build_term("at", *[create_network("small_cnn", 3, 2, widths=(4,))] * 2, beeta=1.0)
