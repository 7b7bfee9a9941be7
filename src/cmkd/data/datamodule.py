"""From a configured source to Lightning dataloaders.

Everything here is in memory: the datasets of this field are small once decoded, and indexing
a tensor beats per-file I/O in the training loop. Batches are dicts keyed by modality name:
{modality: x, "label": y, "index": row within the split}. "index" is what a pairing maps to a
teacher sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cmkd.config import DataConfig
from cmkd.data.root import resolve_data_root
from cmkd.data.samples import Samples
from cmkd.data.splits import stratified_split
from cmkd.errors import CmkdError

SPLITS = ("train", "val", "test")


class SeededShuffle(Sampler[int]):
    """A permutation drawn from (seed, epoch): the order of epoch k is the same in an
    uninterrupted run and in one resumed at epoch k (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> np.ndarray:
        """This epoch's order as an array (what iterating gives)."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self):
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class ModalityDataset(Dataset):
    """One modality of one split as tensors; uint8 stays uint8 until the batch is standardised."""

    def __init__(self, samples: Samples, modality: str) -> None:
        x = samples.x
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)  # torch has no general uint16 support
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(samples.y)
        self.modality = modality

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {self.modality: self.x[i], "label": self.y[i], "index": i}

    def batch(self, rows) -> dict[str, torch.Tensor]:
        """Rows `rows` as one collated batch (what a DataLoader would give)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return {self.modality: self.x[index], "label": self.y[index], "index": index}


@dataclass
class PreparedData:
    """A source's modalities and their split, fixed by the seed."""

    samples: dict[str, Samples]
    split: dict[str, dict[str, np.ndarray]]  # modality -> split name -> row indices

    def rows(self, modality: str, split: str) -> Samples:
        self._check(modality)
        return self.samples[modality].subset(self.split[modality][split])

    def _check(self, modality: str) -> None:
        if modality not in self.samples:
            raise CmkdError(
                f"modality '{modality}' not in this source; it has {sorted(self.samples)}"
            )

    @property
    def classes(self) -> list[str]:
        return next(iter(self.samples.values())).classes

    def scored_overlap(self, modality: str, train_ids: np.ndarray) -> tuple[str, int] | None:
        """The first of `modality`'s scored splits (val, test) holding ids of `train_ids`, and
        how many: a model trained on a view of a scored sample would inflate its score."""
        for split in ("val", "test"):
            n = int(np.isin(self.rows(modality, split).ids, train_ids).sum())
            if n:
                return split, n
        return None


def prepare_data(cfg: DataConfig, seed: int) -> PreparedData:
    """Load the configured source and split every modality with the same seed.

    Modalities of a paired source have the same labels in the same order, so they get the
    same split and their rows stay aligned.
    """
    from cmkd.data.sources import load_source, official_test_mask

    samples = load_source(cfg.source, resolve_data_root(cfg.root), **cfg.options)
    split = {}
    for modality, s in samples.items():
        mask = official_test_mask(cfg.source, s.ids) if cfg.split == "official" else None
        split[modality] = stratified_split(s.y, cfg.val_fraction, cfg.test_fraction, seed, mask)
        if cfg.train_per_class is not None:
            split[modality]["train"] = _per_class(
                s.y, split[modality]["train"], cfg.train_per_class, seed
            )
    return PreparedData(samples, split)


def _per_class(y: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first k rows of each class in a seeded order: the same subset for every modality of
    a paired source, and for every run with this seed."""
    if k < 1:
        raise CmkdError(f"train_per_class must be >= 1, got {k}")
    order = np.random.default_rng([seed, k]).permutation(rows)
    keep = [order[y[order] == label][:k] for label in np.unique(y[rows])]
    return np.sort(np.concatenate(keep))


class ModalityDataModule(L.LightningDataModule):
    """Train/val/test loaders of one modality; the training order is seeded per epoch."""

    def __init__(self, data: PreparedData, modality: str, batch_size: int, seed: int) -> None:
        super().__init__()
        data._check(modality)
        self.modality, self.batch_size, self.seed = modality, batch_size, seed
        self.sets = {name: ModalityDataset(data.rows(modality, name), modality) for name in SPLITS}

    def train_dataloader(self) -> DataLoader:
        train = self.sets["train"]
        return DataLoader(train, self.batch_size, sampler=SeededShuffle(len(train), self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], self.batch_size)
