"""Several modalities trained at once without pairs (DisCoM-KD): each modality's training set is
shuffled on its own and one batch of every modality is drawn per step.

Each modality comes from a configured source (`DataConfig`) and is split with the existing
`prepare_data`. Modalities of one source configuration (mfeat's six views, the EuroSAT twins)
share one preparation, hence one split by sample: no test sample of one view is another view's
training sample. Sources of different configurations (spoken and written digits) are split
independently. A check on sample ids refuses any overlap between one modality's training rows
and another's validation or test rows.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Sampler

from cmkd.config import DataConfig, ModalitySpec
from cmkd.data.datamodule import ModalityDataset, PreparedData, prepare_data
from cmkd.data.samples import Samples
from cmkd.errors import CmkdError


class CyclingShuffle(Sampler[int]):
    """`length` indices of a set of `n`: fresh seeded permutations of the whole set, one after
    the other, cut at `length`. length > n: a smaller set cycles, reshuffled each pass;
    length < n: a random subset each epoch. The order depends on (seed, stream, epoch) only, so
    modalities (streams) are shuffled independently and a resumed run repeats it."""

    def __init__(self, n: int, length: int, seed: int, stream: int = 0) -> None:
        if n < 1 or length < 1:
            raise CmkdError(f"cannot draw {length} samples from a set of {n}")
        self.n, self.length, self.seed, self.stream, self.epoch = n, length, seed, stream, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        passes = -(-self.length // self.n)
        order = np.concatenate(
            [
                np.random.default_rng([self.seed, self.stream, self.epoch, p]).permutation(self.n)
                for p in range(passes)
            ]
        )
        return iter(order[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


def prepare_modalities(specs: list[ModalitySpec], seed: int) -> dict[str, PreparedData]:
    """Each modality's prepared data (shared between modalities of one source config), checked
    for cross-modality leaks."""
    names = [s.name for s in specs]
    if len(specs) < 2:
        raise CmkdError(f"DisCoM-KD needs at least 2 modalities, got {names}")
    if len(set(names)) != len(names):
        raise CmkdError(f"modality names must be distinct, got {names}")
    done: list[tuple[DataConfig, PreparedData]] = []
    out: dict[str, PreparedData] = {}
    for spec in specs:
        prepared = next((p for cfg, p in done if cfg == spec.data), None)
        if prepared is None:
            prepared = prepare_data(spec.data, seed)
            done.append((spec.data, prepared))
        prepared._check(spec.name)
        out[spec.name] = prepared
    classes = {n: p.classes for n, p in out.items()}
    first = names[0]
    for name in names[1:]:
        if classes[name] != classes[first]:
            raise CmkdError(
                f"modalities {first} and {name} have different classes: "
                f"{classes[first]} vs {classes[name]}"
            )
    check_no_cross_leak(out)
    return out


def check_no_cross_leak(prepared: dict[str, PreparedData]) -> None:
    """Refuse a sample id that is in one modality's training split and in another's validation
    or test split: the joint model would have trained on a view of a scored sample."""
    for a, pa in prepared.items():
        train_ids = pa.rows(a, "train").ids
        for b, pb in prepared.items():
            leak = pb.scored_overlap(b, train_ids) if a != b else None
            if leak:
                raise CmkdError(
                    f"{leak[1]} samples of modality {b}'s {leak[0]} split are in modality {a}'s "
                    "training split (same ids): split both with the same source config and seed"
                )


def with_fused(prepared: PreparedData, names: list[str], fused: str = "fused") -> PreparedData:
    """`prepared` plus a modality `fused`: the row-aligned views `names` concatenated along
    dim 1 (features of vectors, channels of same-size images), for an early-fusion multi-modal
    teacher. Views must share ids row by row (one paired source)."""
    views = [prepared.samples[n] for n in names]
    for n, v in zip(names[1:], views[1:], strict=True):
        if not np.array_equal(v.ids, views[0].ids):
            raise CmkdError(f"cannot fuse {names[0]} and {n}: their rows are not the same samples")
    try:
        x = np.concatenate([v.x.astype(np.float32) for v in views], axis=1)
    except ValueError as err:
        raise CmkdError(f"cannot fuse {names}: {err}") from None
    samples = {
        **prepared.samples,
        fused: Samples(x, views[0].y, views[0].ids, views[0].classes),
    }
    split = {**prepared.split, fused: prepared.split[names[0]]}
    return PreparedData(samples, split)


def epoch_size(sizes: list[int], epoch_length: str, batch_size: int) -> int:
    """Samples drawn per modality per epoch: the largest or the smallest training set. One more
    when the last batch would hold a single sample, which BatchNorm cannot train on."""
    if epoch_length not in ("largest", "smallest"):
        raise CmkdError(f"epoch_length must be 'largest' or 'smallest', got {epoch_length!r}")
    length = max(sizes) if epoch_length == "largest" else min(sizes)
    return length + 1 if length % batch_size == 1 else length


class MultiModalDataModule(L.LightningDataModule):
    """Training: a dict {modality: batch of that modality} per step, every modality shuffled on
    its own (no pairs). Validation and test: one loader per modality, in modality order."""

    def __init__(
        self,
        prepared: dict[str, PreparedData],
        batch_size: int,
        seed: int,
        epoch_length: Literal["largest", "smallest"] = "largest",
    ) -> None:
        super().__init__()
        self.names = list(prepared)
        self.batch_size, self.seed = batch_size, seed
        self.sets = {
            split: {m: ModalityDataset(p.rows(m, split), m) for m, p in prepared.items()}
            for split in ("train", "val", "test")
        }
        sizes = [len(s) for s in self.sets["train"].values()]
        self.length = epoch_size(sizes, epoch_length, batch_size)

    def train_dataloader(self) -> CombinedLoader:
        loaders = {
            m: DataLoader(
                ds,
                self.batch_size,
                sampler=CyclingShuffle(len(ds), self.length, self.seed, stream=i),
            )
            for i, (m, ds) in enumerate(self.sets["train"].items())
        }
        # Every loader has the same length, so min_size drops nothing.
        return CombinedLoader(loaders, mode="min_size")

    def _eval(self, split: str) -> list[DataLoader]:
        return [DataLoader(self.sets[split][m], 512) for m in self.names]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval("test")


def first_batch(dm: MultiModalDataModule) -> dict[str, dict[str, torch.Tensor]]:
    """The first training batch (epoch 0), for tests and shape checks."""
    batch, *_ = next(iter(dm.train_dataloader()))
    return batch
