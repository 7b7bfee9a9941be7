"""C2KD selection against direct reference formulas (scipy's Kendall tau, KD on kept rows)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import kendalltau

from cmkd.errors import CmkdError
from cmkd.losses.base import LOSSES, build_term
from cmkd.losses.logits import kd_loss, zscore
from cmkd.losses.selection import C2KD, kendall_tau, select_by_tau
from cmkd.models.outputs import ModelOutput


def _scipy_tau(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [kendalltau(x.numpy(), y.numpy()).statistic for x, y in zip(a, b, strict=True)]


def _out(logits: torch.Tensor) -> ModelOutput:
    return ModelOutput(logits, logits)


def test_tau_matches_scipy_without_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 10, generator=g), torch.randn(32, 10, generator=g)
    torch.testing.assert_close(kendall_tau(a, b).double(), torch.tensor(_scipy_tau(a, b)).double())


def test_tau_matches_scipy_tau_b_with_ties() -> None:
    # Small integer logits: many ties within each row, in both vectors.
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (64, 12), generator=g).float()
    b = torch.randint(0, 3, (64, 12), generator=g).float()
    expected = torch.tensor(_scipy_tau(a, b)).double()
    assert not torch.isnan(expected).any()
    torch.testing.assert_close(kendall_tau(a, b).double(), expected)


def test_tau_chunking_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    whole = kendall_tau(a, b)
    monkeypatch.setattr("cmkd.losses.selection._CHUNK_ELEMENTS", 2 * 36)  # 2 rows per chunk
    torch.testing.assert_close(kendall_tau(a, b), whole)


def test_tau_extremes_and_constant_row() -> None:
    a = torch.tensor([[0.1, 2.0, -1.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 3.0, 0.0, 9.0], [0.0, 1.0, 2.0, 3.0]])  # same ranking as a[0]
    tau = kendall_tau(a, b)
    assert tau[0].item() == pytest.approx(1.0)
    assert math.isnan(tau[1].item())  # constant row: undefined, as in scipy
    assert kendall_tau(a[:1], -b[:1]).item() == pytest.approx(-1.0)


def test_selection_rules_on_a_hand_built_batch() -> None:
    tau = torch.tensor([0.5, 0.0, -0.2, 0.9, float("nan"), 0.1])
    # Reference rule: tau > 0, strictly; NaN never kept.
    assert select_by_tau(tau).tolist() == [True, False, False, True, False, True]
    assert select_by_tau(tau, threshold=0.3).tolist() == [True, False, False, True, False, False]
    # Ratio rule: top ceil(r * 6) (3, 2, 1); NaN ranks last.
    assert select_by_tau(tau, keep_ratio=0.5).tolist() == [True, False, False, True, False, True]
    assert select_by_tau(tau, keep_ratio=0.2).tolist() == [True, False, False, True, False, False]
    assert select_by_tau(tau, keep_ratio=0.1).tolist() == [False, False, False, True, False, False]
    # Ties at the cut-off are all kept.
    tied = torch.tensor([0.4, 0.4, 0.4, -1.0])
    assert select_by_tau(tied, keep_ratio=0.25).tolist() == [True, True, True, False]


def test_term_keeps_the_agreeing_samples_and_distils_only_those() -> None:
    teacher = torch.tensor(
        [
            [3.0, 1.0, 0.0, -1.0],  # student agrees exactly: tau = 1
            [3.0, 1.0, 0.0, -1.0],  # student reversed: tau = -1
            [0.0, 2.0, 1.0, 4.0],  # one swap out of 6 pairs: tau = 2/3
            [1.0, 0.0, 2.0, 3.0],  # tau = 0: dropped (strict)
        ]
    )
    student = torch.tensor(
        [
            [1.0, 0.5, 0.2, 0.1],
            [-1.0, 0.0, 1.0, 3.0],
            [0.0, 1.5, 2.0, 4.0],
            [0.0, 2.0, 3.0, 1.0],
        ],
        requires_grad=True,
    )
    tau = kendall_tau(teacher, student)
    torch.testing.assert_close(tau, torch.tensor([1.0, -1.0, 2 / 3, 0.0]))
    term = build_term("c2kd", None, None)
    loss = term(_out(student), _out(teacher), {})
    kept = torch.tensor([0, 2])
    torch.testing.assert_close(loss, kd_loss(student[kept], teacher[kept], 4.0))
    assert term.last_kept_fraction.item() == pytest.approx(0.5)
    assert not term.last_kept_fraction.requires_grad


def test_loss_equals_kd_on_kept_rows_with_options() -> None:
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(16, 7, generator=g), torch.randn(16, 7, generator=g)
    term = C2KD(temperature=2.0, scale_by_t2=False, keep_ratio=0.25, standardize=True)
    keep = select_by_tau(kendall_tau(zt, zs), keep_ratio=0.25)
    assert 4 <= keep.sum().item() < 16  # ceil(0.25 * 16), more on ties at the cut-off
    expected = kd_loss(zscore(zs[keep]), zscore(zt[keep]), 2.0, scale_by_t2=False)
    torch.testing.assert_close(term(_out(zs), _out(zt), {}), expected)


def test_nothing_kept_gives_zero_attached_to_the_student() -> None:
    zt = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    zs = (-zt).clone().requires_grad_(True)  # reversed rankings: tau = -1 everywhere
    term = C2KD()
    loss = term(_out(zs), _out(zt), {})
    assert loss.item() == 0.0 and term.last_kept_fraction.item() == 0.0
    loss.backward()
    torch.testing.assert_close(zs.grad, torch.zeros_like(zs))


def test_teacher_gets_no_gradient_and_student_does() -> None:
    g = torch.Generator().manual_seed(4)
    zt = torch.randn(8, 5, generator=g)
    zs = (zt + 0.3 * torch.randn(8, 5, generator=g)).requires_grad_(True)
    zt.requires_grad_(True)
    C2KD(keep_ratio=0.5)(_out(zs), _out(zt), {}).backward()
    assert zt.grad is None
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_registry_entry_and_bad_parameters() -> None:
    assert "Huo" in LOSSES["c2kd"].description and "2024" in LOSSES["c2kd"].description
    assert build_term("c2kd", None, None).needs == frozenset({"logits"})
    with pytest.raises(CmkdError, match="keep_ratio"):
        build_term("c2kd", None, None, keep_ratio=0.0)
    with pytest.raises(CmkdError, match="threshold"):
        build_term("c2kd", None, None, threshold=1.0)
    with pytest.raises(CmkdError, match="bad parameters"):
        build_term("c2kd", None, None, keep=0.5)
