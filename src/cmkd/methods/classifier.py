"""Supervised training of one network on one modality: the teacher and the no-KD student.

`ClassifierModule` is also the base of every distillation recipe: they share the student's
metrics, evaluation and optimiser, and add terms to the training loss. From Python it is
`cmkd.ClassifierTask`, built from a data module with `for_data`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.data.normalize import Standardize
from cmkd.epochs import EpochBlock
from cmkd.errors import CmkdError
from cmkd.models.adapter import AdaptedNetwork, as_network
from cmkd.models.model import StandardizedNetwork, build_model
from cmkd.models.outputs import ModelOutput
from cmkd.optim import lightning_optimizers
from cmkd.seeding import seeded

if TYPE_CHECKING:
    from cmkd.data.datamodule import ModalityDataModule, PreparedData


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _hint(backbone: str, x: torch.Tensor) -> str:
    if x.ndim == 2 and backbone not in ("mlp", "linear"):
        return "; these are vectors: use model.backbone mlp (or linear)"
    if x.ndim == 4 and backbone == "mlp":
        return "; these are images: use a convolutional backbone such as small_cnn"
    return ""


def random_flips_and_rotations(x: torch.Tensor) -> torch.Tensor:
    """Per-sample random horizontal flip and 90-degree rotation of a square image batch
    (the dihedral group: every orientation is as likely as any other)."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    turns = torch.randint(0, 4, (len(x),), device=x.device)
    out = x.clone()
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return out


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Stop training at a non-finite loss (`CmkdError`), before any checkpoint holds the
    diverged weights: every trained module calls this on each step's loss."""
    value = loss.item()  # one host sync per step; on the CPU, ~1 us
    if not math.isfinite(value):
        raise CmkdError(
            f"the training loss is {value} at epoch {epoch}, step {step}: training "
            f"diverged (optim.lr {lr:g}); stopped before any checkpoint saved it, the last "
            "one is kept. Lower --optim.lr and start again (--run.overwrite true) or resume "
            "from the last checkpoint (--run.resume true)"
        )


def network_spec(model: ModelConfig, data: PreparedData, modality: str) -> dict[str, Any]:
    """What rebuilds the network: backbone, input channels, classes and options."""
    x = data.samples[modality].x
    return {
        "backbone": model.backbone,
        "in_chans": int(x.shape[1]),
        "num_classes": len(data.classes),
        "pretrained": model.pretrained,
        "embedding_dim": model.embedding_dim,
        "options": dict(model.options),
    }


def module_args(
    model: ModelConfig,
    optim: OptimConfig,
    data_cfg: DataConfig | None,
    data: PreparedData,
    modality: str,
    seed: int,
) -> dict[str, Any]:
    """The arguments every task module shares (ClassifierModule's constructor). Without a data
    config (data handed in from Python) the checkpoint records no data to rebuild."""
    train_x = torch.as_tensor(data.rows(modality, "train").x).float()
    # Without standardisation the network still carries one (the identity), so every
    # checkpoint has the same shape.
    standardize = data_cfg is None or data_cfg.standardize
    normalize = (
        Standardize.fit(train_x) if standardize else Standardize.identity(int(train_x.shape[1]))
    )
    return dict(
        network=network_spec(model, data, modality),
        modality=modality,
        classes=data.classes,
        optim=asdict(optim),
        augment=data_cfg.augment if data_cfg is not None else False,
        data=asdict(data_cfg) if data_cfg is not None else None,
        seed=seed,
        normalize=normalize,
    )


def task_args(
    data: ModalityDataModule,
    model: ModelConfig | str | nn.Module,
    optim: OptimConfig | None,
    seed: int | None,
    augment: bool | None,
) -> dict[str, Any]:
    """`module_args` for a data module, with the network given by config, backbone name or as
    your own module (a cmkd network or `cmkd.adapt_network(...)`)."""
    seed = data.seed if seed is None else seed
    optim = optim or OptimConfig()
    custom = model if isinstance(model, nn.Module) else None
    if isinstance(model, str):
        model = ModelConfig(backbone=model)
    elif custom is not None:
        # The spec names the class; a checkpoint of it loads into your module
        # (`cmkd.load_model(path, network=module)`), never by rebuilding it from a name.
        inner = custom.module if isinstance(custom, AdaptedNetwork) else custom
        model = ModelConfig(backbone=f"custom:{type(inner).__name__}")
    args = module_args(model, optim, data.config, data.prepared, data.modality, seed)
    if custom is not None:
        args["network"]["custom"] = True
        example = args["normalize"](data.sets["train"].x[:2])
        args["custom_network"] = as_network(custom, example, len(data.classes))
    if augment is not None:
        args["augment"] = augment
    return args


class ClassifierModule(L.LightningModule):
    """A network on `modality` trained with cross-entropy; scored by overall accuracy, macro F1
    and per-class accuracy.

    Training metrics are logged once per epoch (the mean over its samples): `self.log` on every
    step costs Lightning about 0.1 ms of bookkeeping, more than a small model's step. A
    non-finite training loss stops the run at once (`CmkdError`), before any checkpoint holds
    the diverged weights."""

    not_hyperparameters: tuple[str, ...] = ("normalize", "custom_network")
    # training_step can take a cmkd.epochs.EpochBlock (several data epochs, manual
    # optimisation). A subclass whose loss depends on the epoch (pairings, warm-ups) sets False.
    supports_epoch_blocks: bool = True
    # True while the training batches come standardised for this network
    # (cmkd.served.standardized_once): training_output then skips the standardisation.
    inputs_standardized: bool = False
    # run.fused_optimizer, as the run's fit sets it (cmkd.training.fitted).
    fused_optimizer: bool | str = "auto"

    def __init__(
        self,
        network: dict[str, Any],
        modality: str,
        classes: list[str],
        optim: dict[str, Any],
        augment: bool = False,
        data: dict[str, Any] | None = None,
        seed: int = 0,
        normalize: Standardize | None = None,
        custom_network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # The spec, classes and data config are saved so a checkpoint rebuilds itself; this
        # also collects a subclass's own init arguments, minus what is not a hyperparameter.
        self.save_hyperparameters(ignore=list(self.not_hyperparameters))
        # Seeded by (seed, role), not by whatever was built before: for one seed the network
        # starts from the same weights in every recipe and method (paired comparisons).
        with seeded(seed, "network"):
            if custom_network is None:
                self.model = build_model(network, normalize)
            else:  # the user's own network, built (and initialised) by the user
                standardize = normalize or Standardize.identity(network["in_chans"])
                self.model = StandardizedNetwork(custom_network, standardize)
        self.modality, self.classes, self.augment = modality, list(classes), augment
        k = len(classes)
        # Labels are checked when the data is loaded (cmkd.data.samples): torchmetrics' own
        # per-update argument checks would only cost time at every evaluation.
        checks = {"validate_args": False}
        self.metrics = torch.nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "acc": MulticlassAccuracy(k, average="micro", **checks),
                        "f1": MulticlassF1Score(k, average="macro", **checks),
                    },
                    prefix=f"{stage}/",
                )
                for stage in ("val", "test")
            }
        )
        # The evaluation loss as a metric too: one log call per evaluation, not one per batch,
        # and its compute() weighs every rank's samples like the accuracy does.
        self.losses = torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.per_class = MulticlassAccuracy(k, average=None, **checks)
        self._epoch_logs: dict[str, list[tuple[torch.Tensor, int]]] = {}
        self._block_epoch: int | None = None  # the data epoch last trained in a block

    @classmethod
    def for_data(
        cls,
        data: ModalityDataModule,
        model: ModelConfig | str | nn.Module = "small_cnn",
        optim: OptimConfig | None = None,
        *,
        seed: int | None = None,
        augment: bool | None = None,
    ) -> ClassifierModule:
        """A network trained with cross-entropy on `data`'s modality (a teacher, or a student
        without KD), for any `lightning.Trainer`.

        Args:
            data: The data module (`cmkd.DataModule.from_source(...)`, `from_arrays`, ...);
                its classes, input channels and training statistics size the network.
            model: A `ModelConfig`, a backbone name ("small_cnn", "resnet18", any timm name),
                or your own module: a cmkd network or `cmkd.adapt_network(module, ...)`.
            optim: Optimiser, learning rate and epochs (the cosine schedule's length; give
                the Trainer the same max_epochs). Default `OptimConfig()`.
            seed: Initialises the network by (seed, "network"), as `cmkd train` does: for
                one seed every task starts from the same weights. Default: the data's seed.
            augment: Random flips and 90-degree rotations of square images; default the data
                config's `augment` (False for data from Python).
        """
        module = cls(**task_args(data, model, optim, seed, augment))
        module.check_batch(data.sets["train"].batch(range(min(2, len(data.sets["train"])))))
        return module

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """The network on raw inputs (standardised inside): logits, embedding, feature map."""
        return self.model(x)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities of a batch: a cmkd batch dict, an (x, ...) tuple or a tensor."""
        if isinstance(batch, dict):
            x = batch[self.modality]
        elif isinstance(batch, tuple | list):
            x = batch[0]
        else:
            x = batch
        return self.model(x).logits.float().softmax(dim=1)

    def student_input(self, batch: dict, train: bool) -> torch.Tensor:
        x = batch[self.modality]
        if train and self.augment and x.ndim == 4 and x.shape[-1] == x.shape[-2]:
            x = random_flips_and_rotations(x)
        return x

    def check_batch(self, batch: dict) -> None:
        """Run one batch through the network without training (and without gradients or side
        effects): a CmkdError if the network cannot take these inputs."""
        x = batch[self.modality].float()
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(x)
        except (RuntimeError, ValueError, IndexError) as err:
            raise CmkdError(
                f"backbone '{self.hparams.network['backbone']}' cannot take the "
                f"{self.modality!r} inputs of shape {tuple(x.shape[1:])}: {_first_line(err)}"
                + _hint(self.hparams.network["backbone"], x)
            ) from None
        finally:
            self.model.train(was)

    def training_output(self, batch: dict) -> ModelOutput:
        """The network on a training batch: augmented where set, standardised unless the
        batch already is (`inputs_standardized`; flips and rotations commute with a
        per-channel standardisation, so the order changes no value)."""
        x = self.student_input(batch, train=True)
        return self.model.network(x) if self.inputs_standardized else self.model(x)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; their sum is optimised."""
        out = self.training_output(batch)
        return {"ce": F.cross_entropy(out.logits, batch["label"])}

    def training_step(self, batch: dict | EpochBlock, batch_idx: int) -> torch.Tensor | None:
        if isinstance(batch, EpochBlock):
            self._train_block(batch)
            return None
        terms = self.training_losses(batch)
        loss = self._total(terms)
        self._check_finite(loss, self.current_epoch, batch_idx)
        self._log_terms(terms, loss, len(batch["label"]))
        return loss

    def _train_block(self, block: EpochBlock) -> None:
        """Several data epochs in one Lightning step: per batch what automatic optimisation
        does (forward, zero_grad, backward, step), the scheduler stepped after each epoch.
        Without a gradient scaler (32-true, bf16) the step is plain torch: Lightning's
        per-step optimiser hooks are not called inside a block."""
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        optimizer = self.optimizers(use_pl_optimizer=scaled)
        scheduler = self.lr_schedulers()
        for epoch in block.epochs:
            self._block_epoch = epoch
            for step, batch in enumerate(block.batches(epoch, self.device)):
                terms = self.training_losses(batch)
                loss = self._total(terms)
                self._check_finite(loss, epoch, step)
                optimizer.zero_grad()
                if scaled:
                    self.manual_backward(loss)
                else:
                    loss.backward()
                optimizer.step()
                self._log_terms(terms, loss, len(batch["label"]))
            if scheduler is not None:
                scheduler.step()

    @staticmethod
    def _total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
        values = list(terms.values())
        return values[0] if len(values) == 1 else torch.stack(values).sum()

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        check_finite_loss(loss, epoch, step, self.hparams.optim["lr"])

    def _log_terms(self, terms: dict[str, torch.Tensor], loss: torch.Tensor, size: int) -> None:
        if len(terms) > 1:  # a single term is the loss: Lightning charges ~1 ms per key logged
            for name, value in terms.items():
                self.log_epoch_mean(f"train/{name}", value, size)
        self.log_epoch_mean("train/loss", loss, size)

    def log_epoch_mean(self, name: str, value: torch.Tensor | float, size: int) -> None:
        """Log `name` at the end of the epoch as its mean over the epoch's samples (what
        `self.log(..., on_step=False, on_epoch=True, batch_size=size)` logs), without
        Lightning's per-call cost."""
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        self._epoch_logs.setdefault(name, []).append((value, size))

    def _log_data_epoch(self) -> None:
        """In a run of blocks, Lightning's epoch counts blocks: the logs carry the data epoch
        instead (loggers take a logged `epoch` over Lightning's own)."""
        if self._block_epoch is not None:
            self.log("epoch", float(self._block_epoch), on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self._log_data_epoch()
        for name, entries in self._epoch_logs.items():
            device = entries[0][0].device
            values = torch.stack([v.float().to(device) for v, _ in entries])
            sizes = torch.tensor([n for _, n in entries], dtype=values.dtype, device=values.device)
            mean = (values * sizes).sum() / sizes.sum()
            self.log(name, mean, on_step=False, on_epoch=True, prog_bar=name == "train/loss")
        self._epoch_logs = {}

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self.model(batch[self.modality]).logits
        loss = F.cross_entropy(logits, batch["label"])
        self.losses[stage].update(loss, len(logits))
        self.metrics[stage].update(logits, batch["label"])
        if stage == "test":
            self.per_class.update(logits, batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # torchmetrics' compute() already gathers every DDP rank's counts, so each rank logs the
    # same global value; sync_dist=True only says so to Lightning (a mean of equal values).
    def _stage_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = {**self.metrics[stage].compute(), f"{stage}/loss": self.losses[stage].compute()}
        self.metrics[stage].reset()
        self.losses[stage].reset()
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._log_data_epoch()
        self.log_dict(self._stage_metrics("val"), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        metrics = self._stage_metrics("test")
        for name, acc in zip(self.classes, self.per_class.compute(), strict=True):
            metrics[f"test/acc_class/{name}"] = acc
        self.per_class.reset()
        self.log_dict(metrics, sync_dist=True)

    def configure_optimizers(self):
        return lightning_optimizers(self.parameters(), self.hparams.optim, self.fused_optimizer)
