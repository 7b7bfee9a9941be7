"""The teacher of a distillation built from Python (`DistillTask.for_data`): a checkpoint or
run folder, a trained task, or a module, turned into a frozen network that takes raw inputs,
with the teacher-modality training samples it teaches from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from cmkd.checkpoints import load_model
from cmkd.classmap import ClassMap, ClassMapSpec
from cmkd.data.datamodule import trained_on
from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.methods.classifier import ClassifierModule
from cmkd.models.adapter import as_network
from cmkd.models.model import StandardizedNetwork

if TYPE_CHECKING:
    from cmkd.data.datamodule import ModalityDataModule
    from cmkd.data.samples import Samples

Teacher = nn.Module | ClassifierModule | str | Path


def resolve_teacher(
    teacher: Teacher,
    teacher_data: ModalityDataModule | None,
    data: ModalityDataModule,
    weights: Literal["best", "last"],
    class_map: ClassMapSpec | ClassMap | None = None,
) -> tuple[StandardizedNetwork, Samples, str, ClassMap | None]:
    """(frozen teacher taking raw inputs, the teacher-modality training samples it teaches
    from, its checkpoint path or "", the class map or None), with the classes checked against
    the student's: the same, or joined by `class_map` (then the samples are those of the used
    teacher classes, relabelled into the student's classes: `ClassMap.teacher_samples`)."""
    source, bank = "", None
    if isinstance(teacher, str | Path):
        network, hparams = load_model(teacher, weights)
        source = str(Path(teacher).expanduser().resolve())
        classes = hparams["classes"]
        if teacher_data is None:
            prepared = trained_on(hparams, data.config, data.seed, data.prepared)
            bank = prepared.rows(hparams["modality"], "train")
    elif isinstance(teacher, ClassifierModule):
        network, classes = teacher.model, teacher.classes
    elif isinstance(teacher, nn.Module):
        network, classes = teacher, None
    else:
        raise CmkdError(
            f"the teacher is a module, a ClassifierTask or a checkpoint path, got {type(teacher)}"
        )
    if teacher_data is not None:
        bank = teacher_data.prepared.rows(teacher_data.modality, "train")
        classes = teacher_data.classes if classes is None else classes
        if teacher_data.classes != classes:
            raise CmkdError(
                f"the teacher data's classes {teacher_data.classes} differ from the teacher's "
                f"{classes}"
            )
    if bank is None:
        raise CmkdError(
            "a teacher given as a module needs teacher_data: the data module of its modality "
            "whose training split it teaches from (e.g. data.with_modality(NAME))"
        )
    mapped = ClassMap.build(class_map, classes, data.classes)
    if not isinstance(network, StandardizedNetwork):
        example = torch.as_tensor(bank.x[:2]).float()
        network = StandardizedNetwork(
            as_network(network, example, len(classes)), Standardize.identity(example.shape[1])
        )
    if mapped is not None:
        bank = mapped.teacher_samples(bank)
    return network, bank, source, mapped
