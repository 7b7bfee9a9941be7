"""Distillation from a frozen teacher on one modality into a student on another.

loss = ce_weight * CE(student) + sum_i weight_i * term_i(student, teacher). The teacher sample
for each student sample comes from a `Pairing`; its outputs come from a cache computed once
per run (the teacher is frozen and its inputs are never augmented) or, with the cache off,
from a forward pass every step.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmkd.data.pairing import Pairing
from cmkd.errors import CmkdError
from cmkd.losses import TermContext, build_term
from cmkd.methods.classifier import ClassifierModule
from cmkd.models.model import StandardizedNetwork
from cmkd.models.outputs import ModelOutput

# The frozen teacher is in eval mode on purpose; Lightning warns about it at every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


class DistillModule(ClassifierModule):
    not_hyperparameters = ("normalize", "teacher", "teacher_inputs", "teacher_labels", "pairing")

    def __init__(
        self,
        *args,
        teacher: StandardizedNetwork,
        teacher_inputs: torch.Tensor,
        pairing: Pairing,
        teacher_labels: torch.Tensor | None = None,
        terms: list[dict[str, Any]],
        ce_weight: float = 0.5,
        cache_teacher: bool = True,
        teacher_checkpoint: str = "",
        num_train: int = 0,
        teacher_target: str = "sample",
        teacher_free_confidence: float = 0.9,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_inputs = teacher_inputs  # raw teacher-side training inputs, on the CPU
        self.teacher_labels = teacher_labels  # for re-matching within classes (DynM)
        self.pairing = pairing
        context = TermContext(num_train=num_train, max_epochs=self.hparams.optim["epochs"])
        self.terms = torch.nn.ModuleDict(
            {
                t["name"]: build_term(
                    t["name"], self.model.network, teacher.network, context, **t.get("params", {})
                )
                for t in terms
            }
        )
        self.weights = {t["name"]: float(t.get("weight", 1.0)) for t in terms}
        self.needs = set().union(*(term.needs for term in self.terms.values()))
        self.cache: ModelOutput | None = None
        if teacher_target not in ("sample", "class_mean", "teacher_free"):
            raise CmkdError(
                f"unknown teacher_target '{teacher_target}'; use sample, class_mean or teacher_free"
            )
        if teacher_target == "class_mean" and (not cache_teacher or teacher_labels is None):
            raise CmkdError("teacher_target 'class_mean' needs the teacher cache and its labels")
        if teacher_target == "teacher_free" and self.needs - {"logits"}:
            raise CmkdError("teacher_target 'teacher_free' only has logits; use logit terms")
        self.teacher_seconds = 0.0  # time in teacher forward passes, for the bench's cost split

    def train(self, mode: bool = True):
        # Lightning puts the whole module in train mode each epoch; the teacher stays frozen
        # (BatchNorm statistics and dropout off).
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def _teacher_forward(self, rows: torch.Tensor) -> ModelOutput:
        start = time.perf_counter()
        x = self.teacher_inputs[rows.cpu()].to(self.device, non_blocking=True)
        out = self.teacher(x)
        self.teacher_seconds += time.perf_counter() - start
        keep = lambda name: getattr(out, name) if name in self.needs else None  # noqa: E731
        return ModelOutput(out.logits, keep("embedding"), keep("feature_map"))

    def on_fit_start(self) -> None:
        if self.hparams.cache_teacher and self.cache is None:
            parts = [
                self._teacher_forward(rows)
                for rows in torch.arange(len(self.teacher_inputs)).split(256)
            ]
            cat = lambda name: (  # noqa: E731
                None
                if getattr(parts[0], name) is None
                else torch.cat([getattr(p, name) for p in parts])
            )
            self.cache = ModelOutput(cat("logits"), cat("embedding"), cat("feature_map"))
            if self.hparams.teacher_target == "class_mean":
                self.class_means = self._class_means(self.cache)

    def _class_means(self, cache: ModelOutput) -> ModelOutput:
        """Per class, the teacher's outputs averaged over its training samples of that class."""
        labels = self.teacher_labels.to(cache.logits.device).long()
        k = len(self.classes)

        def mean(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            flat = t.reshape(len(t), -1)
            sums = torch.zeros(k, flat.shape[1], dtype=flat.dtype, device=flat.device)
            sums.index_add_(0, labels, flat)
            counts = torch.bincount(labels, minlength=k).clamp(min=1).unsqueeze(1)
            return (sums / counts).reshape(k, *t.shape[1:])

        return ModelOutput(mean(cache.logits), mean(cache.embedding), mean(cache.feature_map))

    def _control_target(self, labels: torch.Tensor) -> ModelOutput:
        """The controls that separate cross-modal knowledge from mere regularisation, indexed
        by the *student's* labels so they carry nothing about the paired teacher sample.
        class_mean: the teacher's class-mean outputs (class-level knowledge only);
        teacher_free: logits log p with p = a on the true class and (1 - a) / (K - 1) elsewhere
        (teacher-free KD, Yuan et al. 2020): no teacher information at all."""
        if self.hparams.teacher_target == "class_mean":
            return self.class_means.select(labels.to(self.class_means.logits.device))
        k, a = len(self.classes), self.hparams.teacher_free_confidence
        p = torch.full((len(labels), k), (1 - a) / (k - 1), device=labels.device)
        p.scatter_(1, labels.long().unsqueeze(1), a)
        return ModelOutput(p.log(), None, None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A re-matched (DynM) table is training state: a resumed run must continue from it.
        table = getattr(self.pairing, "table", None)
        if table is not None:
            checkpoint["pairing_table"] = torch.from_numpy(np.array(table, dtype=np.int64))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "pairing_table" in checkpoint and hasattr(self.pairing, "table"):
            self.pairing.table = checkpoint["pairing_table"].numpy()

    def on_train_epoch_start(self) -> None:
        for term in self.terms.values():
            term.on_epoch_start(self.current_epoch, self.trainer.max_epochs)

    def teacher_outputs(self, batch: dict) -> ModelOutput:
        if self.hparams.teacher_target != "sample":
            return self._control_target(batch["label"])
        rows = self.pairing.teacher_rows(batch["index"], self.current_epoch)
        if self.cache is not None:
            return self.cache.select(rows.to(self.cache.logits.device))
        return self._teacher_forward(rows)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        student = self.model(self.student_input(batch, train=True))
        teacher = self.teacher_outputs(batch)
        losses = {"ce": self.hparams.ce_weight * F.cross_entropy(student.logits, batch["label"])}
        for name, term in self.terms.items():
            value = term(student, teacher, batch)
            parts = (
                {f"{name}/{k}": v for k, v in value.items()}
                if isinstance(value, dict)
                else {name: value}
            )
            for part, v in parts.items():
                losses[part] = self.weights[name] * v
            for key, v in term.diagnostics().items():
                self.log(f"train/{name}/{key}", v, on_step=False, on_epoch=True)
        return losses
