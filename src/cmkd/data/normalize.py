"""Per-channel standardisation whose statistics come from the training split only.

It is a module with buffers so the statistics travel inside every checkpoint: a loaded model
takes raw inputs, whatever split or machine it is evaluated on.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std over dim 1 (channels for images, features for vectors)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardize:
        """Statistics of a training tensor (N x C x ... ); a constant channel keeps std 1."""
        dims = [d for d in range(x.ndim) if d != 1]
        xf = x.float()
        mean = xf.mean(dim=dims)
        std = xf.std(dim=dims)
        return cls(mean, torch.where(std > 1e-6, std, torch.ones_like(std)))

    @classmethod
    def identity(cls, channels: int) -> Standardize:
        """Placeholder with the right buffer shapes, filled when a checkpoint is loaded."""
        return cls(torch.zeros(channels), torch.ones(channels))

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """`channels_last`: return an image batch laid out channels-last (for a network whose
        weights are), written so in the same pass."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = self.mean.view(shape), self.std.view(shape)
        if not (channels_last and x.ndim == 4):
            return (x.float() - mean) / std
        if x.requires_grad:  # out= below has no autograd
            return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        out = torch.empty(
            x.shape, dtype=torch.float32, device=x.device, memory_format=torch.channels_last
        )
        return torch.sub(x, mean, out=out).div_(std)
