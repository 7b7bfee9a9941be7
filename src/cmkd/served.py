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

By default (`run.standardize_once: auto`) only on the CPU: a GPU standardises a batch in
microseconds, and serving float32 batches from the host would move up to 4x the bytes of uint8
data; and only where the standardised copy takes at most SERVED_MAX_BYTES, since it is held
beside the raw split.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cmkd.data.datamodule import ModalityDataModule, StandardizedSplit
from cmkd.precision import training_device

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
    module: Any, datamodule: Any, accelerator: str, setting: bool | str = "auto"
) -> Iterator[bool]:
    """While open, `datamodule`'s training batches come standardised once for `module`'s
    network as it is now (its layout included: open this after `use_fast_paths`), and `module`
    takes them so; yields whether it serves (`serves`). Both are undone on leaving, also after
    an error, so the data module and the task are as they were for any later use."""
    if not serves(module, datamodule, accelerator, setting):
        yield False
        return
    datamodule.served = StandardizedSplit(datamodule.sets["train"], module.model.standardize)
    module.inputs_standardized = True
    try:
        yield True
    finally:
        datamodule.served = None
        module.inputs_standardized = False
