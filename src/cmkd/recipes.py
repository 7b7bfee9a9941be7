"""The runs behind the CLI: supervised training, distillation (paired or asymmetric), SSM
matching, evaluation.

Each takes the typed configs, prepares the data once, and writes one run folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    RunConfig,
)
from cmkd.data.corruption import corrupt_teacher_inputs
from cmkd.data.datamodule import ModalityDataModule, ModalityDataset, PreparedData, prepare_data
from cmkd.data.normalize import Standardize
from cmkd.data.pairing import (
    ClassRandomPairing,
    DynamicPairing,
    FixedPairing,
    IdentityPairing,
    Pairing,
    UnpairedZipPairing,
)
from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.matching.dynamic import schedule_from
from cmkd.matching.pairs import PairList
from cmkd.methods.classifier import ClassifierModule
from cmkd.methods.distill import DistillModule
from cmkd.methods.dynamic_matching import DynamicMatching
from cmkd.methods.quality import save_teacher_quality
from cmkd.models.model import StandardizedNetwork, build_model
from cmkd.training import fit_and_test, is_global_zero, open_run_dir


def _network_spec(model: ModelConfig, data: PreparedData, modality: str) -> dict[str, Any]:
    x = data.samples[modality].x
    return {
        "backbone": model.backbone,
        "in_chans": int(x.shape[1]),
        "num_classes": len(data.classes),
        "pretrained": model.pretrained,
        "embedding_dim": model.embedding_dim,
        "options": dict(model.options),
    }


def _module_args(model, optim, data_cfg, data, modality, seed) -> dict[str, Any]:
    train_x = torch.as_tensor(data.rows(modality, "train").x).float()
    return dict(
        network=_network_spec(model, data, modality),
        modality=modality,
        classes=data.classes,
        optim=asdict(optim),
        augment=data_cfg.augment,
        data=asdict(data_cfg),
        seed=seed,
        normalize=Standardize.fit(train_x),
    )


def _resolved(command: str, modality: str, seed: int, **sections) -> dict[str, Any]:
    """The config a run folder keeps: every section as plain data, so the run can be repeated."""
    return {
        "command": command,
        "modality": modality,
        "seed": seed,
        **{name: asdict(section) for name, section in sections.items()},
    }


def train_classifier(
    data: DataConfig,
    model: ModelConfig,
    optim: OptimConfig,
    run: RunConfig,
    modality: str,
    seed: int = 0,
    callbacks: tuple = (),
    prepared: PreparedData | None = None,
) -> dict[str, Any]:
    """Train one network on one modality with cross-entropy (a teacher, or the no-KD student)."""
    L.seed_everything(seed, verbose=False)
    config = _resolved("train", modality, seed, data=data, model=model, optim=optim, run=run)
    prepared = prepared or prepare_data(data, seed)
    run_dir, resume = open_run_dir(run, f"{data.source}-{modality}-{model.backbone}", seed, config)
    module = ClassifierModule(**_module_args(model, optim, data, prepared, modality, seed))
    dm = ModalityDataModule(prepared, modality, data.batch_size, seed)
    return fit_and_test(module, dm, run_dir, run, optim.epochs, resume, callbacks)


def load_model(checkpoint: str | Path) -> tuple[StandardizedNetwork, dict[str, Any]]:
    """The trained network of a cmkd checkpoint (teacher or student) and its hyperparameters."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CmkdError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint may come from anyone; loading it must not run code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hparams = ckpt["hyper_parameters"]
        state = {
            k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
        }
    except Exception as err:  # a truncated or foreign file
        raise CmkdError(f"{path} is not a readable cmkd checkpoint ({err})") from None
    model = build_model(hparams["network"])
    model.load_state_dict(state)
    return model.eval(), hparams


def _teacher_data(t_hp: dict[str, Any], data: DataConfig, seed: int, prepared: PreparedData):
    """The teacher's own data (source, split, seed from its checkpoint), which is the student's
    when both come from one paired source; the data root is resolved here, not remembered."""
    t_cfg = DataConfig(**{**t_hp["data"], "root": data.root})
    split_keys = ("source", "options", "val_fraction", "test_fraction", "split")
    if t_hp["seed"] == seed and all(getattr(t_cfg, k) == getattr(data, k) for k in split_keys):
        return prepared
    return prepare_data(t_cfg, t_hp["seed"])


def _check_no_leak(teacher_train_ids: np.ndarray, student: PreparedData, modality: str) -> None:
    leak = student.scored_overlap(modality, teacher_train_ids)
    if leak:
        raise CmkdError(
            f"the teacher was trained on {leak[1]} samples of the student's {leak[0]} split "
            "(same ids): train it with the same split and seed, or on disjoint samples"
        )


def build_pairing(cfg: PairingConfig, student: Samples, teacher: Samples, seed: int) -> Pairing:
    """The configured strategy between the student's and the teacher's training rows."""
    if cfg.strategy == "paired":
        pairing: Pairing = IdentityPairing(student.ids, teacher.ids)
        table = np.arange(len(student))
    elif cfg.strategy == "class_random":
        pairing = ClassRandomPairing(student.y, teacher.y, seed, classes=student.classes)
        table = pairing.teacher_rows(torch.arange(len(student)), 0).numpy()
    elif cfg.strategy == "unpaired":
        pairing = UnpairedZipPairing(len(student), len(teacher), seed)
        table = pairing.table_for(0)
    else:
        if not cfg.pairs:
            raise CmkdError("pairing strategy 'matched' needs a pair list: set pairing.pairs")
        table = PairList.load(cfg.pairs).to_table(student.ids, teacher.ids)
        pairing = FixedPairing(table)
    return DynamicPairing(table) if cfg.dynamic else pairing


def distill_student(
    data: DataConfig,
    model: ModelConfig,
    optim: OptimConfig,
    run: RunConfig,
    distill: DistillConfig,
    modality: str,
    seed: int = 0,
    callbacks: tuple = (),
    prepared: PreparedData | None = None,
) -> dict[str, Any]:
    """The frozen teacher of `distill.teacher` teaches a student on `modality`. Teacher and
    student samples may be the same (paired) or not (asymmetric: only labels are shared);
    `distill.pairing` says which teacher sample teaches each student sample."""
    L.seed_everything(seed, verbose=False)
    teacher, t_hp = load_model(distill.teacher)
    prepared = prepared or prepare_data(data, seed)
    t_mod = t_hp["modality"]
    t_prepared = _teacher_data(t_hp, data, seed, prepared)
    if t_hp["classes"] != prepared.classes:
        raise CmkdError(
            f"teacher classes {t_hp['classes']} differ from the data's {prepared.classes}"
        )
    teacher_train = t_prepared.rows(t_mod, "train")
    _check_no_leak(teacher_train.ids, prepared, modality)
    if distill.teacher_data is not None:
        # Another bank of teacher-modality samples, e.g. the true twins for an oracle row.
        bank = DataConfig(**{**asdict(distill.teacher_data), "root": data.root})
        teacher_train = prepare_data(bank, seed).rows(t_mod, "train")
        _check_no_leak(teacher_train.ids, prepared, modality)
    student_train = prepared.rows(modality, "train")
    pairing = build_pairing(distill.pairing, student_train, teacher_train, seed)
    terms = [asdict(t) for t in distill.terms]
    config = _resolved(
        "distill", modality, seed, data=data, model=model, optim=optim, run=run, distill=distill
    )
    names = "+".join(t["name"] for t in terms) or "ce"
    run_dir, resume = open_run_dir(
        run, f"{data.source}-{t_mod}-to-{modality}-{names}", seed, config
    )
    # The robustness scenario's one hook: a seeded share of the teacher's inputs degraded.
    teacher_inputs, corrupted = corrupt_teacher_inputs(
        ModalityDataset(teacher_train, t_mod).x, distill.corruption
    )
    module = DistillModule(
        **_module_args(model, optim, data, prepared, modality, seed),
        teacher=teacher,
        teacher_inputs=teacher_inputs,
        teacher_labels=torch.from_numpy(teacher_train.y),
        pairing=pairing,
        terms=terms,
        ce_weight=distill.ce_weight,
        cache_teacher=distill.cache_teacher,
        teacher_target=distill.teacher_target,
        teacher_free_confidence=distill.teacher_free_confidence,
        teacher_checkpoint=str(distill.teacher),
        num_train=len(student_train),
        quality=asdict(distill.quality),
    )
    dm = ModalityDataModule(prepared, modality, data.batch_size, seed)
    if distill.pairing.dynamic:
        epochs = schedule_from(distill.pairing, optim.epochs)
        dynm = DynamicMatching(
            epochs, distill.pairing.temperature, audit_dir=run_dir / "pairs-digests"
        )
        callbacks = (*callbacks, dynm)
    extra = {"teacher_checkpoint": str(distill.teacher), "pairing": distill.pairing.strategy}
    result = fit_and_test(module, dm, run_dir, run, optim.epochs, resume, callbacks, extra)
    save_teacher_quality(run_dir, module, teacher_train.ids, corrupted)
    final = pairing.teacher_rows(torch.arange(len(student_train)), optim.epochs - 1).numpy()
    # The pairs the student ended with, for `cmkd pairs show RUN`; a pair list never crosses
    # classes, so unpaired (zip) pairs, which do by design, are not kept.
    same_class = np.array_equal(teacher_train.y[final], student_train.y)
    if not isinstance(pairing, IdentityPairing) and same_class and is_global_zero():
        PairList.from_table(
            final, student_train, teacher_train, method=_pairing_name(distill.pairing)
        ).save(run_dir / "pairs.json")
    return result


def _pairing_name(cfg: PairingConfig) -> str:
    return cfg.strategy + ("+dynm" if cfg.dynamic else "")


def evaluate_checkpoint(
    checkpoint: str, split: str = "test", root: str | None = None, run: RunConfig | None = None
) -> dict[str, float]:
    """Score a checkpoint on a split of the data it was trained with (same source, seed and
    fractions, so 'test' is the test split the run never selected on)."""
    model, hp = load_model(checkpoint)
    data = DataConfig(**{**hp["data"], **({"root": root} if root else {})})
    prepared = prepare_data(data, hp["seed"])
    module = ClassifierModule(
        hp["network"], hp["modality"], hp["classes"], hp["optim"], seed=hp["seed"]
    )
    module.model = model
    dm = ModalityDataModule(prepared, hp["modality"], data.batch_size, hp["seed"])
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    if split not in loader:
        raise CmkdError(f"unknown split '{split}'; choose train, val or test")
    run = run or RunConfig(progress_bar=False)
    trainer = L.Trainer(
        accelerator=run.accelerator,
        devices=run.devices,
        logger=False,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
    )
    metrics = trainer.test(module, dataloaders=loader[split](), verbose=False)[0]
    return {k.replace("test/", f"{split}/"): float(v) for k, v in metrics.items()}


class _TeacherSpace(torch.nn.Module):
    """Both sides embedded by the frozen teacher (the student side through a pseudo-view into
    the teacher's modality): the matcher when the student's modality can be mapped into the
    teacher's, but not the other way (an RGB teacher, an MS student)."""

    def __init__(self, teacher: StandardizedNetwork) -> None:
        super().__init__()
        self.teacher = teacher

    def embed_a(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).embedding

    embed_b = embed_a


def match_pairs(
    teacher_checkpoint: str,
    data: DataConfig,
    modality: str,
    seed: int,
    output: str | Path,
    method: str = "ssm",
    pseudo_view: str | None = None,
    backbone: str = "resnet34",
    epochs: int = 100,
    batch_size: int = 64,
    progress: bool = True,
) -> PairList:
    """Pair every student training sample with a same-class teacher training sample and save
    the pair list. Methods: 'ssm' (SemBridge: a matcher trained on teacher samples and their
    pseudo-views in the student's modality), 'teacher_embedding' (top-1 cosine in the frozen
    teacher's embedding space, the student seen through a pseudo-view into the teacher's
    modality), 'class_random' (no pseudo-view exists, e.g. speech vs images)."""
    from cmkd.matching.pseudo_views import get_pseudo_view
    from cmkd.matching.ssm import ssm_pairs, train_matcher

    t_model, t_hp = load_model(teacher_checkpoint)
    prepared = prepare_data(data, seed)
    teacher = _teacher_data(t_hp, data, seed, prepared).rows(t_hp["modality"], "train")
    student = prepared.rows(modality, "train")
    _check_no_leak(teacher.ids, prepared, modality)
    if method != "class_random" and pseudo_view is None:
        raise CmkdError(f"matching method '{method}' needs a pseudo_view")
    if method == "class_random":
        rows = ClassRandomPairing(student.y, teacher.y, seed, student.classes).table_for(0)
        pairs = PairList.from_table(rows, student, teacher, method=method)
    elif method == "ssm":
        view = get_pseudo_view(pseudo_view).fit(teacher.x, student.x)
        matcher = train_matcher(
            teacher.x,
            view,
            backbone=backbone,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        pairs = ssm_pairs(matcher, teacher, student)
    elif method == "teacher_embedding":
        view = get_pseudo_view(pseudo_view).fit(student.x, teacher.x)
        as_teacher = Samples(view(student.x), student.y, student.ids, student.classes)
        pairs = ssm_pairs(_TeacherSpace(t_model), teacher, as_teacher, method=method)
    else:
        raise CmkdError(
            f"unknown matching method '{method}'; use ssm, teacher_embedding or class_random"
        )
    pairs.save(Path(output))
    return pairs
