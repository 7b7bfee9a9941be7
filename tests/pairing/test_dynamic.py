"""DynM: the chunked matrix KL against a per-pair loop, the class constraint, the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.pairing.dynamic import (
    AUTHORS_SCHEDULES,
    curriculum_epochs,
    min_kl_match,
    schedule_from,
)


def _logits(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3


def _loop_kl(zs: torch.Tensor, zt: torch.Tensor, t: float) -> torch.Tensor:
    """The authors' way: one kl_div per (student, teacher) pair."""
    out = torch.empty(len(zs), len(zt))
    for i in range(len(zs)):
        for j in range(len(zt)):
            out[i, j] = F.kl_div(
                F.log_softmax(zs[i] / t, dim=0), F.softmax(zt[j] / t, dim=0), reduction="sum"
            )
    return out


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 4096])
def test_chunked_matrix_kl_equals_per_pair_loop(chunk_size: int) -> None:
    k, t = 5, 3.0
    zs, zt = _logits(23, k, 0), _logits(17, k, 1)
    ys = torch.arange(23) % 3
    yt = torch.arange(17) % 3
    match = min_kl_match(zs, zt, ys, yt, temperature=t, chunk_size=chunk_size)
    kl = _loop_kl(zs, zt, t)
    kl[ys[:, None] != yt[None, :]] = float("inf")
    best = kl.min(dim=1).values
    assert torch.equal(yt[match], ys)
    torch.testing.assert_close(kl[torch.arange(23), match], best, atol=1e-5, rtol=1e-5)
    assert torch.equal(match, kl.argmin(dim=1))


def test_matches_the_student_it_was_cloned_from() -> None:
    """A teacher whose logits equal the student's has KL 0: it must be chosen."""
    zt = _logits(40, 6, 2)
    yt = np.arange(40) % 4
    rows = torch.tensor([3, 17, 22, 39])
    match = min_kl_match(zt[rows], zt, yt[rows.numpy()], yt, chunk_size=3)
    assert torch.equal(match, rows)


def test_never_crosses_classes_even_when_another_class_fits_better() -> None:
    zt = torch.tensor([[9.0, 0, 0], [0, 0, 9.0]])
    yt = np.array([0, 1])
    zs = torch.tensor([[0, 0, 9.0]])  # looks like teacher 1 but is class 0
    assert min_kl_match(zs, zt, np.array([0]), yt).tolist() == [0]


def test_class_without_teacher_is_named() -> None:
    with pytest.raises(CmkdError, match="'Forest'.*no teacher sample"):
        min_kl_match(
            _logits(4, 3, 0), _logits(2, 3, 1), [0, 1, 2, 2], [0, 1], classes=["A", "B", "Forest"]
        )


def test_curriculum_reproduces_authors_gaps() -> None:
    assert curriculum_epochs(30, 30, 5, 200) == [30, 60, 95, 135, 180]
    assert curriculum_epochs(30, 30, 5, 200)[:4] == AUTHORS_SCHEDULES["S2S_EU"]
    assert curriculum_epochs(45, 15, 5, 200)[:5] == AUTHORS_SCHEDULES["S2S_CN"]
    assert curriculum_epochs(15, 30, 5, 200) == AUTHORS_SCHEDULES["M2S_GL"]
    assert curriculum_epochs(30, 30, 5, 30) == []
    assert curriculum_epochs(0, 10, 0, 35) == [0, 10, 20, 30]


def test_schedule_from_list_mapping_or_config() -> None:
    class Cfg:
        schedule = None
        e0, de, emu = 30, 30, 5

    assert schedule_from([135, 30, 95, 60], 200) == [30, 60, 95, 135]
    assert schedule_from({"e0": 30, "de": 30, "emu": 5}, 200) == [30, 60, 95, 135, 180]
    assert schedule_from(Cfg(), 100) == [30, 60, 95]
    Cfg.schedule = [30, 60, 95, 135]
    assert schedule_from(Cfg(), 200) == AUTHORS_SCHEDULES["S2S_EU"]
    with pytest.raises(CmkdError, match="epoch 135 is outside"):
        schedule_from(Cfg(), 100)
    with pytest.raises(CmkdError, match="de >= 1"):
        curriculum_epochs(0, 0, 0, 10)
