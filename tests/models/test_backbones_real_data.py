"""Backbones on real data: paired EuroSAT MS (13 bands) / RGB patches and UCI mfeat rows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cmkd.models.backbones import create_network

DATA = Path(os.environ.get("CMKD_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
EUROSAT = DATA / "eurosat"
MFEAT = DATA / "mfeat" / "mfeat-fou.csv"
CLASSES = ["Forest", "Highway", "River", "SeaLake"]

needs_eurosat = pytest.mark.skipif(
    not (EUROSAT / "ms").is_dir(), reason=f"real EuroSAT data not found under {EUROSAT}"
)
needs_mfeat = pytest.mark.skipif(not MFEAT.is_file(), reason=f"UCI mfeat not found at {MFEAT}")


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean / unit variance over the batch, as a data pipeline would."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


@pytest.fixture(scope="module")
def eurosat_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """One MS patch per class (B x 13 x 64 x 64) and its same-named RGB patch (B x 3 x 64 x 64)."""
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    ms, rgb = [], []
    for cls in CLASSES:
        tif = sorted((EUROSAT / "ms" / cls).glob("*.tif"))[0]
        bands = tifffile.imread(tif)
        assert bands.shape == (64, 64, 13) and bands.dtype == np.uint16  # pixel-interleaved
        ms.append(torch.from_numpy(bands.astype(np.float32)).permute(2, 0, 1))
        jpg = EUROSAT / "rgb" / cls / (tif.stem + ".jpg")
        pixels = np.asarray(Image.open(jpg).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (64, 64, 3)
        rgb.append(torch.from_numpy(pixels).permute(2, 0, 1))
    return standardise(torch.stack(ms)), standardise(torch.stack(rgb))


@needs_eurosat
@pytest.mark.parametrize(
    "name", ["resnet34", "resnet18", "mobilenetv2_100", "shufflenet_v2_x0_5", "small_cnn"]
)
def test_eurosat_ms_and_rgb_forward(name: str, eurosat_pair) -> None:
    ms, rgb = eurosat_pair
    outputs = {}
    for x in (ms, rgb):
        torch.manual_seed(0)
        net = create_network(name, x.shape[1], len(CLASSES)).eval()
        with torch.no_grad():
            out = net(x)
        assert out.logits.shape == (len(CLASSES), len(CLASSES))
        assert out.embedding.shape == (len(CLASSES), net.embedding_dim)
        assert out.feature_map.shape[:2] == (len(CLASSES), net.feature_channels)
        assert all(torch.isfinite(t).all() for t in (out.logits, out.embedding, out.feature_map))
        # Different patches must give different embeddings (nothing collapsed or saturated).
        assert torch.cdist(out.embedding, out.embedding).triu(1).sum() > 0
        outputs[x.shape[1]] = (net, out)
    # Teacher (13-band) and student (RGB) share an embedding space size, so the student's
    # embedding can go through the teacher's classifier.
    teacher, _ = outputs[13]
    _, student_out = outputs[3]
    assert teacher.classifier(student_out.embedding).shape == (len(CLASSES), len(CLASSES))


@needs_mfeat
def test_mlp_on_uci_mfeat_rows() -> None:
    table = np.loadtxt(MFEAT, delimiter=",", skiprows=1, max_rows=600, dtype=np.float32)
    rows = np.r_[0:8, 200:208, 400:408]  # digits 0, 1 and 2
    features = torch.from_numpy(table[rows, :76])
    labels = torch.from_numpy(table[rows, 76]).long()
    assert labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)

    torch.manual_seed(0)
    net = create_network("mlp", 76, 10)
    assert net.feature_channels is None and net.embedding_dim == 128
    out = net(features)
    assert out.feature_map is None
    assert out.logits.shape == (24, 10) and out.embedding.shape == (24, 128)
    torch.testing.assert_close(net.classifier(out.embedding), out.logits)

    loss = nn.functional.cross_entropy(out.logits, labels)
    loss.backward()
    first_linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 76 and first_linear.weight.grad.abs().sum() > 0

    # A few steps on real rows must fit them: the network is trainable end to end.
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(features).logits, labels).backward()
        optimiser.step()
    assert (net(features).logits.argmax(1) == labels).float().mean() == 1.0
