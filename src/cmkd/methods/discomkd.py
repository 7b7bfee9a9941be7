"""DisCoM-KD (Ienco & Dantas, BMVC 2024): one joint, disentangled training that yields a
single-modality classifier for every modality, with no teacher and no pairs.

Loss (every weight 1 by default), over the concatenated batches of all M modalities:
  cl   CE of each modality's task head Cl_m on concat(z_inv, z_inf)
  aux  CE of the shared head Cl_aux on z_inv, plus on z_inf
  mod  modality CE of one shared head on z_inf and another on z_irr
  adv  modality CE of the discriminator D on GRL(z_inv): through the reversal, E_inv learns to
       hide the modality
  orth mean |cos(z_inf, z_irr)| + mean |cos(z_inf, z_inv)|

Departures from the authors' code (github tanodino/CMKD_Disentangle), each on purpose:
- Modality targets are integer labels 0..M-1. The authors' targets are float tensors of ones
  (first modality) and zeros (second) shaped like the logits, which cross-entropy reads as soft
  targets: neither mod nor adv is then a modality classifier. `authors_soft_targets: true`
  reproduces that (ones for the first modality, zeros for every other).
- |cos| instead of cos: identical for the authors' non-negative (post-ReLU) features, and still
  minimal at orthogonality where a backbone's output can be negative (a linear projection).
- Any M >= 2 modalities; shared heads are M-way.
- Model selection per modality on its validation split (weighted F1 by default, as the authors;
  `select_on: acc` also offered): the module keeps each student's weights of its best epoch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from cmkd.config import DISCOMKD_TERMS, DisComConfig, ModalitySpec, OptimConfig, RunConfig
from cmkd.data.multimodal import MultiModalDataModule, prepare_modalities
from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.io import write_json
from cmkd.losses.logits import grad_reverse
from cmkd.methods.classifier import random_flips_and_rotations
from cmkd.models.discomkd import (
    DisComStudent,
    count_parameters,
    export_student,
    single_backbone_parameters,
)
from cmkd.models.inference import predict
from cmkd.precision import resolve_precision
from cmkd.training import open_run_dir

# The run settings live in cmkd.config (the CLI reads them without importing this module).
TERMS = DISCOMKD_TERMS


def modality_targets(
    sizes: list[int], authors_soft_targets: bool = False, device: torch.device | None = None
) -> torch.Tensor:
    """Targets of the modality heads for batches of `sizes` samples, in modality order: integer
    labels 0..M-1, or (reproduction only) the authors' float ones / zeros, shaped N x M."""
    if not authors_soft_targets:
        return torch.cat(
            [torch.full((n,), m, dtype=torch.long, device=device) for m, n in enumerate(sizes)]
        )
    m = len(sizes)
    return torch.cat(
        [torch.full((n, m), 1.0 if i == 0 else 0.0, device=device) for i, n in enumerate(sizes)]
    )


def orthogonality_loss(
    z_inf: torch.Tensor, z_irr: torch.Tensor, z_inv: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """mean |cos(z_inf, z_irr)| + mean |cos(z_inf, z_inv)| over the batch: 0 when z_inf is
    orthogonal to both, at most 2."""
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1, eps=eps).abs().mean()  # noqa: E731
    return cos(z_inf, z_irr) + cos(z_inf, z_inv)


def grl_lambda(factor: float, schedule: str, progress: float) -> float:
    if schedule == "constant":
        return factor
    if schedule == "dann":
        return factor * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)
    raise CmkdError(f"unknown grl_schedule {schedule!r}; use constant or dann")


class DisComKDModule(L.LightningModule):
    """The joint model: one `DisComStudent` per modality plus the training-only heads."""

    def __init__(
        self,
        networks: dict[str, dict[str, Any]],
        classes: list[str],
        optim: dict[str, Any],
        discomkd: dict[str, Any],
        seed: int = 0,
        normalizers: dict[str, Standardize] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["normalizers"])
        self.names = list(networks)
        self.classes = list(classes)
        self.cfg = DisComConfig(**discomkd)
        unknown = set(self.cfg.weights) - set(TERMS)
        if unknown:
            raise CmkdError(f"unknown DisCoM-KD term weights {sorted(unknown)}; terms: {TERMS}")
        self.weights = {t: float(self.cfg.weights.get(t, 1.0)) for t in TERMS}
        latent = self.cfg.latent_dim or self._default_latent(networks)
        k, m = len(classes), len(networks)
        normalizers = normalizers or {}
        self.students = nn.ModuleDict(
            {
                name: DisComStudent(spec, k, latent, normalizers.get(name))
                for name, spec in networks.items()
            }
        )
        self.aux = nn.Linear(latent, k)  # Cl_aux, shared by every modality
        self.mod_inf = nn.Linear(latent, m)  # modality head on z_inf
        self.mod_irr = nn.Linear(latent, m)  # modality head on z_irr
        self.discriminator = nn.Linear(latent, m)  # D, behind the gradient reversal
        self.latent_dim = latent
        self._val: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in self.names}
        # Per-modality selection: each student's weights at its best validation epoch.
        self.best: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _default_latent(networks: dict[str, dict[str, Any]]) -> int:
        from cmkd.models.discomkd import encoder_width

        halves = {n: encoder_width(s) // 2 for n, s in networks.items()}
        if len(set(halves.values())) != 1 or min(halves.values()) < 1:
            raise CmkdError(
                f"the modalities' encoders give different half-widths {halves}: set "
                "discomkd.latent_dim (the shared auxiliary head needs one width)"
            )
        return next(iter(halves.values()))

    def _progress(self) -> float:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        return min(1.0, self.global_step / total) if total else 1.0

    def training_losses(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The five named terms, unweighted, from one batch per modality."""
        z_inv, z_inf, z_irr, logits, labels, sizes = [], [], [], [], [], []
        for name in self.names:
            x = batch[name][name]
            if self.cfg.augment and x.ndim == 4 and x.shape[-1] == x.shape[-2]:
                x = random_flips_and_rotations(x)
            student = self.students[name]
            inv, inf, irr = student.parts(x)
            logits.append(student.classifier(torch.cat([inv, inf], dim=1)))
            z_inv.append(inv)
            z_inf.append(inf)
            z_irr.append(irr)
            labels.append(batch[name]["label"])
            sizes.append(len(x))
        inv, inf, irr, y = (torch.cat(t) for t in (z_inv, z_inf, z_irr, labels))
        t = modality_targets(sizes, self.cfg.authors_soft_targets, inv.device)
        lam = grl_lambda(self.cfg.grl_factor, self.cfg.grl_schedule, self._progress())
        return {
            "cl": F.cross_entropy(torch.cat(logits), y),
            "aux": F.cross_entropy(self.aux(inv), y) + F.cross_entropy(self.aux(inf), y),
            "mod": F.cross_entropy(
                torch.cat([self.mod_inf(inf), self.mod_irr(irr)]), torch.cat([t, t])
            ),
            "adv": F.cross_entropy(self.discriminator(grad_reverse(inv, lam)), t),
            "orth": orthogonality_loss(inf, irr, inv),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.training_losses(batch)
        loss = sum(self.weights[n] * v for n, v in terms.items())
        size = sum(len(b["label"]) for b in batch.values())
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.names[dataloader_idx]
        self._val[name].append((self.students[name](batch[name]).logits, batch["label"]))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val = {n: [] for n in self.names}
            return
        for name in self.names:
            logits = torch.cat([p for p, _ in self._val[name]])
            y = torch.cat([t for _, t in self._val[name]])
            scores = score(logits, y, len(self.classes))
            for key, value in scores.items():
                self.log(f"val/{name}/{key}", value, prog_bar=key == "acc")
            chosen = scores[self.cfg.select_on]
            if name not in self.best or chosen > self.best[name]["score"]:
                self.best[name] = {
                    "score": chosen,
                    "epoch": self.current_epoch,
                    "state": copy.deepcopy(
                        {k: v.detach().cpu() for k, v in self.students[name].state_dict().items()}
                    ),
                }
        self._val = {n: [] for n in self.names}

    def configure_optimizers(self):
        cfg = self.hparams.optim
        kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        extra = {"momentum": 0.9} if cfg["optimizer"] == "sgd" else {}
        opt = kinds[cfg["optimizer"]](
            self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], **extra
        )
        if cfg.get("scheduler", "none") == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt

    def student(self, name: str, which: Literal["best", "last"] = "best") -> DisComStudent:
        """A standalone copy of one modality's student (eval mode): its weights at its best
        validation epoch, or the current (last-epoch) weights."""
        model = copy.deepcopy(self.students[name]).cpu()
        if which == "best":
            if name not in self.best:
                raise CmkdError(f"no validation epoch ran: no best weights for {name}")
            model.load_state_dict(self.best[name]["state"])
        return model.eval()


def score(logits: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, float]:
    """Accuracy and weighted F1 (per-class F1 weighted by class support), the paper's metrics."""
    return {
        "acc": float(multiclass_accuracy(logits, y, k, average="micro")),
        "f1_weighted": float(multiclass_f1_score(logits, y, k, average="weighted")),
    }


@torch.no_grad()
def evaluate_student(model: nn.Module, dataset, k: int, batch_size: int = 512) -> dict[str, float]:
    """Scores of one standalone student on one modality's split (raw inputs, CPU)."""
    model.eval()
    return score(predict(model, dataset.x, batch_size, fields=("logits",)).logits, dataset.y, k)


def _network_spec(spec: ModalitySpec, x_shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "backbone": spec.model.backbone,
        "in_chans": int(x_shape[1]),
        "pretrained": spec.model.pretrained,
        "options": dict(spec.model.options),
    }


def train_discomkd(
    modalities: list[ModalitySpec],
    discomkd: DisComConfig,
    optim: OptimConfig,
    run: RunConfig,
    seed: int = 0,
    prepared: dict | None = None,
) -> dict[str, Any]:
    """Train the joint model, score every modality's best-on-validation and last-epoch student
    on its test split, and export the best students to run_dir/students/<modality>.*.
    Writes results.json in the run folder and returns the same record."""
    L.seed_everything(seed, verbose=False)
    prepared = prepared or prepare_modalities(modalities, seed)
    names = [m.name for m in modalities]
    config = {
        "command": "discomkd",
        "seed": seed,
        "modalities": [asdict(m) for m in modalities],
        "discomkd": asdict(discomkd),
        "optim": asdict(optim),
        "run": asdict(run),
    }
    if run.resume:
        raise CmkdError("DisCoM-KD runs cannot be resumed yet; start it again")
    run_dir, _ = open_run_dir(run, "discomkd-" + "-".join(names), seed, config)
    dm = MultiModalDataModule(prepared, discomkd.batch_size, seed, discomkd.epoch_length)
    networks = {
        m.name: _network_spec(m, tuple(dm.sets["train"][m.name].x.shape)) for m in modalities
    }
    normalizers = {n: Standardize.fit(dm.sets["train"][n].x.float()) for n in names}
    classes = next(iter(prepared.values())).classes
    module = DisComKDModule(
        networks, classes, asdict(optim), asdict(discomkd), seed=seed, normalizers=normalizers
    )
    trainer = L.Trainer(
        max_epochs=optim.epochs,
        accelerator=run.accelerator,
        devices=run.devices,
        precision=resolve_precision(run.precision, run.accelerator),
        default_root_dir=run_dir,
        logger=CSVLogger(run_dir, name="csv", version=""),
        enable_checkpointing=False,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - start
    if trainer.interrupted:
        raise CmkdError(f"training was interrupted ({run_dir})")
    k = len(classes)
    per_modality = {}
    for name in names:
        test = dm.sets["test"][name]
        best = module.student(name, "best")
        last = module.student(name, "last")
        file = export_student(
            best,
            run_dir / "students" / name,
            name,
            classes,
            seed=seed,
            best_epoch=module.best[name]["epoch"],
        )
        per_modality[name] = {
            "best": {
                "epoch": module.best[name]["epoch"],
                f"val_{discomkd.select_on}": module.best[name]["score"],
                "test": evaluate_student(best, test, k),
            },
            "last": {"epoch": optim.epochs - 1, "test": evaluate_student(last, test, k)},
            "parameters": count_parameters(best),
            "single_backbone_parameters": single_backbone_parameters(networks[name], k),
            "export": str(file),
            "train_size": len(dm.sets["train"][name]),
        }
    results = {
        "method": "discomkd",
        "seed": seed,
        "epochs": optim.epochs,
        "steps_per_epoch": math.ceil(dm.length / discomkd.batch_size),
        "latent_dim": module.latent_dim,
        "joint_parameters": count_parameters(module),
        "modalities": per_modality,
        "fit_seconds": round(fit_s, 2),
        "run_dir": str(run_dir),
    }
    write_json(Path(run_dir) / "results.json", results)
    return results
