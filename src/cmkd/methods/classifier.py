"""Supervised training of one network on one modality: the teacher and the no-KD student.

`ClassifierModule` is also the base of every distillation recipe: they share the student's
metrics, evaluation and optimiser, and add terms to the training loss.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.models.model import build_model
from cmkd.seeding import seeded


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _hint(backbone: str, x: torch.Tensor) -> str:
    if x.ndim == 2 and backbone != "mlp":
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


class ClassifierModule(L.LightningModule):
    """A network on `modality` trained with cross-entropy; scored by overall accuracy, macro F1
    and per-class accuracy."""

    not_hyperparameters: tuple[str, ...] = ("normalize",)

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
    ) -> None:
        super().__init__()
        # The spec, classes and data config are saved so a checkpoint rebuilds itself; this
        # also collects a subclass's own init arguments, minus what is not a hyperparameter.
        self.save_hyperparameters(ignore=list(self.not_hyperparameters))
        # Seeded by (seed, role), not by whatever was built before: for one seed the network
        # starts from the same weights in every recipe and method (paired comparisons).
        with seeded(seed, "network"):
            self.model = build_model(network, normalize)
        self.modality, self.classes, self.augment = modality, list(classes), augment
        k = len(classes)
        self.metrics = torch.nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "acc": MulticlassAccuracy(k, average="micro"),
                        "f1": MulticlassF1Score(k, average="macro"),
                    },
                    prefix=f"{stage}/",
                )
                for stage in ("val", "test")
            }
        )
        self.per_class = MulticlassAccuracy(k, average=None)

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

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; their sum is optimised."""
        out = self.model(self.student_input(batch, train=True))
        return {"ce": F.cross_entropy(out.logits, batch["label"])}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.training_losses(batch)
        loss = torch.stack(list(terms.values())).sum()
        size = len(batch["label"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self.model(batch[self.modality]).logits
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{stage}/loss", loss, batch_size=len(logits), sync_dist=True)
        self.metrics[stage].update(logits, batch["label"])
        if stage == "test":
            self.per_class.update(logits, batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # torchmetrics' compute() already gathers every DDP rank's counts, so each rank logs the
    # same global value; sync_dist=True only says so to Lightning (a mean of equal values).
    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.metrics["val"].compute(), prog_bar=True, sync_dist=True)
        self.metrics["val"].reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.metrics["test"].compute(), sync_dist=True)
        self.metrics["test"].reset()
        for name, acc in zip(self.classes, self.per_class.compute(), strict=True):
            self.log(f"test/acc_class/{name}", acc, sync_dist=True)
        self.per_class.reset()

    def configure_optimizers(self):
        cfg = self.hparams.optim
        params = [p for p in self.parameters() if p.requires_grad]
        kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        extra = {}
        if cfg["optimizer"] == "sgd":  # checkpoints from before these options: momentum 0.9
            extra = {"momentum": cfg.get("momentum", 0.9), "nesterov": cfg.get("nesterov", False)}
        opt = kinds[cfg["optimizer"]](
            params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], **extra
        )
        if cfg.get("scheduler", "none") == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt
