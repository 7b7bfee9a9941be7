"""Quality weights (mean 1, each source by hand) and the seeded teacher-input corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd.data.corruption import corrupt_inputs
from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.methods.quality import auroc, batch_weights, teacher_quality
from cmkd.models.backbones import create_network
from cmkd.models.model import StandardizedNetwork


@pytest.mark.parametrize("source", ["confidence", "dropout", "norm"])
def test_weights_average_one_and_are_positive(source):
    q = torch.rand(37, generator=torch.Generator().manual_seed(1)) * 3 + 0.01
    w = batch_weights(q, source, power=2.0)
    assert torch.allclose(w.mean(), torch.tensor(1.0), atol=1e-6)
    assert bool((w > 0).all())


def test_confidence_weights_by_hand():
    q = torch.tensor([0.9, 0.6, 0.3])
    assert torch.allclose(batch_weights(q, "confidence"), q / 0.6)
    assert torch.allclose(batch_weights(q, "confidence", power=2.0), q**2 / (q**2).mean())
    assert torch.allclose(batch_weights(torch.full((4,), 0.2), "dropout"), torch.ones(4))


def test_norm_weights_are_standardised_clipped_and_scale_free():
    norms = torch.tensor([1.0, 2.0, 3.0, 100.0])
    w = batch_weights(norms, "norm", norm_clip=1.0, norm_strength=0.5)
    z = ((norms - norms.mean()) / norms.std(unbiased=False)).clamp(-1, 1)
    q = 1 + 0.5 * z
    assert torch.allclose(w, q / q.mean())
    assert float(w.max() / w.min()) <= 1.5 / 0.5 + 1e-6  # the clip bounds the ratio
    assert torch.allclose(batch_weights(norms * 7, "norm", norm_clip=1.0), w)  # scale-free
    assert torch.allclose(batch_weights(torch.tensor([5.0]), "norm"), torch.ones(1))
    with pytest.raises(CmkdError, match="source"):
        batch_weights(norms, "entropy")


def test_auroc_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([True, False, True, False])
    # positives 0.1, 0.35 vs negatives 0.4, 0.8: every positive ranks below -> 0
    assert auroc(scores, positive) == 0.0
    assert auroc(-scores, positive) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(auroc(scores, np.zeros(4, bool)))


def _teacher():
    torch.manual_seed(0)
    net = create_network("mlp", 8, 3, hidden=(16,))
    return StandardizedNetwork(net, Standardize.identity(8)).eval()


def test_teacher_quality_sources():
    teacher = _teacher()
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    table = teacher_quality(teacher, x, y, dropout_passes=6, seed=3, chunk=7)
    out = teacher(x)
    assert torch.allclose(table["confidence"], out.logits.softmax(1)[torch.arange(20), y])
    assert torch.allclose(table["norm"], out.embedding.norm(dim=1))
    assert torch.equal(table["correct"], (out.logits.argmax(1) == y).float())
    d = table["dropout"]
    assert bool(((d > 0) & (d <= 1)).all())
    again = teacher_quality(teacher, x, y, dropout_passes=6, seed=3, chunk=7)["dropout"]
    assert torch.equal(d, again)  # seeded
    # reference for 2 passes: the same seeded masks, one distance per sample
    gen = torch.Generator().manual_seed(3)
    e = out.embedding
    keep = torch.bernoulli(torch.full((2, *e.shape), 0.5), generator=gen)
    z = torch.nn.functional.normalize(teacher.network.classifier(keep * e / 0.5), dim=-1)
    expected = 2 * torch.sigmoid(-(z[0] - z[1]).norm(dim=1))
    got = teacher_quality(teacher, x, y, dropout_passes=2, seed=3, chunk=64)["dropout"]
    assert torch.allclose(got, expected.detach(), atol=1e-6)


def test_corruption_is_seeded_exact_and_not_in_place():
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    before = x.clone()
    out, mask = corrupt_inputs(x, "noise", 0.2, seed=4)
    assert torch.equal(x, before)
    assert mask.sum() == 10 and out.dtype == torch.uint8
    assert torch.equal(out[~torch.from_numpy(mask)], x[~torch.from_numpy(mask)])
    assert not torch.equal(out[torch.from_numpy(mask)], x[torch.from_numpy(mask)])
    out2, mask2 = corrupt_inputs(x, "noise", 0.2, seed=4)
    assert torch.equal(out, out2) and np.array_equal(mask, mask2)
    _, mask3 = corrupt_inputs(x, "noise", 0.2, seed=5)
    assert not np.array_equal(mask, mask3)


def test_blank_and_clip():
    g = torch.Generator().manual_seed(0)
    ms = torch.rand(10, 13, 4, 4, generator=g) + 1.0
    out, mask = corrupt_inputs(ms, "blank", 0.5, severity=2 / 13, seed=0)
    low = ms.amin(dim=(0, 2, 3))
    for i in np.flatnonzero(mask):
        blanked = [c for c in range(13) if torch.all(out[i, c] == low[c])]
        assert len(blanked) == 2
    spec = torch.rand(6, 1, 10, 5, generator=g)
    out, mask = corrupt_inputs(spec, "blank", 1.0, severity=0.3, seed=0)
    for i in range(6):  # 3 contiguous rows at the minimum
        rows = [r for r in range(10) if torch.all(out[i, 0, r] == spec.min())]
        assert len(rows) == 3 and rows == list(range(rows[0], rows[0] + 3))
    out, _ = corrupt_inputs(spec, "clip", 1.0, severity=0.5)
    for i in range(6):
        assert torch.allclose(out[i].max(), spec[i].flatten().quantile(0.5))
    with pytest.raises(CmkdError, match="fraction"):
        corrupt_inputs(spec, "noise", 1.5)
    with pytest.raises(CmkdError, match="kind"):
        corrupt_inputs(spec, "jpeg", 0.5)
    same, none = corrupt_inputs(spec, "none", 0.5)
    assert same is spec and not none.any()
