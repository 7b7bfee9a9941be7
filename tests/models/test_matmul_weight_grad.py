"""Convolution weight gradients as one matrix product (cmkd.models.matmul_weight_grad): the
gradient against torch's own convolution, where the product is used, and what converting a
network changes (nothing but the kernel)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmkd.models import matmul_weight_grad as mwg
from cmkd.models.backbones import create_network
from cmkd.models.matmul_weight_grad import MatmulWeightGradConv2d, use_matmul_weight_grad

# (input shape, out channels, kernel, stride, padding, bias)
CASES = [
    ((3, 6, 5, 4), 4, 3, 1, 1, True),
    ((2, 5, 7, 7), 3, 3, 2, 1, False),
    ((2, 4, 6, 6), 5, 1, 2, 0, True),
    ((2, 3, 9, 8), 2, 7, 2, 3, False),
    ((2, 3, 5, 5), 4, (3, 1), (1, 2), (1, 0), True),
]


@pytest.mark.parametrize("shape, out, kernel, stride, padding, bias", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_equal_torchs_convolution_in_float64(
    shape, out, kernel, stride, padding, bias, channels_last
) -> None:
    """In float64 the product and torch's convolution are the same sum: equal to 1e-12."""
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], out, kernel, stride, padding, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    stride, padding = conv.stride, conv.padding
    mine = mwg._WeightGradAsMatmul.apply(x, conv.weight, conv.bias, stride, padding, x.dtype)
    grad = torch.randn_like(mine)
    ours = torch.autograd.grad(mine, [x, *conv.parameters()], grad)
    reference = F.conv2d(x, conv.weight, conv.bias, stride, padding)
    torchs = torch.autograd.grad(reference, [x, *conv.parameters()], grad)
    torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)
    for a, b in zip(ours, torchs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _layer4_conv() -> nn.Conv2d:
    # resnet34's last-stage shape, scaled down in batch: 256 -> 8 channels, 2 x 2 maps.
    torch.manual_seed(1)
    return nn.Conv2d(256, 8, 3, 1, 1, bias=False)


def _backward(conv: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = conv(x)
    out.float().square().sum().backward()
    return conv.weight.grad.clone()


@pytest.mark.parametrize("bf16", [False, True])
def test_converted_layer_used_at_small_maps_and_same_gradient(monkeypatch, bf16) -> None:
    native = _layer4_conv()
    converted = copy.deepcopy(native)
    assert use_matmul_weight_grad(converted) == 1
    assert type(converted) is MatmulWeightGradConv2d
    calls = []
    apply = mwg._WeightGradAsMatmul.apply
    monkeypatch.setattr(
        mwg._WeightGradAsMatmul, "apply", lambda *a: calls.append(a[-1]) or apply(*a)
    )
    x = torch.randn(4, 256, 2, 2)
    expected, got = _backward(native, x, bf16), _backward(converted, x, bf16)
    assert calls == [torch.bfloat16 if bf16 else torch.float32]
    # The same sum in another order: float32's last bits, and within bf16's rounding (2^-8)
    # of oneDNN's bf16 kernel.
    tolerance = 4e-3 if bf16 else 1e-5
    assert ((got - expected).norm() / expected.norm()).item() < tolerance
    with torch.no_grad():  # outputs: the same forward kernel
        torch.testing.assert_close(converted(x), native(x), rtol=0, atol=0)


def test_oneDNN_kept_where_the_product_does_not_pay(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(mwg._WeightGradAsMatmul, "apply", lambda *a: calls.append(a))
    conv = _layer4_conv()
    use_matmul_weight_grad(conv)
    large_map = torch.randn(2, 256, 4, 4)  # 16 positions: fp32 keeps oneDNN (bf16 would not)
    conv(large_map).sum().backward()
    small_patch = nn.Conv2d(64, 8, 3, padding=1)  # 576-value patches: below MIN_PATCH
    use_matmul_weight_grad(small_patch)
    small_patch(torch.randn(2, 64, 2, 2)).sum().backward()
    conv.requires_grad_(False)  # a frozen teacher
    conv(torch.randn(2, 256, 2, 2))
    conv.requires_grad_(True)
    with torch.no_grad():
        conv(torch.randn(2, 256, 2, 2))
    assert calls == []
    with torch.autocast("cpu", torch.bfloat16):
        conv(large_map)
    assert len(calls) == 1


def test_conversion_keeps_parameters_and_skips_other_convolutions() -> None:
    net = create_network("resnet18", in_chans=3, num_classes=4)
    state = copy.deepcopy(net.state_dict())
    plain = sum(1 for m in net.modules() if type(m) is nn.Conv2d)
    assert use_matmul_weight_grad(net) == plain == 20
    assert not any(type(m) is nn.Conv2d for m in net.modules())
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, dilation=2))
    assert use_matmul_weight_grad(grouped) == 0
    assert use_matmul_weight_grad(net, enabled=False) == plain
    assert sum(1 for m in net.modules() if type(m) is nn.Conv2d) == plain


@pytest.mark.parametrize("bf16", [False, True])
def test_a_whole_resnet_step_keeps_its_gradients(bf16) -> None:
    """resnet18 (batch 8, 32 x 32: the last stage at 1 x 1), one step with and without the
    product: the same gradients to the last bits of the compute dtype."""
    grads = []
    for matmul in (False, True):
        torch.manual_seed(0)
        net = create_network("resnet18", in_chans=13, num_classes=10)
        for norm in net.modules():  # timm's zero last-BN would leave those convolutions no gradient
            if isinstance(norm, nn.BatchNorm2d):
                nn.init.ones_(norm.weight)
        assert use_matmul_weight_grad(net, enabled=matmul) == 20
        x, y = torch.randn(8, 13, 32, 32), torch.arange(8) % 10
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = net(x).logits
        F.cross_entropy(logits.float(), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    native, product = grads
    assert native.norm() > 0
    assert ((product - native).norm() / native.norm()).item() < (1e-3 if bf16 else 1e-6)


def _unfolded_product(x, grad, weight, stride, padding) -> torch.Tensor:
    """The textbook weight gradient: output-gradient rows times F.unfold's im2col patches."""
    columns = F.unfold(x, weight.shape[-2:], padding=padding, stride=stride)
    batch, patch, positions = columns.shape
    rows = grad.permute(1, 0, 2, 3).reshape(weight.shape[0], batch * positions)
    return (rows @ columns.transpose(1, 2).reshape(batch * positions, patch)).reshape(weight.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_weight_gradient_is_the_unfolded_product_bit_for_bit_in_the_weights_layout(
    dtype, channels_last, stride
) -> None:
    torch.manual_seed(2)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 24, 5, 5).to(dtype).contiguous(memory_format=layout)
    weight = torch.randn(16, 24, 3, 3).to(dtype).contiguous(memory_format=layout)
    grad = F.conv2d(x, weight, stride=stride, padding=1).contiguous(memory_format=layout)
    got = mwg._weight_grad(x, grad, weight, (stride, stride), (1, 1))
    assert torch.equal(got, _unfolded_product(x, grad, weight, (stride, stride), (1, 1)))
    assert got.stride() == weight.stride()  # autograd stores it without a permuting copy
