"""A network together with the input standardisation it was trained with."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmkd.data.normalize import Standardize
from cmkd.models.outputs import ModelOutput


class StandardizedNetwork(nn.Module):
    """Raw input -> Standardize (training statistics, stored as buffers) -> network."""

    def __init__(self, network: nn.Module, normalize: Standardize) -> None:
        super().__init__()
        self.normalize = normalize
        self.network = network

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return self.network(self.standardize(x))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs as the network takes them: standardised, in its first convolution's
        layout. `network(standardize(x))` is `forward(x)`, bit for bit."""
        return self.normalize(x, channels_last=self._channels_last())

    def _channels_last(self) -> bool:
        """Whether the network's first convolution is laid out channels-last (cmkd's fit does
        that: run.channels_last). Its input is then standardised straight into that layout: a
        convolution fed a standard-layout batch by channels-last weights converts the batch
        itself, and a small CNN's step took x1.2 longer so (2-core AMX CPU, 13-band 64 x 64)."""
        weight = next((p for p in self.network.parameters() if p.ndim == 4), None)
        return (
            weight is not None
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous()
        )


def rebuild_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without where the initial weights came from (`pretrained`, the options'
    `checkpoint_path`): what a checkpoint keeps, since it carries its own trained weights, so
    a model loads after the file it started from has moved or gone. The run's config.yaml
    keeps them for the record."""
    options = {k: v for k, v in spec.get("options", {}).items() if k != "checkpoint_path"}
    return {**spec, "pretrained": False, "options": options}


def build_model(spec: dict[str, Any], normalize: Standardize | None = None) -> StandardizedNetwork:
    """Build from a network spec (backbone, in_chans, num_classes, pretrained, embedding_dim,
    options); without statistics the buffers are placeholders that a checkpoint fills."""
    from cmkd.models.backbones import create_network

    network = create_network(
        spec["backbone"],
        in_chans=spec["in_chans"],
        num_classes=spec["num_classes"],
        pretrained=spec.get("pretrained", False),
        embedding_dim=spec.get("embedding_dim"),
        **spec.get("options", {}),
    )
    return StandardizedNetwork(network, normalize or Standardize.identity(spec["in_chans"]))
