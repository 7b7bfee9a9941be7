"""Distillation from a frozen teacher on one modality into a student on another.

loss = ce_weight * CE(student) + sum_i weight_i * term_i(student, teacher). The teacher sample
for each student sample comes from a `Pairing`; its outputs come from a cache computed once
per run (the teacher is frozen and its inputs are never augmented) or, with the cache off,
from a forward pass every step.

With quality weights (`quality.source`, see `cmkd.methods.quality`) the weighted terms become
mean_i w_i * term_i, w the per-sample weights of the batch's teacher samples (mean 1, detached);
their distribution is logged (summary statistics every epoch, a TensorBoard histogram) and
the mean weight each teacher sample received is kept for `quality_record`.

With a class map (`class_map`, a teacher trained on other classes; see `cmkd.classmap`) the
teacher is read through `MappedTeacher` (its logits in the covered student classes: cache, DynM
gallery, controls and confidence quality all follow), and every term sees only the batch's
covered samples, with the student's logits restricted to the covered classes (`ClassMap.view`);
samples of uncovered classes train on CE alone. A batch with fewer than two covered samples
trains on CE alone (relation terms need two samples).

From Python it is `cmkd.DistillTask`, built with `for_data` from the student's data module, the
teacher (a module, a task or a checkpoint), a list of terms and a pairing.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmkd.classmap import ClassMap, ClassMapSpec, MappedTeacher
from cmkd.config import ModelConfig, OptimConfig, PairingConfig, QualityConfig, TermConfig
from cmkd.data.datamodule import ModalityDataModule, ModalityDataset, check_no_leak
from cmkd.errors import CmkdError
from cmkd.losses import TermContext, build_term
from cmkd.losses.base import term_spec
from cmkd.methods.classifier import ClassifierModule, task_args
from cmkd.methods.controls import class_means, teacher_free_logits
from cmkd.methods.quality import batch_weights, teacher_quality
from cmkd.methods.teacher import Teacher, resolve_teacher
from cmkd.models.inference import predict
from cmkd.models.model import StandardizedNetwork
from cmkd.models.outputs import ModelOutput
from cmkd.pairing import build_pairing
from cmkd.pairing.base import Pairing
from cmkd.pairing.dynamic import schedule_from
from cmkd.pairing.rematch import DynamicMatching
from cmkd.seeding import seeded

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback


Term = str | TermConfig | Mapping[str, Any]

# The frozen teacher is in eval mode on purpose; Lightning warns about it at every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


class DistillModule(ClassifierModule):
    """The student, its distillation terms and the frozen teacher. The teacher's weights are
    never saved in the student's checkpoints: the hyperparameters name its checkpoint file
    (`teacher_checkpoint`) and that file's SHA-256 (`teacher_sha256`); loading a checkpoint
    into a module whose teacher came from a different file is a CmkdError."""

    not_hyperparameters = (
        *ClassifierModule.not_hyperparameters,
        "teacher",
        "teacher_inputs",
        "teacher_labels",
        "pairing",
        "class_map",
    )
    # The pairing, the terms' schedules and DynM follow Lightning's epoch.
    supports_epoch_blocks = False

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
        teacher_sha256: str = "",
        num_train: int = 0,
        teacher_target: str = "sample",
        teacher_free_confidence: float = 0.9,
        quality: dict[str, Any] | None = None,
        class_map: ClassMap | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Under a class map the teacher answers in the map's covered classes (cmkd.classmap).
        self.class_map = class_map
        self.hparams["class_map"] = None if class_map is None else class_map.record()
        if class_map is not None:
            teacher = MappedTeacher(teacher, class_map)
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_inputs = teacher_inputs  # raw teacher-side training inputs, on the CPU
        # Student classes of the teacher's samples: for re-matching within classes (DynM), the
        # class-mean control and the confidence quality.
        self.teacher_labels = teacher_labels
        self.pairing = pairing
        context = TermContext(num_train=num_train, max_epochs=self.hparams.optim["epochs"])
        self.terms = torch.nn.ModuleDict()
        for t in terms:
            # Each term's adapters on their own stream: adding a term never moves the
            # student's initialisation or another term's.
            with seeded(self.hparams.seed, f"term:{t['name']}"):
                self.terms[t["name"]] = build_term(
                    t["name"], self.model.network, teacher.network, context, **t.get("params", {})
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
        if class_map is not None and "soft_classifier" in self.terms:
            raise CmkdError(
                "term 'soft_classifier' classifies into the teacher's own classes, which a class "
                "map does not share with the student; use it with a teacher of the same classes"
            )
        self.teacher_seconds = 0.0  # time in teacher forward passes, for the bench's cost split
        self.quality = dict(quality or {})
        self.weighted = self._weighted_terms()
        if self.weighted and teacher_target != "sample":
            raise CmkdError("quality weights weight teacher samples; use teacher_target 'sample'")
        self.quality_table: dict[str, torch.Tensor] | None = None
        self._epoch_weights: list[torch.Tensor] = []

    @classmethod
    def for_data(
        cls,
        data: ModalityDataModule,
        teacher: Teacher,
        teacher_data: ModalityDataModule | None = None,
        *,
        terms: Sequence[Term] = ("kd",),
        pairing: str | PairingConfig | Pairing = "paired",
        model: ModelConfig | str | nn.Module = "small_cnn",
        optim: OptimConfig | None = None,
        ce_weight: float = 0.5,
        cache_teacher: bool = True,
        teacher_target: Literal["sample", "class_mean", "teacher_free"] = "sample",
        teacher_free_confidence: float = 0.9,
        quality: QualityConfig | None = None,
        teacher_weights: Literal["best", "last"] = "best",
        seed: int | None = None,
        augment: bool | None = None,
        class_map: ClassMapSpec | ClassMap | None = None,
    ) -> DistillModule:
        """A student on `data`'s modality taught by a frozen teacher, for any
        `lightning.Trainer`: loss = ce_weight * CE + sum of the weighted terms.

        Args:
            data: The student's data module.
            teacher: A checkpoint or run folder of `cmkd train`, a trained `ClassifierTask`, or
                a module: a cmkd network or `cmkd.adapt_network(...)` (it gets the teacher
                data's raw inputs; a cmkd task's network standardises them inside).
            teacher_data: The teacher-modality samples it teaches from (their train split),
                e.g. `data.with_modality("ms")`; default for a checkpoint: the data it was
                trained on. Refused if they include the student's validation or test samples.
            terms: Distillation terms: registered names ("kd", `cmkd.LOSSES`), `TermConfig`s
                or {"name", "weight", "params"} dicts (weight 1 unless given).
            pairing: Which teacher sample teaches each student sample: a registered strategy
                ("paired", "class_random", `cmkd.PAIRINGS`), a `PairingConfig` (DynM with
                `dynamic=True`: its callback comes with the task) or a `Pairing` instance.
            model, optim, seed, augment: The student, as `ClassifierTask.for_data`.
            ce_weight, cache_teacher, teacher_target, teacher_free_confidence, quality: As the
                fields of `cmkd.DistillConfig`.
            teacher_weights: For a run folder, its best-on-validation or last weights.
            class_map: For a teacher of other classes: teacher class -> student class, as a
                YAML file, a mapping or a `ClassMap` (see `cmkd.classmap`).
        """
        args = task_args(data, model, optim, seed, augment)
        network, bank, source, mapped = resolve_teacher(
            teacher, teacher_data, data, teacher_weights, class_map
        )
        check_no_leak(bank.ids, data.prepared, data.modality)
        student_train = data.prepared.rows(data.modality, "train")
        covered = None if mapped is None else mapped.covered_labels
        dynamic = None
        if isinstance(pairing, Pairing):
            table = pairing.table_for(0)
            if len(table) != len(student_train) or len(table) and table.max() >= len(bank):
                raise CmkdError(
                    f"the pairing maps {len(table)} student rows into a bank of {len(bank)}; "
                    f"this student has {len(student_train)} training rows"
                )
        else:
            cfg = PairingConfig(strategy=pairing) if isinstance(pairing, str) else pairing
            epochs = args["optim"]["epochs"]
            dynamic = (
                DynamicMatching(schedule_from(cfg, epochs), cfg.temperature)
                if cfg.dynamic
                else None
            )
            pairing = build_pairing(cfg, student_train, bank, args["seed"], covered)
        module = cls(
            **args,
            teacher=network,
            teacher_inputs=ModalityDataset(bank, "teacher").x,
            teacher_labels=torch.from_numpy(bank.y),
            pairing=pairing,
            terms=[term_spec(t) for t in terms],
            ce_weight=ce_weight,
            cache_teacher=cache_teacher,
            teacher_target=teacher_target,
            teacher_free_confidence=teacher_free_confidence,
            teacher_checkpoint=source,
            num_train=len(student_train),
            quality=asdict(quality or QualityConfig()),
            class_map=mapped,
        )
        module.task_callbacks = [dynamic] if dynamic is not None else []
        module.check_batch(data.sets["train"].batch(module.example_rows(data.sets["train"].y)))
        return module

    def example_rows(self, labels: torch.Tensor, n: int = 2) -> list[int]:
        """Training rows for the pre-flight `check_batch`: under a class map, covered ones (the
        only rows the terms see)."""
        if self.class_map is None:
            return list(range(min(n, len(labels))))
        return self.class_map.example_rows(labels, n)

    def configure_callbacks(self) -> list[Callback]:
        # What `for_data` set up for a plain Trainer (DynM); the recipes pass their own.
        return list(getattr(self, "task_callbacks", []))

    def _weighted_terms(self) -> set[str]:
        """The terms quality weights apply to; each must have a per-sample form."""
        if self.quality.get("source", "none") == "none":
            return set()
        names = self.quality.get("terms") or list(self.terms)
        for name in names:
            if name not in self.terms:
                raise CmkdError(
                    f"quality.terms names '{name}', which is not a term of this loss "
                    f"({', '.join(self.terms)})"
                )
            if not self.terms[name].has_per_sample:
                ok = [n for n, t in self.terms.items() if t.has_per_sample]
                raise CmkdError(
                    f"quality weights need per-sample term values, but term '{name}' has none; "
                    f"list the terms to weight in quality.terms (these can be: {ok or 'none'})"
                )
        return set(names)

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
            start = time.perf_counter()
            needs = self.needs | {"logits"}
            self.cache = predict(
                self.teacher, self.teacher_inputs, 256, self.device, needs, to_cpu=False
            )
            self.teacher_seconds += time.perf_counter() - start
            if self.hparams.teacher_target == "class_mean":
                self.class_means = self._class_means(self.cache)
        if self.weighted and self.quality_table is None:
            if self.teacher_labels is None:
                raise CmkdError("quality weights need the teacher's training labels")
            table = teacher_quality(
                self.teacher,
                self.teacher_inputs,
                self._in_term_space(self.teacher_labels),
                self.device,
                dropout_p=self.quality.get("dropout_p", 0.5),
                dropout_passes=self.quality.get("dropout_passes", 10),
                seed=self.hparams.seed,
            )
            n = len(self.teacher_inputs)
            # float32 accumulators: exact counts up to 2^24 uses per sample, and every device
            # (MPS has no float64) can hold them, so no host sync per step.
            table["weight_sum"] = torch.zeros(n)
            table["weight_count"] = torch.zeros(n)
            self.quality_table = {k: v.to(self.device) for k, v in table.items()}

    def quality_record(self) -> dict[str, np.ndarray]:
        """Per teacher training row: every quality source, whether the teacher is right, and the
        mean weight the row received in training (nan if it never taught), as numpy arrays.
        Under DDP the weights are this rank's; after a resume they count from the resume."""
        if self.quality_table is None:
            return {}
        t = {k: v.cpu().numpy() for k, v in self.quality_table.items()}
        count = t.pop("weight_count")
        with np.errstate(invalid="ignore", divide="ignore"):
            t["mean_weight"] = np.where(count > 0, t.pop("weight_sum") / count, np.nan)
        t["times_used"] = count
        return t

    @property
    def term_classes(self) -> int:
        """How many classes the terms' logits span: the student's, or a class map's covered."""
        return len(self.classes) if self.class_map is None else len(self.class_map.covered)

    def _in_term_space(self, labels: torch.Tensor) -> torch.Tensor:
        """Student labels as the terms see them (covered indices under a class map)."""
        return labels if self.class_map is None else self.class_map.to_covered(labels)

    def _class_means(self, cache: ModelOutput) -> ModelOutput:
        """Per class, the teacher's outputs averaged over its training samples of that class (under
        a class map: per covered class, over the samples of the teacher classes mapped to it)."""
        labels = self._in_term_space(self.teacher_labels.to(cache.logits.device).long())
        return class_means(cache, labels, self.term_classes)

    def _control_target(self, labels: torch.Tensor) -> ModelOutput:
        """The control's target (`cmkd.methods.controls`) for student labels in the terms'
        space (covered indices under a class map, where K is the covered classes)."""
        if self.hparams.teacher_target == "class_mean":
            return self.class_means.select(labels.to(self.class_means.logits.device))
        return teacher_free_logits(labels, self.term_classes, self.hparams.teacher_free_confidence)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What the pairing learnt (a DynM table) is training state: a resumed run continues
        # from it.
        checkpoint["pairing"] = self.pairing.state_dict()
        # The frozen teacher is already on disk in its own checkpoint (named and hashed in the
        # hyperparameters): a copy in every student checkpoint only costs time and space.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = (checkpoint.get("hyper_parameters") or {}).get("teacher_sha256")
        mine = self.hparams.get("teacher_sha256")
        if saved and mine and saved != mine:
            raise CmkdError(
                f"the teacher checkpoint changed since this checkpoint was written: its SHA-256 "
                f"was {saved[:12]}..., {self.hparams.teacher_checkpoint} now has {mine[:12]}...; "
                "restore the original teacher file or start the run again"
            )
        state = checkpoint["state_dict"]
        if not any(k.startswith("teacher.") for k in state):  # the teacher is not saved
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        state = checkpoint.get("pairing")
        if state is None and "pairing_table" in checkpoint:  # checkpoints before 0.2
            state = {"table": checkpoint["pairing_table"]}
        self.pairing.load_state_dict(state or {})

    def check_batch(self, batch: dict) -> None:
        """The student network and every distillation term on one batch, without gradients,
        on copies of the terms (no side effect on their state)."""
        super().check_batch(batch)
        terms = copy.deepcopy(self.terms).eval()
        current = "(teacher forward)"
        was = self.model.training
        self.model.eval()  # no BatchNorm statistics updated by a check
        try:
            with torch.no_grad():
                student = self.model(batch[self.modality])
                teacher, _, keep = self._teacher_side(batch, 0, forward=True)
                self.teacher_seconds = 0.0
                if keep is not None:  # the terms see covered samples only, two or more
                    student, batch = self.class_map.view(student, batch, keep)
                    terms = terms if int(keep.sum()) >= 2 else {}
                for name, term in terms.items():
                    current = name
                    term(student, teacher, batch)
        except CmkdError:
            raise
        except (RuntimeError, ValueError, IndexError, AttributeError, TypeError) as err:
            line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise CmkdError(
                f"distillation term '{current}' cannot be computed between these networks "
                f"({type(err).__name__}: {line})"
            ) from None
        finally:
            self.model.train(was)

    def on_train_epoch_start(self) -> None:
        for term in self.terms.values():
            term.on_epoch_start(self.current_epoch, self.trainer.max_epochs)

    def teacher_outputs(self, batch: dict) -> ModelOutput:
        """The teacher outputs the terms compare this batch with (under a class map: for its
        covered samples only, in the covered classes)."""
        return self._teacher_side(batch, self.current_epoch)[0]

    def _teacher_side(
        self, batch: dict, epoch: int, forward: bool = False
    ) -> tuple[ModelOutput, torch.Tensor | None, torch.Tensor | None]:
        """(teacher outputs, their teacher rows (None for the controls), the mask of the batch's
        samples the terms see (None: all of them; under a class map, the covered ones)).
        `forward`: a teacher forward pass, not the cache (the pre-flight check, before the cache
        exists; class_mean has a sample's shapes)."""
        target = self.hparams.teacher_target
        sample = target == "sample" or (forward and target == "class_mean")
        rows = self.pairing.teacher_rows(batch["index"], epoch) if sample else None
        labels, keep = batch["label"], None
        if self.class_map is not None:
            keep = self.class_map.covered_mask(labels, rows)
            labels = self.class_map.to_covered(labels)[keep]
            rows = None if rows is None else rows[keep]
        if not sample:
            return self._control_target(labels), None, keep
        if forward:
            return self._teacher_forward(rows), rows, keep
        return self._teacher_at(rows), rows, keep

    def _teacher_at(self, rows: torch.Tensor) -> ModelOutput:
        if self.cache is not None:
            return self.cache.select(rows.to(self.cache.logits.device))
        return self._teacher_forward(rows)

    def _sample_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """Quality weights of the batch's teacher rows (mean 1), logged and accumulated."""
        table, q = self.quality_table, self.quality
        rows = rows.to(table["confidence"].device)
        w = batch_weights(
            table[q["source"]][rows],
            q["source"],
            power=q.get("power", 1.0),
            norm_clip=q.get("norm_clip", 2.0),
            norm_strength=q.get("norm_strength", 0.5),
        )
        table["weight_sum"].index_add_(0, rows, w)
        table["weight_count"].index_add_(0, rows, torch.ones_like(w))
        self._epoch_weights.append(w)
        size = len(w)
        stats = {"min": w.min(), "max": w.max(), "std": w.std(unbiased=False)}
        stats["below_0.5"] = (w < 0.5).float().mean()
        for key, v in stats.items():
            self.log_epoch_mean(f"train/quality/{key}", v, size)
        return w.to(self.device)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self._epoch_weights:
            return
        weights = torch.cat(self._epoch_weights).detach().cpu()
        self._epoch_weights = []
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):  # TensorBoard
                experiment.add_histogram("train/quality/weights", weights, self.current_epoch)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        student = self.training_output(batch)
        losses = {"ce": self.hparams.ce_weight * F.cross_entropy(student.logits, batch["label"])}
        teacher, rows, keep = self._teacher_side(batch, self.current_epoch)
        if keep is not None:  # under a class map the terms see the covered samples only
            if int(keep.sum()) < 2:
                return losses  # too few for the terms: CE alone
            student, batch = self.class_map.view(student, batch, keep)
        w = self._sample_weights(rows) if self.weighted and rows is not None else None
        for name, term in self.terms.items():
            if name in self.weighted:
                value = (w * term.per_sample(student, teacher, batch)).mean()
            else:
                value = term(student, teacher, batch)
            parts = (
                {f"{name}/{k}": v for k, v in value.items()}
                if isinstance(value, dict)
                else {name: value}
            )
            for part, v in parts.items():
                losses[part] = self.weights[name] * v
            for key, v in term.diagnostics().items():
                self.log_epoch_mean(f"train/{name}/{key}", v, len(batch["label"]))
        return losses
