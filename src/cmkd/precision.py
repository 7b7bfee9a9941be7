"""What `run.precision`, `run.channels_last` and `run.matmul_weight_grad: auto` become on this
machine.

bfloat16 pays only where the hardware multiplies it natively: CUDA GPUs of compute capability
8.0 and later (Ampere on), and CPUs with AVX512-BF16 or AMX-BF16 (Intel Cooper Lake, Sapphire
Rapids on; AMD Zen 4 on). Elsewhere it is emulated and slower than float32, so `auto` stays
at 32-true there. It also pays only where the network's products outweigh autocast's per-op
casts. A convolution's work per parameter grows with its input's area, and its activations
(half the bytes in bf16) dominate memory traffic: on a 2-core AMX CPU (the precision section
of benchmarks/performance.md) a 99k-parameter small CNN's training step took x0.46-0.97 the
fp32 time on every built-in image and audio source (UC Merced 256 x 256 to MNIST 28 x 28),
and a resnet18 step x0.5. A fully connected layer does one multiply-add per parameter and
sample: there a 90k-parameter MLP's step took x1.24, and a 50-d linear model's 1,000-step fit
1.7x longer in bf16. So `auto` picks bf16 for networks with a trainable convolution, and for
others of at least BF16_MIN_PARAMETERS trainable parameters.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_PARAMETERS = 1_000_000


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def training_device(accelerator: str) -> str:
    """cuda, mps or cpu: where a Trainer with this accelerator setting runs."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 in hardware."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(
    precision: str, accelerator: str, module: torch.nn.Module | None = None
) -> str:
    """`run.precision` as Lightning takes it: auto becomes bf16-mixed where the device computes
    bf16 natively and `module` (when given) gains from it (`gains_from_bf16`), else 32-true."""
    if str(precision) != "auto":
        return str(precision)
    if not native_bf16(training_device(accelerator)):
        return "32-true"
    if module is not None and not gains_from_bf16(module):
        return "32-true"
    return "bf16-mixed"


def gains_from_bf16(module: torch.nn.Module) -> bool:
    """Whether bf16 autocast speeds up training `module` where bf16 is native: it trains a
    convolution (a 4-D weight), or at least BF16_MIN_PARAMETERS parameters. Frozen parameters
    (a teacher's) do not count."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if any(p.ndim == 4 for p in trainable):
        return True
    return sum(p.numel() for p in trainable) >= BF16_MIN_PARAMETERS


def resolve_channels_last(setting: bool | str, module: torch.nn.Module) -> bool:
    """Whether to lay the network out channels-last: `auto` means yes when it has 4-D
    (convolution) weights, which is where the layout changes the kernels used."""
    if setting == "auto":
        return any(p.ndim == 4 for p in module.parameters())
    return bool(setting)


def resolve_matmul_weight_grad(setting: bool | str, accelerator: str) -> bool:
    """Whether convolutions compute their weight gradient as one matrix product at small maps
    (cmkd.models.matmul_weight_grad): `auto` means yes when training on a CPU, the only
    device where oneDNN's kernel was found slow there."""
    if setting == "auto":
        return training_device(accelerator) == "cpu"
    return bool(setting)
