"""The record every network returns, so losses never care which backbone produced it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """logits: B x K; embedding: B x D (pooled, the classifier's input);
    feature_map: B x C x H x W (last stage) or None for vector models."""

    logits: torch.Tensor
    embedding: torch.Tensor
    feature_map: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> ModelOutput:
        """Rows `index` of every output (a cache may hold None for outputs no loss reads)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return ModelOutput(pick(self.logits), pick(self.embedding), pick(self.feature_map))
