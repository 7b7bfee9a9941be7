"""The logit terms (LSKD, logits, DKD, CTKD, MLKD, DIST) against values computed by hand or by a
direct formula on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmkd.losses import LOSSES, build_term
from cmkd.losses.logits import (
    ctkd_lambda,
    dist_parts,
    dkd_parts,
    dkd_warmup,
    kd_loss,
    logits_mse,
    mlkd_parts,
    zscore,
)
from cmkd.models.outputs import ModelOutput

LOGIT_TERMS = ["kd", "lskd", "logits", "dkd", "ctkd", "mlkd", "dist"]


def out(logits: torch.Tensor) -> ModelOutput:
    return ModelOutput(logits, logits)


def total(value) -> torch.Tensor:
    return sum(value.values()) if isinstance(value, dict) else value


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    zt = 2 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    return zs, zt, torch.tensor([0, 1, 2, 3, 4, 0])


# --- LSKD ---------------------------------------------------------------------------------------


def test_zscore_rows_have_mean_0_and_unbiased_std_1(pair) -> None:
    z = zscore(pair[1])
    torch.testing.assert_close(z.mean(1), torch.zeros(6, dtype=z.dtype))
    torch.testing.assert_close(z.std(1), torch.ones(6, dtype=z.dtype))


def test_lskd_is_kd_on_zscored_logits_and_ignores_shift_and_scale(pair) -> None:
    zs, zt, _ = pair
    term = build_term("lskd", None, None)
    assert term.standardize and term.temperature == 2.0
    value = term(out(zs), out(zt), {})
    torch.testing.assert_close(value, kd_loss(zscore(zs), zscore(zt), 2.0))
    # Each sample's logits shifted and scaled by its own positive factors: same loss.
    shift, scale = torch.randn(6, 1, dtype=zs.dtype), torch.rand(6, 1, dtype=zs.dtype) + 0.5
    torch.testing.assert_close(term(out(3 * scale * zs + shift), out(zt - shift), {}), value)
    assert "standardize: true" in LOSSES["lskd"].description


def test_standardize_is_an_option_of_every_logit_term(pair) -> None:
    zs, zt, label = pair
    for name in LOGIT_TERMS:
        if name == "mlkd":  # standardises its instance part only: test_mlkd_standardize_...
            continue
        plain = build_term(name, None, None)
        std = build_term(name, None, None, standardize=True)
        batch = {"label": label}
        a = total(std(out(zs), out(zt), batch))
        b = total(plain(out(zscore(zs)), out(zscore(zt)), batch))
        torch.testing.assert_close(a, b, msg=name)
    assert build_term("kd", None, None).standardize is False


# --- logits -------------------------------------------------------------------------------------


def test_logits_mse_by_hand() -> None:
    zs = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    zt = torch.tensor([[0.0, 4.0], [3.0, 0.0]])
    # squared errors 1, 4, 9, 0 -> mean 3.5
    assert logits_mse(zs, zt).item() == pytest.approx(3.5)
    assert build_term("logits", None, None)(out(zs), out(zt), {}).item() == pytest.approx(3.5)


# --- DKD ----------------------------------------------------------------------------------------


def test_dkd_parts_from_explicit_probabilities(pair) -> None:
    zs, zt, label = pair
    t = 2.0
    tckd, nckd = dkd_parts(zs, zt, label, t)
    ps, pt = (zs / t).softmax(1).numpy(), (zt / t).softmax(1).numpy()
    want_t, want_n = 0.0, 0.0
    for i, y in enumerate(label.tolist()):
        bs = np.array([ps[i, y], 1 - ps[i, y]])
        bt = np.array([pt[i, y], 1 - pt[i, y]])
        want_t += (bt * np.log(bt / bs)).sum()
        qs, qt = np.delete(ps[i], y), np.delete(pt[i], y)
        qs, qt = qs / qs.sum(), qt / qt.sum()
        want_n += (qt * np.log(qt / qs)).sum()
    assert tckd.item() == pytest.approx(t**2 * want_t / 6, rel=1e-9)
    assert nckd.item() == pytest.approx(t**2 * want_n / 6, rel=1e-9)


def test_dkd_decomposes_kd_per_sample(pair) -> None:
    # KD = TCKD + (1 - p_T,target) NCKD, sample by sample (Zhao et al. 2022, eq. 6).
    zs, zt, label = pair
    for i in range(6):
        s, t, y = zs[i : i + 1], zt[i : i + 1], label[i : i + 1]
        tckd, nckd = dkd_parts(s, t, y, 3.0)
        pt_target = (t / 3.0).softmax(1)[0, y].item()
        torch.testing.assert_close(tckd + (1 - pt_target) * nckd, kd_loss(s, t, 3.0))


def test_dkd_term_weights_and_warmup(pair) -> None:
    zs, zt, label = pair
    assert [dkd_warmup(e, 20) for e in (0, 10, 19, 20, 40)] == [0.05, 0.55, 1.0, 1.0, 1.0]
    term = build_term("dkd", None, None, alpha=2.0, beta=3.0)
    tckd, nckd = dkd_parts(zs, zt, label, 4.0)
    term.on_epoch_start(10, 100)
    torch.testing.assert_close(
        term(out(zs), out(zt), {"label": label}), 0.55 * (2 * tckd + 3 * nckd)
    )
    term.on_epoch_start(40, 100)
    torch.testing.assert_close(term(out(zs), out(zt), {"label": label}), 2 * tckd + 3 * nckd)


# --- CTKD ---------------------------------------------------------------------------------------


def test_ctkd_temperature_at_init_and_reversal_ramp() -> None:
    term = build_term("ctkd", None, None)
    assert term.temperature == pytest.approx(1 + 20 / (1 + math.exp(-1.0)))
    params = list(term.parameters())
    assert len(params) == 1 and params[0] is term.t
    ramp = (1 - math.cos(math.pi / 10)) / 2
    assert term.reversal == pytest.approx(ramp)
    for epoch, want in [(0, ramp), (4, 0.5), (9, 1.0), (30, 1.0)]:
        term.on_epoch_start(epoch, 50)
        assert term.reversal == pytest.approx(want)
    assert ctkd_lambda(4, 10, 0.2, 0.6) == pytest.approx(0.4)


def test_ctkd_step_moves_the_temperature_to_increase_the_loss(pair) -> None:
    zs, zt, _ = (p.float() for p in pair)
    term = build_term("ctkd", None, None)
    term.on_epoch_start(20, 50)  # full reversal
    loss_at = lambda tt: kd_loss(zs, zt, 1 + 20 * torch.sigmoid(tt)).item()  # noqa: E731
    before_t, before = term.t.detach().clone(), loss_at(term.t.detach())
    opt = torch.optim.SGD(term.parameters(), lr=0.5)
    term(out(zs), out(zt), {}).backward()
    opt.step()
    assert term.t.item() != before_t.item()
    assert loss_at(term.t.detach()) > before
    # The gradient on t is exactly -lambda times the plain gradient.
    plain = torch.tensor(before_t.item(), requires_grad=True)
    kd_loss(zs, zt, 1 + 20 * torch.sigmoid(plain)).backward()
    term.t.grad = None
    term.on_epoch_start(4, 50)
    term.t.data.copy_(before_t)
    term(out(zs), out(zt), {}).backward()
    torch.testing.assert_close(term.t.grad, -0.5 * plain.grad)


# --- MLKD ---------------------------------------------------------------------------------------


def test_mlkd_is_zero_for_identical_logits(pair) -> None:
    parts = mlkd_parts(pair[1], pair[1], [3.0])
    for name, v in parts.items():
        assert v.item() == pytest.approx(0.0, abs=1e-12), name


def test_mlkd_parts_against_direct_formulas(pair) -> None:
    zs, zt, _ = pair
    temps = [2.0, 4.0]
    parts = build_term("mlkd", None, None, temperatures=temps)(out(zs), out(zt), {})
    assert set(parts) == {"instance", "batch", "class"}
    want_instance = sum(kd_loss(zs, zt, t) for t in temps) / 2
    torch.testing.assert_close(parts["instance"], want_instance)
    batch, klass = 0.0, 0.0
    for t in temps:
        ps, pt = (zs / t).softmax(1).numpy(), (zt / t).softmax(1).numpy()
        batch += ((pt @ pt.T - ps @ ps.T) ** 2).sum() / 6  # B x B, over the batch size
        klass += ((pt.T @ pt - ps.T @ ps) ** 2).sum() / 5  # K x K, over the class count
    assert parts["batch"].item() == pytest.approx(batch / 2, rel=1e-9)
    assert parts["class"].item() == pytest.approx(klass / 2, rel=1e-9)


def test_mlkd_standardize_z_scores_only_the_instance_part(pair) -> None:
    # As the LSKD authors' MLKD: logit_stand reaches its kd_loss, never bc_loss or cc_loss.
    zs, zt, _ = pair
    temps = [2.0, 3.0]
    std = build_term("mlkd", None, None, temperatures=temps, standardize=True)
    parts = std(out(zs), out(zt), {})
    raw = mlkd_parts(zs, zt, temps)
    on_z = mlkd_parts(zscore(zs), zscore(zt), temps)
    torch.testing.assert_close(parts["instance"], on_z["instance"])
    torch.testing.assert_close(parts["batch"], raw["batch"])
    torch.testing.assert_close(parts["class"], raw["class"])
    assert (parts["instance"] - raw["instance"]).abs() > 1e-3


# --- DIST ---------------------------------------------------------------------------------------


def test_dist_against_numpy_pearson(pair) -> None:
    zs, zt, _ = pair
    tau = 2.0
    inter, intra = dist_parts(zs, zt, tau)
    ps, pt = (zs / tau).softmax(1).numpy(), (zt / tau).softmax(1).numpy()
    r_inter = np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(6)])
    r_intra = np.mean([np.corrcoef(ps[:, k], pt[:, k])[0, 1] for k in range(5)])
    assert inter.item() == pytest.approx(tau**2 * (1 - r_inter), rel=1e-6)
    assert intra.item() == pytest.approx(tau**2 * (1 - r_intra), rel=1e-6)
    term = build_term("dist", None, None, beta=2.0, gamma=3.0, tau=tau)
    parts = term(out(zs), out(zt), {})
    torch.testing.assert_close(parts["inter"], 2 * inter)
    torch.testing.assert_close(parts["intra"], 3 * intra)


def test_dist_zero_for_equal_logits_shift_invariant_not_scale_invariant(pair) -> None:
    zs, zt, _ = pair
    inter, intra = dist_parts(zt, zt)
    assert inter.item() == pytest.approx(0.0, abs=1e-6)
    assert intra.item() == pytest.approx(0.0, abs=1e-6)  # eps in the denominator
    # Softmax ignores a per-sample shift of the logits, so DIST does too ...
    shifted = dist_parts(zs + torch.randn(6, 1, dtype=zs.dtype), zt)
    torch.testing.assert_close(shifted, dist_parts(zs, zt))
    # ... but scaling the logits changes the softened distribution, and the loss.
    assert abs(dist_parts(3 * zs, zt)[0].item() - dist_parts(zs, zt)[0].item()) > 1e-3


# --- every logit term ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOGIT_TERMS)
@pytest.mark.parametrize("standardize", [False, True])
def test_finite_student_gradient_and_no_teacher_gradient(name: str, standardize: bool) -> None:
    torch.manual_seed(1)
    zs = torch.randn(8, 10, requires_grad=True)
    zt = (3 * torch.randn(8, 10)).requires_grad_()
    term = build_term(name, None, None, standardize=standardize)
    term.on_epoch_start(3, 10)
    value = total(term(out(zs), out(zt), {"label": torch.arange(8)}))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
    assert zt.grad is None
    description = LOSSES[name].description
    assert "\n" not in description and description.rstrip().endswith(")")
