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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from cmkd.config import DISCOMKD_TERMS, DisComConfig, ModalitySpec, OptimConfig, RunConfig
from cmkd.data.multimodal import MultiModalDataModule, prepare_modalities
from cmkd.data.normalize import Standardize
from cmkd.epochs import plan_epochs
from cmkd.errors import CmkdError
from cmkd.io import write_json
from cmkd.losses.logits import grad_reverse
from cmkd.methods.classifier import check_finite_loss, random_flips_and_rotations
from cmkd.models.discomkd import (
    DisComStudent,
    count_parameters,
    export_student,
    single_backbone_parameters,
)
from cmkd.models.inference import predict
from cmkd.optim import lightning_optimizers
from cmkd.preflight import check_output_dir, check_settings
from cmkd.seeding import seeded
from cmkd.training import check_run, fitted, one_process, open_run_dir, run_path

# The run settings live in cmkd.config (the CLI reads them without importing this module).
TERMS = DISCOMKD_TERMS
# Where last.ckpt keeps each modality's best-on-validation epoch, score and student weights.
BEST_KEY = "discomkd_best"


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


def check_weights(weights: dict[str, float]) -> None:
    """Term weights name known terms and are finite numbers."""
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise CmkdError(f"unknown DisCoM-KD term weights {sorted(unknown)}; terms: {TERMS}")
    for term, weight in weights.items():
        if not math.isfinite(weight):
            raise CmkdError(f"discomkd.weights.{term} must be a finite number, got {weight}")


class DisComKDModule(L.LightningModule):
    """The joint model: one `DisComStudent` per modality plus the training-only heads."""

    # run.fused_optimizer, as the run's fit sets it (cmkd.training.fitted).
    fused_optimizer: bool | str = "auto"

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
        check_weights(self.cfg.weights)
        self.weights = {t: float(self.cfg.weights.get(t, 1.0)) for t in TERMS}
        latent = self.cfg.latent_dim or self._default_latent(networks)
        k, m = len(classes), len(networks)
        normalizers = normalizers or {}
        # Each student from its own stream, (seed, "discomkd:<modality>"): a modality's network
        # starts the same whichever other modalities are trained beside it, and in whichever
        # order they are listed.
        students = {}
        for name, spec in networks.items():
            with seeded(seed, f"discomkd:{name}"):
                students[name] = DisComStudent(spec, k, latent, normalizers.get(name))
        self.students = nn.ModuleDict(students)
        with seeded(seed, "discomkd:heads"):  # training-only heads; M-way ones depend on M
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

    def check_batch(self, batch: dict[str, dict[str, torch.Tensor]]) -> None:
        """One small batch of every modality through its student and the joint loss, without
        gradients or side effects (training mode, random generators and weights are left as
        they were): a CmkdError naming the modality whose backbone cannot take its inputs,
        before the run folder exists."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for name in self.names:
                    x = batch[name][name].float()
                    try:
                        self.students[name](x)
                    except (RuntimeError, ValueError, IndexError) as err:
                        backbone = self.hparams.networks[name]["backbone"]
                        lines = str(err).strip().splitlines()
                        raise CmkdError(
                            f"modality {name!r}: backbone {backbone!r} cannot take its inputs "
                            f"of shape {tuple(x.shape[1:])}: "
                            + (lines[0][:200] if lines else type(err).__name__)
                        ) from None
                self.training_losses(batch)
        finally:
            self.train(was)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.training_losses(batch)
        loss = sum(self.weights[n] * v for n, v in terms.items())
        check_finite_loss(loss, self.current_epoch, batch_idx, self.hparams.optim["lr"])
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
        return lightning_optimizers(self.parameters(), self.hparams.optim, self.fused_optimizer)

    # The per-modality selection is training state: last.ckpt carries it, so a resumed run
    # still knows each student's best epoch and weights from before the interruption.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = self.best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best = checkpoint.get(BEST_KEY, {})

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


def check_discomkd(discomkd: DisComConfig, run: RunConfig) -> None:
    """DisCoM-KD's own settings, before any data is read or file written (what `check_run`
    and `check_settings` do not cover): a one-line CmkdError naming the option."""
    if isinstance(discomkd.batch_size, bool) or discomkd.batch_size < 1:
        raise CmkdError(f"discomkd.batch_size must be >= 1, got {discomkd.batch_size}")
    grl_lambda(discomkd.grl_factor, discomkd.grl_schedule, 0.0)
    if discomkd.select_on not in ("f1_weighted", "acc"):
        raise CmkdError(
            f"discomkd.select_on must be f1_weighted or acc, got {discomkd.select_on!r}"
        )
    check_weights(discomkd.weights)
    if not one_process(run):
        # Each process would select (and export) on its own shard of the validation split.
        raise CmkdError(
            "DisCoM-KD trains on one device (it selects each student on the whole validation "
            f"split); set --run.devices 1 --run.num_nodes 1 (got devices {run.devices!r}, "
            f"num_nodes {run.num_nodes})"
        )


def _check_splits(dm: MultiModalDataModule) -> None:
    """Every modality needs validation rows (its student is selected on them) and test rows
    (its students are scored on them)."""
    for split, why in (("val", "its student is selected on them"), ("test", "it is scored")):
        for name, rows in dm.sets[split].items():
            if not len(rows):
                raise CmkdError(
                    f"modality {name!r} has no {split} rows, and DisCoM-KD needs them ({why}): "
                    f"give its data a {split}_fraction > 0"
                )


def _first_rows(dm: MultiModalDataModule, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """The first `n` training rows of every modality, as a training batch."""
    return {name: rows.batch(range(min(n, len(rows)))) for name, rows in dm.sets["train"].items()}


def train_discomkd(
    modalities: list[ModalitySpec],
    discomkd: DisComConfig,
    optim: OptimConfig,
    run: RunConfig,
    seed: int = 0,
    prepared: dict | None = None,
    *,
    callbacks: tuple = (),
) -> dict[str, Any]:
    """Train the joint model, score every modality's best-on-validation and last-epoch student
    on its test split, and export the best students to run_dir/students/<modality>.*.
    Writes results.json in the run folder and returns the same record.

    The run goes the way of every recipe (`cmkd.training.fitted`): everything is checked
    (settings, data, one batch through the joint model) before the run folder exists, and
    last.ckpt holds the full training state, each modality's selection included, so
    `run.resume` continues an interrupted run to the uninterrupted run's weights. There is no
    best.ckpt: selection is per modality, and its result is the exported students."""
    check_run(run, optim)
    check_settings(run, optim)
    check_discomkd(discomkd, run)
    prepared = prepared or prepare_modalities(modalities, seed)
    names = [m.name for m in modalities]
    dm = MultiModalDataModule(prepared, discomkd.batch_size, seed, discomkd.epoch_length)
    _check_splits(dm)
    networks = {
        m.name: _network_spec(m, tuple(dm.sets["train"][m.name].x.shape)) for m in modalities
    }
    normalizers = {n: Standardize.fit(dm.sets["train"][n].x.float()) for n in names}
    classes = next(iter(prepared.values())).classes
    module = DisComKDModule(
        networks, classes, asdict(optim), asdict(discomkd), seed=seed, normalizers=normalizers
    )
    module.check_batch(_first_rows(dm))
    plan = plan_epochs(optim.epochs, run.val_every, run.checkpoint_every)
    config = {
        "command": "discomkd",
        "seed": seed,
        "modalities": [asdict(m) for m in modalities],
        "discomkd": asdict(discomkd),
        "optim": asdict(optim),
        "run": asdict(run),
    }
    default_name = "discomkd-" + "-".join(names)
    check_output_dir(run_path(run, default_name, seed))
    run_dir, resume = open_run_dir(run, default_name, seed, config)
    k = len(classes)
    with fitted(module, {"datamodule": dm}, run_dir, run, plan, resume, callbacks) as fit:
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
    every = plan.val_every
    results = {
        "method": "discomkd",
        "seed": seed,
        "epochs": optim.epochs,
        "steps_per_epoch": math.ceil(dm.length / discomkd.batch_size),
        "latent_dim": module.latent_dim,
        "joint_parameters": count_parameters(module),
        "modalities": per_modality,
        "fit_seconds": round(fit.seconds, 2),
        "run_dir": str(run_dir),
        "selection": f"best validation {discomkd.select_on} per modality"
        + (f" (validated every {every} epochs and after the last)" if every > 1 else ""),
        "checkpoint": str(fit.checkpoints.last_path),
        "run": fit.run_record(),
    }
    write_json(Path(run_dir) / "results.json", results)
    return results
