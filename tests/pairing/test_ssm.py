"""SSM: the CLIP-style loss, the matcher, and same-class top-1 matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cmkd.config import RunConfig
from cmkd.data.samples import Samples
from cmkd.data.sources.eurosat import load_eurosat_ms, load_eurosat_rgb
from cmkd.errors import CmkdError
from cmkd.pairing.pseudo_views import get_pseudo_view
from cmkd.pairing.ssm import (
    ProjectionHead,
    SSMMatcher,
    match_top1,
    ssm_loss,
    ssm_pairs,
    train_matcher,
)

QUIET = RunConfig(accelerator="cpu", progress_bar=False)


def _direct_loss(e_a: np.ndarray, e_b: np.ndarray, tau: float) -> float:
    """The definition, written out with loops."""
    a = e_a / np.linalg.norm(e_a, axis=1, keepdims=True)
    b = e_b / np.linalg.norm(e_b, axis=1, keepdims=True)
    n = len(a)
    logits = np.array([[b[i] @ a[j] / tau for j in range(n)] for i in range(n)])
    sim = np.array([[(a[i] @ a[j] + b[i] @ b[j]) / 2 * tau for j in range(n)] for i in range(n)])
    targets = np.exp(sim) / np.exp(sim).sum(axis=1, keepdims=True)

    def log_softmax(row: np.ndarray) -> np.ndarray:
        return row - np.log(np.exp(row).sum())

    rows = [-(targets[i] * log_softmax(logits[i])).sum() for i in range(n)]
    cols = [-(targets[:, j] * log_softmax(logits[:, j])).sum() for j in range(n)]
    return float(np.mean([(r + c) / 2 for r, c in zip(rows, cols, strict=True)]))


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_ssm_loss_matches_definition(tau: float) -> None:
    rng = np.random.default_rng(0)
    e_a, e_b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = ssm_loss(torch.tensor(e_a), torch.tensor(e_b), tau=tau, normalize=True)
    assert got.item() == pytest.approx(_direct_loss(e_a, e_b, tau), rel=1e-9)


def test_ssm_loss_is_symmetric_soft_cross_entropy() -> None:
    """The default (the authors' loss): symmetric soft CE on raw dot products."""
    g = torch.Generator().manual_seed(1)
    e_a, e_b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    logits = e_b @ e_a.T
    targets = torch.softmax((e_a @ e_a.T + e_b @ e_b.T) / 2, dim=-1)
    expected = (
        torch.nn.functional.cross_entropy(logits, targets)
        + torch.nn.functional.cross_entropy(logits.T, targets.T)
    ) / 2
    assert ssm_loss(e_a, e_b).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ssm_loss_lower_for_aligned_pairs() -> None:
    g = torch.Generator().manual_seed(2)
    e_a = torch.randn(16, 8, generator=g)
    e_b = e_a + 0.05 * torch.randn(16, 8, generator=g)
    shuffled = e_b[torch.randperm(16, generator=g)]
    assert ssm_loss(e_a, e_b) < ssm_loss(e_a, shuffled)
    assert ssm_loss(e_a, e_b, normalize=True) < ssm_loss(e_a, shuffled, normalize=True)


def test_projection_head_and_matcher_shapes() -> None:
    head = ProjectionHead(128, 256)
    assert head(torch.randn(4, 128)).shape == (4, 256)
    matcher = SSMMatcher(13, 3, backbone="small_cnn", widths=(4, 8))
    e_a, e_b = matcher(torch.randn(2, 13, 16, 16), torch.randn(2, 3, 16, 16))
    assert e_a.shape == e_b.shape == (2, 256)


class _Identity(nn.Module):
    """A matcher whose embeddings are the inputs themselves: hand-built embeddings."""

    def embed_a(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def embed_b(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_match_top1_stays_in_class_and_picks_argmax_cosine() -> None:
    rng = np.random.default_rng(0)
    a_x = rng.normal(size=(30, 6)).astype(np.float32)
    a_y = np.repeat([0, 1, 2], 10)
    b_x = rng.normal(size=(40, 6)).astype(np.float32)
    b_y = rng.integers(0, 3, size=40)
    b_x[0], b_y[0] = 3 * a_x[25], 0  # its twin is in class 2: must not be picked
    table, scores = match_top1(_Identity(), a_x, a_y, b_x, b_y, ["x", "y", "z"], batch_size=7)
    assert table.dtype == np.int64 and scores.shape == (40,)
    np.testing.assert_array_equal(a_y[table], b_y)
    a_n = a_x / np.linalg.norm(a_x, axis=1, keepdims=True)
    b_n = b_x / np.linalg.norm(b_x, axis=1, keepdims=True)
    for i in range(40):
        rows = np.flatnonzero(a_y == b_y[i])
        cos = a_n[rows] @ b_n[i]
        assert table[i] == rows[cos.argmax()]
        assert scores[i] == pytest.approx(cos.max(), abs=1e-5)
    assert table[0] != 25


def test_ssm_pairs_is_a_pair_list_by_id() -> None:
    a_x = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    b_x = np.array([[0, 2], [3, 0]], np.float32)
    teacher = Samples(a_x, np.array([0, 0, 1]), np.array(["t0", "t1", "t2"]), ["p", "q"])
    student = Samples(b_x, np.array([0, 0]), np.array(["s0", "s1"]), ["p", "q"])
    pairs = ssm_pairs(_Identity(), teacher, student)
    assert pairs.method == "ssm"
    assert pairs.teacher_ids.tolist() == ["t1", "t0"]
    np.testing.assert_allclose(pairs.scores, [1.0, 1.0], atol=1e-6)


def test_match_top1_missing_class_is_named() -> None:
    a_x, b_x = np.ones((2, 3), np.float32), np.ones((3, 3), np.float32)
    with pytest.raises(CmkdError, match="'River'"):
        match_top1(_Identity(), a_x, [0, 0], b_x, [0, 1, 0], ["Forest", "River"])


def test_train_and_match_on_real_eurosat(data_root: Path) -> None:
    ms = load_eurosat_ms(data_root)
    keep = np.concatenate([np.flatnonzero(ms.y == c)[:10] for c in range(len(ms.classes))])
    ms = ms.subset(keep)
    rgb = load_eurosat_rgb(data_root, subset="unpaired", per_class_limit=10)
    assert rgb.classes == ms.classes
    view = get_pseudo_view("eurosat_ms_to_rgb").fit(ms.x, rgb.x)
    matcher = train_matcher(
        ms.x, view, backbone="small_cnn", widths=(8, 16), epochs=2, batch_size=32, run=QUIET
    )
    assert not matcher.training
    table, scores = match_top1(matcher, ms.x, ms.y, rgb.x, rgb.y, rgb.classes)
    assert table.shape == (len(rgb),) and table.min() >= 0 and table.max() < len(ms)
    np.testing.assert_array_equal(ms.y[table], rgb.y)
    assert np.all(np.abs(scores) <= 1 + 1e-5)
    # Seeded: the same run gives the same matcher.
    again = train_matcher(
        ms.x, view, backbone="small_cnn", widths=(8, 16), epochs=2, batch_size=32, run=QUIET
    )
    np.testing.assert_array_equal(
        match_top1(again, ms.x, ms.y, rgb.x, rgb.y, rgb.classes)[0], table
    )
