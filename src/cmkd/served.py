"""Training inputs standardised once per fit, not once per batch.

A network standardises its raw inputs itself (`StandardizedNetwork`), so a checkpoint takes raw
data anywhere. In training that repeats the same arithmetic on every sample in every epoch, and
on a CPU it is not cheap: for a batch of 64 13-band 64 x 64 patches written straight into a
channels-last layout it took 6-10 ms of a small CNN's 47-53 ms step (2-core AMX CPU, one
thread). While `standardized_once` is open, the training split is standardised once, by the
network's own `standardize`, in its layout; the loader gathers each batch from it whole, and
the task skips the standardisation of training batches. Every value goes through the same
elementwise arithmetic as before, so the batches, and the run, are bit-identical; validation
and test batches stay raw.

Under bf16-mixed the split is kept in bfloat16 where the network hands its input, unchanged,
to a convolution or linear layer first (`first_layer_casts_input`): autocast would round it to
bf16 there anyway, so rounding once gives the same bits, and each batch moves half the bytes
and skips the cast (for a small CNN on 64 13-band patches, in one interleaved A/B of 40
steps: 4.5 -> 3.0 ms to gather a batch, and x0.90 the step).

By default (`run.standardize_once: auto`) only on the CPU: a GPU standardises a batch in
microseconds, and serving float32 batches from the host would move up to 4x the bytes of uint8
data; and only where the standardised copy takes at most SERVED_MAX_BYTES, since it is held
beside the raw split.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from cmkd.data.datamodule import ModalityDataModule, StandardizedSplit
from cmkd.precision import training_device

CASTING_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layers whose input autocast rounds to bfloat16 (its lower-precision op list)."""
RESHAPING_LAYERS = (nn.Flatten, nn.Unflatten, nn.Identity)
"""Layers that only move values (an MLP's Flatten before its first Linear)."""

SERVED_MAX_BYTES = 1 << 30


def serves(module: Any, datamodule: Any, accelerator: str, setting: bool | str = "auto") -> bool:
    """Whether a fit of `module` on `datamodule` with `accelerator` serves its training split
    standardised once (`run.standardize_once` is `setting`): it needs a cmkd task
    (`inputs_standardized`) and a `ModalityDataModule`; `auto` asks for the CPU too and a
    float32 copy of at most SERVED_MAX_BYTES, true for nothing more, false never serves."""
    if setting is False or not (
        hasattr(module, "inputs_standardized") and isinstance(datamodule, ModalityDataModule)
    ):
        return False
    return setting is True or (
        training_device(accelerator) == "cpu"
        and datamodule.sets["train"].x.numel() * 4 <= SERVED_MAX_BYTES
    )


@contextmanager
def standardized_once(
    module: Any,
    datamodule: Any,
    accelerator: str,
    setting: bool | str = "auto",
    precision: str | None = None,
) -> Iterator[bool]:
    """While open, `datamodule`'s training batches come standardised once for `module`'s
    network as it is now (its layout included: open this after `use_fast_paths`), and `module`
    takes them so; yields whether it serves (`serves`). `precision`: the fit's (what
    `use_fast_paths` returns); at bf16-mixed the split is kept in bf16 where that gives the
    same run (`first_layer_casts_input`). Both are undone on leaving, also after an error, so
    the data module and the task are as they were for any later use."""
    if not serves(module, datamodule, accelerator, setting):
        yield False
        return
    split = StandardizedSplit(datamodule.sets["train"], module.model.standardize)
    if precision == "bf16-mixed" and first_layer_casts_input(module.model.network, split.x[:2]):
        split.x = split.x.to(torch.bfloat16)  # the layout is kept
    datamodule.served = split
    module.inputs_standardized = True
    try:
        yield True
    finally:
        datamodule.served = None
        module.inputs_standardized = False


def first_layer_casts_input(network: nn.Module, x: torch.Tensor) -> bool:
    """Whether `network`, under bf16 autocast, reads its input `x` only through autocast's
    rounding to bf16, so that inputs rounded beforehand give the same bits. Checked on `x`, in
    eval mode without gradients (no statistics move): the first layer to run, past layers that
    only reshape, must be a convolution or linear layer (CASTING_LAYERS), and the outputs from
    `x` and from `x` in bf16 must be equal, bit for bit (an input read elsewhere too, say by a
    skip connection, or changed before that layer, would make them differ)."""
    first: list[nn.Module] = []

    def look(layer: nn.Module, args: tuple) -> None:
        if not first and not isinstance(layer, RESHAPING_LAYERS):
            first.append(layer)

    leaves = [m for m in network.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_pre_hook(look) for m in leaves]
    device = next(network.parameters(), x).device
    x = x.to(device)
    was = network.training
    try:
        network.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            full = _tensors(network(x))
            if not (first and isinstance(first[0], CASTING_LAYERS)):
                return False
            rounded = _tensors(network(x.to(torch.bfloat16)))
    finally:
        network.train(was)
        for hook in hooks:
            hook.remove()
    return bool(full) and len(full) == len(rounded) and all(map(torch.equal, full, rounded))


def _tensors(out: Any) -> list[torch.Tensor]:
    """A network's outputs as a list: a tensor, or a ModelOutput's tensors (else none)."""
    if isinstance(out, torch.Tensor):
        return [out]
    fields = (getattr(out, name, None) for name in ("logits", "embedding", "feature_map"))
    return [t for t in fields if isinstance(t, torch.Tensor)]
