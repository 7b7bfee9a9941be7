"""Convolution backward passes, layer by layer: torch's own kernel (oneDNN on a CPU) against
the weight gradient as one matrix product (cmkd.models.matmul_weight_grad), at every
convolution shape of the resnets, in float32 and bf16, and which one cmkd's rule takes. The
evidence for that rule (MAX_POSITIONS, MIN_PATCH) and for `run.matmul_weight_grad: auto`.

Each timing is the backward pass alone (input and weight gradients, from a kept graph; the
first convolution's input needs none) through torch.utils.benchmark.Timer, the two variants
interleaved over repeats, medians.
"""

from __future__ import annotations

from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.bench.perf.timing import load, seconds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _conv_inputs(backbone: str, in_chans: int, size: int) -> list[tuple[nn.Conv2d, tuple]]:
    """Each convolution of `backbone` with its input shape (channels, height, width), in order."""
    from cmkd.models.backbones import create_network

    net = create_network(backbone, in_chans=in_chans, num_classes=10).eval()
    seen: list[tuple[nn.Conv2d, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: seen.append((m, tuple(args[0].shape[1:]))))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net(torch.zeros(1, in_chans, size, size))
    for hook in hooks:
        hook.remove()
    return seen


def _backward_timers(conv: nn.Conv2d, shape: tuple, batch: int, dtype, input_grad: bool):
    """(torch's kernel, the product): each a call running one backward pass of `conv`."""
    from cmkd.models.matmul_weight_grad import _WeightGradAsMatmul

    layout = torch.channels_last
    x = torch.randn(batch, *shape, dtype=dtype).to(memory_format=layout)
    x.requires_grad_(input_grad)
    w = conv.weight.detach().to(dtype).to(memory_format=layout).requires_grad_()
    wanted = [x, w] if input_grad else [w]
    native = F.conv2d(x, w, None, conv.stride, conv.padding)
    product = _WeightGradAsMatmul.apply(x, w, None, conv.stride, conv.padding, dtype)
    grad = torch.randn_like(native)
    return tuple(
        lambda out=out: torch.autograd.grad(out, wanted, grad, retain_graph=True)
        for out in (native, product)
    )


def _gradients(backbone: str, in_chans: int, size: int, batch: int, dtype, matmul: bool):
    """All parameter gradients of one training step of `backbone` (seeded weights and batch;
    bf16 as autocast) with torch's kernels or with the rule's product, flattened."""
    from cmkd.models.backbones import create_network
    from cmkd.models.matmul_weight_grad import use_matmul_weight_grad

    torch.manual_seed(0)
    net = create_network(backbone, in_chans=in_chans, num_classes=10)
    for norm in net.modules():
        # timm starts each residual block's last BatchNorm at 0, which stops every gradient
        # into the block's convolutions at the first step: nothing would be compared there.
        if isinstance(norm, nn.BatchNorm2d):
            nn.init.ones_(norm.weight)
    net = net.to(memory_format=torch.channels_last)
    use_matmul_weight_grad(net, enabled=matmul)
    x = torch.randn(batch, in_chans, size, size).to(memory_format=torch.channels_last)
    y = torch.arange(batch) % 10
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = net(x).logits
    F.cross_entropy(logits.float(), y).backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def weight_grad_costs(
    backbones: tuple[str, ...] = ("resnet18", "resnet34"),
    batch: int = 64,
    in_chans: int = 13,
    size: int = 64,
    repeats: int = 3,
) -> dict[str, Any]:
    """Per convolution shape of `backbones` (EuroSAT MS input, `size` x `size`, `batch`): the
    backward pass with torch's kernel and with the product, in fp32 and bf16, and whether
    cmkd's rule takes the product; per backbone, all its convolutions' backward time with the
    rule over torch's kernel alone, and how far the rule moves one step's gradients."""
    from cmkd.models.matmul_weight_grad import product_pays

    shapes: dict[str, dict[str, Any]] = {}
    for backbone in backbones:
        for index, (conv, shape) in enumerate(_conv_inputs(backbone, in_chans, size)):
            key = f"{shape} k{conv.kernel_size} s{conv.stride} -> {conv.out_channels}"
            row = shapes.setdefault(
                key, {"input": list(shape), "out_channels": conv.out_channels,
                      "kernel": list(conv.kernel_size), "stride": list(conv.stride),
                      "count": {}, "conv": conv, "input_grad": index > 0},
            )  # fmt: skip
            row["count"][backbone] = row["count"].get(backbone, 0) + 1
    loads = [load()]
    for row in shapes.values():
        conv = row.pop("conv")
        for name, dtype in DTYPES.items():
            timers = _backward_timers(conv, tuple(row["input"]), batch, dtype, row["input_grad"])
            times: list[list[float]] = [[], []]
            for r in range(repeats):
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    times[i].append(seconds(timers[i]))
            row[name] = {
                "native_ms": 1000 * median(times[0]),
                "product_ms": 1000 * median(times[1]),
                "rule_takes_product": product_pays(conv, tuple(row["input"][1:]), dtype),
            }
    loads.append(load())
    totals: dict[str, Any] = {}
    differences: dict[str, Any] = {}
    for backbone in backbones:
        # How far the product moves a whole step's gradients, against how far bf16 itself
        # moves them from fp32: the scale of "the last bits".
        step = {
            (name, matmul): _gradients(backbone, in_chans, size, batch, dtype, matmul)
            for name, dtype in DTYPES.items()
            for matmul in (False, True)
        }
        differences[backbone] = {
            "fp32 product vs torch": _relative(step["fp32", True], step["fp32", False]),
            "bf16 product vs torch": _relative(step["bf16", True], step["bf16", False]),
            "bf16 torch vs fp32 torch": _relative(step["bf16", False], step["fp32", False]),
        }
        totals[backbone] = {}
        for name in DTYPES:
            native = chosen = 0.0
            for row in shapes.values():
                n, cell = row["count"].get(backbone, 0), row[name]
                native += n * cell["native_ms"]
                chosen += n * cell["product_ms" if cell["rule_takes_product"] else "native_ms"]
            totals[backbone][name] = {"native_ms": native, "rule_ms": chosen}
    return {
        "batch": batch,
        "input": [in_chans, size, size],
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "load": loads,
        "shapes": shapes,
        "totals": totals,
        "gradient_difference": differences,
    }
