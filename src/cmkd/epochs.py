"""When a run validates and checkpoints, and how data epochs map onto Lightning epochs.

Validation and checkpoints have a fixed cost per occasion (a Lightning loop, metric syncs, a
file write). With the default `run.val_every` of ceil(epochs / 50) they happen at most ~50
times per run, always after the last epoch, so a run of 1,000 tiny epochs is not dominated by
them. The default depends only on the config, never on the time an epoch takes, so a rerun
validates and selects at the same epochs.

Lightning itself costs about a millisecond per step and a few per epoch (hooks, loop
bookkeeping, the loader's iterator): more than a full-batch step of a linear model. Where a
module can take it (`supports_epoch_blocks`: the supervised `ClassifierModule`, on one device)
and data epochs are tiny (at most BLOCK_MAX_STEPS steps), one Lightning epoch therefore covers
a block of data epochs (as many as lie between two validations or checkpoints) and arrives as
one `EpochBlock` that the module trains through with manual optimisation. Each data epoch
keeps its own seeded order (the order `SeededShuffle` gives the DataLoader), so the updates are
the same as one Lightning epoch per data epoch, and a resume restarts at a block boundary,
which is a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cmkd.data.datamodule import ModalityDataModule, ModalityDataset, SeededShuffle
from cmkd.errors import CmkdError

# Validations (and checkpoints) per run that the defaults aim at, at most.
OCCASIONS_PER_RUN = 50
# Blocks only for data epochs of at most this many steps ("tiny" epochs, counted from the data
# and batch sizes, never timed): there Lightning's per-epoch cost is what blocks save, and a
# progress bar that moves once per block loses nothing. Longer epochs keep per-step progress.
BLOCK_MAX_STEPS = 16


@dataclass(frozen=True)
class EpochPlan:
    """`epochs` data epochs in blocks of `block` per Lightning epoch; validate after the data
    epochs that end a multiple of `val_every` (and the last), write last.ckpt likewise with
    `checkpoint_every`. `validation` is False when there is no validation split."""

    epochs: int
    val_every: int = 1
    checkpoint_every: int = 1
    block: int = 1
    validation: bool = True

    @property
    def lightning_epochs(self) -> int:
        return math.ceil(self.epochs / self.block)

    def data_epochs(self, lightning_epoch: int) -> range:
        start = lightning_epoch * self.block
        return range(start, min(self.epochs, start + self.block))

    def last_data_epoch(self, lightning_epoch: int) -> int:
        return self.data_epochs(lightning_epoch)[-1]

    def _due(self, lightning_epoch: int, every: int) -> bool:
        epochs = self.data_epochs(lightning_epoch)
        return epochs.stop == self.epochs or any((e + 1) % every == 0 for e in epochs)

    def validates(self, lightning_epoch: int) -> bool:
        return self.validation and self._due(lightning_epoch, self.val_every)

    def checkpoints(self, lightning_epoch: int) -> bool:
        return self._due(lightning_epoch, self.checkpoint_every)


def default_interval(epochs: int) -> int:
    """Validate (and checkpoint) every this many epochs unless told: at most
    OCCASIONS_PER_RUN times per run."""
    return max(1, math.ceil(epochs / OCCASIONS_PER_RUN))


def tiny_epochs(train_size: int, batch_size: int) -> bool:
    """Whether a data epoch is short enough to run in blocks (BLOCK_MAX_STEPS)."""
    return math.ceil(train_size / batch_size) <= BLOCK_MAX_STEPS


def plan_epochs(
    epochs: int,
    val_every: int | None = None,
    checkpoint_every: int | None = None,
    blocks: bool = False,
    validation: bool = True,
) -> EpochPlan:
    """The plan for a run; `blocks`: whether the module, the devices and the epoch length
    allow blocks of data epochs per Lightning epoch (then a block is every data epoch between
    two occasions)."""
    for name, value in (("val_every", val_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise CmkdError(f"run.{name} must be an integer >= 1, got {value}")
    val_every = val_every or default_interval(epochs)
    checkpoint_every = checkpoint_every or val_every
    occasions = checkpoint_every if not validation else math.gcd(val_every, checkpoint_every)
    block = occasions if blocks else 1
    return EpochPlan(epochs, val_every, checkpoint_every, block, validation)


class EpochBlock:
    """The training data of one Lightning epoch: several data epochs, each in the order
    `SeededShuffle(n, seed)` gives for it, cut into batches as a DataLoader cuts them."""

    def __init__(self, dataset: ModalityDataset, batch_size: int, seed: int, epochs: range) -> None:
        self.dataset, self.batch_size, self.seed, self.epochs = dataset, batch_size, seed, epochs

    def batches(
        self, epoch: int, device: torch.device | str = "cpu"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Data epoch `epoch`'s batches on `device`, gathered directly from the tensors (the
        rows and values a DataLoader over `ModalityDataset` collates, without the per-sample
        calls)."""
        order = SeededShuffle(len(self.dataset), self.seed)
        order.set_epoch(epoch)
        rows = torch.from_numpy(order.permutation())
        x, y, name = self.dataset.x, self.dataset.y, self.dataset.modality
        move = torch.device(device).type != "cpu"
        for index in rows.split(self.batch_size):
            batch = {name: x[index], "label": y[index], "index": index}
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()} if move else batch


class InOrder:
    """A split's batches in row order, gathered by slicing (what a DataLoader without shuffling
    collates, without its per-sample calls and iterator set-up): validation in a run of blocks."""

    def __init__(self, dataset: ModalityDataset, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        x, y, name = self.dataset.x, self.dataset.y, self.dataset.modality
        for start in range(0, len(self.dataset), self.batch_size):
            stop = min(start + self.batch_size, len(self.dataset))
            yield {name: x[start:stop], "label": y[start:stop], "index": torch.arange(start, stop)}


class EpochBlockLoader:
    """What Lightning iterates instead of the training DataLoader: one EpochBlock per
    Lightning epoch, drawn from `datamodule.training_split()` (the split as served when the
    epoch starts). Lightning calls `sampler.set_epoch` before each epoch (as for any
    DataLoader), which picks the block."""

    def __init__(self, datamodule: ModalityDataModule, plan: EpochPlan) -> None:
        self.datamodule, self.plan = datamodule, plan
        self.sampler = self
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[EpochBlock]:
        data = self.datamodule
        epochs = self.plan.data_epochs(self.epoch)
        yield EpochBlock(data.training_split(), data.batch_size, data.seed, epochs)
