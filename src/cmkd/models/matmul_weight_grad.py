"""Convolution weight gradients as one matrix product where the feature map is small (CPU).

oneDNN's backward-weights convolution is slow on a CPU when the output map has only a few
positions and the channels are many. On a 2-core AMX CPU (benchmarks/performance.md,
weight_grad section: `cmkd bench perf --sections '[weight_grad]'`), one backward pass of
resnet34's last-stage convolution (512 channels, 2 x 2 maps, batch 64) took 75 ms in bf16, and
22 ms with the weight gradient as below; all of a bf16 resnet34's convolution backward passes
took 705 ms, and 325 ms where the rule below takes the product. The weight gradient of a
convolution is the output gradient times the input patches (im2col), which at a few positions
per map is a small copy and one large, well-shaped GEMM. So `MatmulWeightGradConv2d` computes
the forward pass and the input gradient as before (oneDNN is fast there) and only the weight
gradient as that product, where the output map is small and the patch large (MAX_POSITIONS,
MIN_PATCH); everywhere else it is nn.Conv2d. The product accumulates in float32 and rounds
once, as the native kernel does: a whole resnet step's gradients moved by about 1e-8 (fp32)
and 1e-5 (bf16) relative to torch's, against about 0.5 that bf16 itself moves them from fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_POSITIONS = {torch.bfloat16: 16, torch.float32: 4}
MIN_PATCH = {torch.bfloat16: 1152, torch.float32: 2304}
"""Where the product is used: an output map of at most MAX_POSITIONS[dtype] positions (H x W)
and a patch (in_channels x kernel height x kernel width) of at least MIN_PATCH[dtype] values.
Timed shape by shape over resnet18/34 (the weight_grad section), the product was faster in
each of four runs at these shapes: in bf16, the 3 x 3 convolutions from 128 input channels on
at 4 x 4 maps and smaller; in fp32, those from 256 channels at 2 x 2 maps. Elsewhere it was
slower in some runs and faster in others (bf16 at 8 x 8 maps, fp32 at 4 x 4, 1 x 1
convolutions, by a few ms), or oneDNN was faster (larger maps and smaller patches, 5-10x at
the stem): those keep oneDNN."""


class _WeightGradAsMatmul(torch.autograd.Function):
    """conv2d(x, weight, bias) with the weight gradient computed as one matrix product."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dtype):
        # Cast as autocast would, outside it, to keep the tensors the product needs.
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x, weight, bias, stride, padding)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, bias is not None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        grad = grad.to(x.dtype)
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, (1, 1), False, (0, 0), 1,
                (True, False, False),
            )[0]  # fmt: skip
        grad_weight = _weight_grad(x, grad, weight, stride, padding)
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        # autograd casts each gradient back to its input's dtype (float32 parameters).
        return grad_input, grad_weight, grad_bias, None, None, None


class MatmulWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient is one matrix product on a CPU where the output map is
    small and the patch large (MAX_POSITIONS, MIN_PATCH); the same parameters, state dict and
    outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        if dtype is None or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(x)
        if not product_pays(self, x.shape[-2:], dtype):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        return _WeightGradAsMatmul.apply(x, weight, bias, self.stride, self.padding, dtype)


def _weight_grad(x, grad, weight, stride, padding) -> torch.Tensor:
    """The weight gradient of conv2d(x, weight) for the output gradient `grad`: the gradient
    rows (one per output position) times the input patches, in `weight`'s layout. The patches
    are gathered from an (N, H, W, C) view of `x` in one copy: for channels-last maps that is
    the order in memory (F.unfold's im2col is slow there, 2-3x this whole function in bf16),
    and the gradient rows are then a plain view of `grad`. For channels-last weights the
    patch runs (kh, kw, C), so the product lands in the weight's own layout and autograd need
    not permute it into the parameter's; either order is the same sum (bit for bit)."""
    out_channels, _, kh, kw = weight.shape
    (pad_h, pad_w), (step_h, step_w) = padding, stride
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad_w, pad_w, pad_h, pad_h))
    windows = padded.unfold(1, kh, step_h).unfold(2, kw, step_w)  # N, Ho, Wo, C, kh, kw
    rows = windows.shape[0] * windows.shape[1] * windows.shape[2]
    grad_rows = grad.permute(0, 2, 3, 1).reshape(rows, out_channels)
    if weight.is_contiguous():
        patches = windows.reshape(rows, -1)  # (C, kh, kw), torch's order
        return (grad_rows.t() @ patches).view(weight.shape)
    patches = windows.permute(0, 1, 2, 4, 5, 3).reshape(rows, -1)
    return (grad_rows.t() @ patches).view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)


def product_pays(conv: nn.Conv2d, size: tuple[int, int], dtype: torch.dtype) -> bool:
    """Whether the rule (MAX_POSITIONS, MIN_PATCH) takes the product for `conv` on an input
    map of `size` (height, width) computed in `dtype`."""
    positions = 1
    for length, pad, kernel, step in zip(
        size, conv.padding, conv.kernel_size, conv.stride, strict=True
    ):
        positions *= (length + 2 * pad - kernel) // step + 1
    patch = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return positions <= MAX_POSITIONS.get(dtype, 0) and patch >= MIN_PATCH[dtype]


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a convolution of `x` computes in, where the product is known to pay (a 4-D
    CPU tensor in float32 or bf16 autocast); None elsewhere."""
    if x.device.type != "cpu" or x.ndim != 4:
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    else:
        dtype = x.dtype
    return dtype if dtype in MAX_POSITIONS else None


def _convertible(conv: nn.Module) -> bool:
    # Plain convolutions only: groups, dilation, string or non-zero padding modes keep oneDNN.
    return (
        type(conv) in (nn.Conv2d, MatmulWeightGradConv2d)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def convertible_convolutions(module: nn.Module) -> list[nn.Module]:
    """The convolutions of `module` that use_matmul_weight_grad converts."""
    return [conv for conv in module.modules() if _convertible(conv)]


def use_matmul_weight_grad(module: nn.Module, enabled: bool = True) -> int:
    """Turn every plain nn.Conv2d in `module` into a MatmulWeightGradConv2d in place (same
    parameters and state-dict keys), or back with `enabled=False`; returns how many."""
    convs = convertible_convolutions(module)
    for conv in convs:
        conv.__class__ = MatmulWeightGradConv2d if enabled else nn.Conv2d
    return len(convs)
