"""Networks of different shapes for the loss tests: two small CNNs (13 and 3 channels,
different widths and feature-map sizes) and an MLP (no feature map)."""

from __future__ import annotations

import pytest
import torch

from cmkd.models.backbones import create_network


def _network(kind: str):
    torch.manual_seed(0)
    if kind == "cnn13":
        net = create_network("small_cnn", in_chans=13, num_classes=10, widths=(8, 16, 32))
        return net, torch.randn(6, 13, 16, 16)  # 32 x 2 x 2 maps
    if kind == "cnn3":
        net = create_network("small_cnn", 3, 10, widths=(16, 16), stem_stride=1)
        return net, torch.randn(6, 3, 16, 16)  # 16 x 8 x 8 maps
    return create_network("mlp", 20, 10, hidden=(24, 12)), torch.randn(6, 20)


PAIRS = [("cnn3", "cnn13"), ("cnn13", "cnn3"), ("mlp", "cnn13"), ("cnn3", "mlp")]


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-from-{p[1]}")
def network_pair(request):
    """((student, its input), (teacher, its input), (student kind, teacher kind))."""
    student_kind, teacher_kind = request.param
    return _network(student_kind), _network(teacher_kind), request.param
