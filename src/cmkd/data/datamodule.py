"""From a configured source to Lightning dataloaders.

Everything here is in memory: the datasets of this field are small once decoded, and indexing
a tensor beats per-file I/O in the training loop. Batches are dicts keyed by modality name:
{modality: x, "label": y, "index": row within the split}. "index" is what a pairing maps to a
teacher sample.

`ModalityDataModule` (public name `cmkd.DataModule`) is built from a configured source
(`from_source`, `from_config`), the data a checkpoint was trained on (`from_checkpoint`), or the
user's own arrays or torch Dataset (`from_arrays`, `from_dataset`, see `cmkd.data.memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cmkd.config import DataConfig
from cmkd.data.memory import ArrayLike, columns_of_datasets, explicit_split, samples_from_arrays
from cmkd.data.root import resolve_data_root
from cmkd.data.samples import Samples
from cmkd.data.splits import carried_split, stratified_split
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


class StandardizedSplit(ModalityDataset):
    """A split whose inputs are standardised once for one network (`standardize`, e.g. a
    `StandardizedNetwork`'s), in the layout that network takes, with the split's labels: what
    the training loader serves while `cmkd.served.standardized_once` is open. A DataLoader
    gets each batch whole (`__getitems__`: one gather, which keeps a channels-last layout where
    stacking per-sample rows would give the standard one back) through `whole_batch`."""

    def __init__(
        self, split: ModalityDataset, standardize: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        with torch.no_grad():
            self.x = standardize(split.x)
        self.y, self.modality = split.y, split.modality

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.batch(rows)


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function of a loader whose dataset gathers each batch whole."""
    return batch


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
    same split and their rows stay aligned. Every class must keep a training sample.
    """
    from cmkd.data.sources import load_source

    samples = load_source(cfg.source, resolve_data_root(cfg.root), **cfg.options)
    split = {}
    for modality, s in samples.items():
        split[modality] = _split_rows(cfg, s, seed)
        if cfg.train_per_class is not None:
            split[modality]["train"] = _per_class(
                s.y, split[modality]["train"], cfg.train_per_class, seed
            )
        _check_train_split(cfg, modality, s, split[modality]["train"])
    return PreparedData(samples, split)


def _split_rows(cfg: DataConfig, samples: Samples, seed: int) -> dict[str, np.ndarray]:
    """auto: the split the data carries (an npz with test arrays or a split array), else
    stratified; official: the carried split or the source's published one (FSDD)."""
    from cmkd.data.sources import official_test_mask

    mode = cfg.split
    if mode == "auto":
        mode = "official" if samples.split is not None else "stratified"
    if mode == "stratified":
        return stratified_split(
            samples.y, cfg.val_fraction, cfg.test_fraction, seed, classes=samples.classes
        )
    if samples.split is not None:
        trained = np.bincount(samples.y[samples.split == "train"], minlength=len(samples.classes))
        if (trained == 0).any():
            name = samples.classes[int(np.flatnonzero(trained == 0)[0])]
            raise CmkdError(
                f"class {name!r} has no training sample in {_where(cfg)}: the split it carries "
                "puts all of them in val or test; every class needs one"
            )
        return carried_split(samples.y, samples.split, cfg.val_fraction, seed, samples.classes)
    mask = official_test_mask(cfg.source, samples.ids)
    return stratified_split(
        samples.y, cfg.val_fraction, cfg.test_fraction, seed, mask, classes=samples.classes
    )


def _check_train_split(cfg: DataConfig, modality: str, samples: Samples, rows: np.ndarray) -> None:
    """A class with no training sample would be a class the model never sees, scored as
    errors (or absent from every split): refused, naming it."""
    counts = np.bincount(samples.y[rows], minlength=len(samples.classes))
    if not len(rows):
        raise CmkdError(f"the train split of {_where(cfg)} ({modality}) is empty")
    if (counts == 0).any():
        name = samples.classes[int(np.flatnonzero(counts == 0)[0])]
        raise CmkdError(
            f"class {name!r} has no training sample in {_where(cfg)} ({modality}, split "
            f"{cfg.split}); every class needs one: add samples or drop the class"
        )


def _where(cfg: DataConfig) -> str:
    """The data in an error message: the user's file where there is one."""
    path = cfg.options.get("path")
    return f"npz file {path}" if cfg.source == "npz" and path else f"data source {cfg.source!r}"


def _per_class(y: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first k rows of each class in a seeded order: the same subset for every modality of
    a paired source, and for every run with this seed."""
    if k < 1:
        raise CmkdError(f"train_per_class must be >= 1, got {k}")
    order = np.random.default_rng([seed, k]).permutation(rows)
    keep = [order[y[order] == label][:k] for label in np.unique(y[rows])]
    return np.sort(np.concatenate(keep))


def check_no_leak(teacher_train_ids: np.ndarray, student: PreparedData, modality: str) -> None:
    """A teacher trained on any of the student's validation or test samples (same id, any
    modality) would inflate the student's score: refused."""
    leak = student.scored_overlap(modality, teacher_train_ids)
    if leak:
        raise CmkdError(
            f"the teacher was trained on {leak[1]} samples of the student's {leak[0]} split "
            "(same ids): train it with the same split and seed, or on disjoint samples"
        )


def checkpoint_data_config(hparams: dict[str, Any], **overrides: Any) -> DataConfig:
    """The data config a cmkd checkpoint was trained with (source, options, split), with
    `overrides` (e.g. the root, resolved on this machine). A network trained on data handed in
    from Python records none: a CmkdError says so."""
    if hparams.get("data") is None:
        raise CmkdError(
            "this checkpoint was trained on data given from Python (arrays or a Dataset) and "
            "records no source to rebuild it from; pass that data yourself"
        )
    return DataConfig(**{**hparams["data"], **overrides})


def trained_on(
    hparams: dict[str, Any], data: DataConfig | None, seed: int, prepared: PreparedData | None
) -> PreparedData:
    """The data a checkpoint's network was trained on (source, split, seed from its
    hyperparameters), with the data root of `data` (resolved here, not remembered): `prepared`
    itself when it is the same source, split and seed (one paired source)."""
    config = checkpoint_data_config(hparams, root=data.root if data is not None else None)
    split_keys = ("source", "options", "val_fraction", "test_fraction", "split")
    same = data is not None and all(getattr(config, k) == getattr(data, k) for k in split_keys)
    if same and prepared is not None and hparams["seed"] == seed:
        return prepared
    return prepare_data(config, hparams["seed"])


class ModalityDataModule(L.LightningDataModule):
    """Train/val/test loaders of one modality; the training order is seeded per epoch."""

    def __init__(
        self,
        data: PreparedData,
        modality: str,
        batch_size: int,
        seed: int,
        config: DataConfig | None = None,
    ) -> None:
        super().__init__()
        data._check(modality)
        if batch_size < 1:
            raise CmkdError(f"batch_size must be >= 1, got {batch_size}")
        self.modality, self.batch_size, self.seed = modality, batch_size, seed
        # Every modality and split, for a teacher on another modality of the same samples
        # (`with_modality`) and for the pairing; `config` rebuilds them (None: from Python).
        self.prepared, self.config = data, config
        self.sets = {name: ModalityDataset(data.rows(modality, name), modality) for name in SPLITS}
        # The training split standardised once for the network being fitted, served in place
        # of sets["train"] while `cmkd.served.standardized_once` is open; else None.
        self.served: StandardizedSplit | None = None

    @classmethod
    def from_config(cls, config: DataConfig, modality: str, seed: int = 0) -> ModalityDataModule:
        """`modality` of a configured source, split by `seed` (what `cmkd train` does)."""
        return cls(prepare_data(config, seed), modality, config.batch_size, seed, config)

    @classmethod
    def from_source(
        cls,
        source: str,
        modality: str,
        *,
        options: Mapping[str, Any] | None = None,
        root: str | Path | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split: Literal["auto", "stratified", "official"] = "auto",
        train_per_class: int | None = None,
        batch_size: int = 64,
        augment: bool = False,
        standardize: bool = True,
        seed: int = 0,
    ) -> ModalityDataModule:
        """`modality` of a built-in source (eurosat_paired, eurosat_ms, eurosat_rgb, fsdd,
        mnist, mfeat, ucmerced, folder, npz; the fields are `cmkd.DataConfig`'s), split by `seed`.
        Another modality of the same samples and split: `.with_modality(name)`."""
        config = DataConfig(
            source=source,
            options=dict(options or {}),
            root=None if root is None else str(root),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split=split,
            train_per_class=train_per_class,
            batch_size=batch_size,
            augment=augment,
            standardize=standardize,
        )
        return cls.from_config(config, modality, seed)

    @classmethod
    def from_arrays(
        cls,
        x: ArrayLike | Mapping[str, ArrayLike],
        y: ArrayLike,
        *,
        modality: str | None = None,
        ids: ArrayLike | None = None,
        classes: Sequence[str] | None = None,
        splits: Mapping[str, ArrayLike] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        seed: int = 0,
    ) -> ModalityDataModule:
        """Your arrays (numpy or torch): `x` N x D or N x C x H x W, or {modality: x} for
        several row-aligned modalities (`modality` picks this module's); `y` integer labels
        0..K-1 named by `classes`. `splits` gives the train/val/test rows; else a stratified
        split by `seed` and the fractions. `ids` name the samples (see `cmkd.data.memory`)."""
        if modality is None:
            modality = _only_modality(x)
        samples = samples_from_arrays(x, y, modality=modality, ids=ids, classes=classes)
        labels = next(iter(samples.values())).y
        if splits is not None:
            rows = explicit_split(len(labels), splits)
        else:
            rows = stratified_split(labels, val_fraction, test_fraction, seed)
        prepared = PreparedData(samples, {name: rows for name in samples})
        return cls(prepared, modality, batch_size, seed)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        *,
        val: Dataset | None = None,
        test: Dataset | None = None,
        modality: str | None = None,
        classes: Sequence[str] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        seed: int = 0,
    ) -> ModalityDataModule:
        """Your torch Dataset(s), read once into memory. Items are (x, y) tuples (the modality
        is then named `modality`, default "x") or dicts {modality: x, ..., "label": y, "id":
        optional id}. A split not given as a Dataset (`val`, `test`) is drawn from `dataset`
        (stratified by `seed`, with its fraction)."""
        xs, y, ids, rows = columns_of_datasets(
            {"train": dataset, "val": val, "test": test},
            modality or "x",
            val_fraction,
            test_fraction,
            seed,
        )
        return cls.from_arrays(
            xs,
            y,
            modality=modality or _only_modality(xs),
            ids=ids,
            classes=classes,
            splits=rows,
            batch_size=batch_size,
            seed=seed,
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        weights: Literal["best", "last"] = "best",
        root: str | Path | None = None,
        batch_size: int | None = None,
    ) -> ModalityDataModule:
        """The data, modality and split a cmkd checkpoint (or run folder) was trained on: its
        test split is the one the run never selected on. `root`: where the data is on this
        machine, if not where the run found it."""
        from cmkd.checkpoints import read_checkpoint, resolve_checkpoint

        hparams = read_checkpoint(resolve_checkpoint(checkpoint, weights)).get("hyper_parameters")
        if not isinstance(hparams, dict) or "modality" not in hparams:
            raise CmkdError(f"{checkpoint} was not written by cmkd train or distill")
        # The recorded root unless another is given (as `cmkd evaluate --data-root`).
        config = checkpoint_data_config(hparams, **({} if root is None else {"root": str(root)}))
        if batch_size is not None:
            config = DataConfig(**{**asdict(config), "batch_size": batch_size})
        return cls.from_config(config, hparams["modality"], hparams["seed"])

    def with_modality(self, modality: str) -> ModalityDataModule:
        """Another modality of the same samples, split the same way (a paired source)."""
        return type(self)(self.prepared, modality, self.batch_size, self.seed, self.config)

    @property
    def classes(self) -> list[str]:
        return self.prepared.classes

    def __repr__(self) -> str:
        source = self.config.source if self.config is not None else "python"
        sizes = ", ".join(f"{name} {len(self.sets[name])}" for name in SPLITS)
        return f"{type(self).__name__}({source}: {self.modality!r}, {sizes}, seed {self.seed})"

    def training_split(self) -> ModalityDataset:
        """What training batches are drawn from: the split standardised once where a fit
        serves it so (`served`), else the raw training split."""
        return self.served if self.served is not None else self.sets["train"]

    def train_dataloader(self) -> DataLoader:
        train = self.training_split()
        return DataLoader(
            train,
            self.batch_size,
            sampler=SeededShuffle(len(train), self.seed),
            collate_fn=whole_batch if isinstance(train, StandardizedSplit) else None,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (`trainer.predict(task, datamodule=dm)`)."""
        # batch_size by name: Lightning rebuilds prediction loaders from their arguments.
        return DataLoader(self.sets["test"], batch_size=self.batch_size)


def _only_modality(x: Any) -> str:
    if not isinstance(x, Mapping):
        return "x"
    if len(x) != 1:
        raise CmkdError(f"several modalities {sorted(x)}: choose this module's with modality=")
    return next(iter(x))
