"""The runs behind the CLI: supervised training, paired distillation, evaluation.

Each takes the typed configs, prepares the data once, and writes one run folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.data.datamodule import ModalityDataModule, PreparedData, prepare_data
from cmkd.data.normalize import Standardize
from cmkd.data.pairing import IdentityPairing
from cmkd.errors import CmkdError
from cmkd.methods.classifier import ClassifierModule
from cmkd.methods.distill import DistillModule
from cmkd.models.model import StandardizedNetwork, build_model
from cmkd.training import fit_and_test, open_run_dir


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
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hparams = ckpt["hyper_parameters"]
        state = {
            k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
        }
    except Exception as err:  # a truncated or foreign file
        raise CmkdError(f"{path} is not a readable cmkd checkpoint ({err})") from None
    model = build_model(hparams["network"])
    model.load_state_dict(state)
    return model.eval(), hparams


def _check_teacher_split(teacher: dict[str, Any], data: DataConfig, seed: int) -> None:
    """A teacher trained on another split of the same source may have seen this run's test
    samples; refuse rather than report a leaked score."""
    t_data = teacher.get("data") or {}
    same_source = t_data.get("source") == data.source and t_data.get("options") == data.options
    keys = ("val_fraction", "test_fraction", "split")
    if same_source and (
        teacher["seed"] != seed or any(t_data[k] != getattr(data, k) for k in keys)
    ):
        raise CmkdError(
            f"the teacher was trained on another split of {data.source} (seed {teacher['seed']}); "
            f"train a teacher with seed {seed} and the same split fractions"
        )


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
    """Paired distillation: the frozen teacher of `distill.teacher` teaches a student on
    `modality` through the identity pairing of the shared samples."""
    L.seed_everything(seed, verbose=False)
    teacher, t_hp = load_model(distill.teacher)
    _check_teacher_split(t_hp, data, seed)
    prepared = prepared or prepare_data(data, seed)
    t_mod = t_hp["modality"]
    if t_hp["classes"] != prepared.classes:
        raise CmkdError(
            f"teacher classes {t_hp['classes']} differ from the data's {prepared.classes}"
        )
    teacher_train = prepared.rows(t_mod, "train")
    student_ids = prepared.rows(modality, "train").ids
    pairing = IdentityPairing(student_ids, teacher_train.ids)
    terms = [asdict(t) for t in distill.terms]
    config = _resolved(
        "distill", modality, seed, data=data, model=model, optim=optim, run=run, distill=distill
    )
    names = "+".join(t["name"] for t in terms) or "ce"
    run_dir, resume = open_run_dir(
        run, f"{data.source}-{t_mod}-to-{modality}-{names}", seed, config
    )
    x_t = teacher_train.x
    teacher_inputs = torch.from_numpy(
        x_t if x_t.dtype.name in ("uint8", "float32") else x_t.astype("float32")
    )
    module = DistillModule(
        **_module_args(model, optim, data, prepared, modality, seed),
        teacher=teacher,
        teacher_inputs=teacher_inputs,
        pairing=pairing,
        terms=terms,
        ce_weight=distill.ce_weight,
        cache_teacher=distill.cache_teacher,
        teacher_checkpoint=str(distill.teacher),
        num_train=len(student_ids),
    )
    dm = ModalityDataModule(prepared, modality, data.batch_size, seed)
    extra = {"teacher_checkpoint": str(distill.teacher)}
    return fit_and_test(module, dm, run_dir, run, optim.epochs, resume, callbacks, extra)


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
