"""The runs behind the CLI: supervised training, distillation (paired or asymmetric), offline
matching, evaluation, prediction.

Each run checks everything first (data, network against the inputs, terms, pairing, devices)
and only then creates its run folder, so a bad input leaves nothing behind that would block the
corrected rerun. Random streams are fixed by (seed, role) (`cmkd.seeding`): for one seed, the
trained network starts from the same weights and sees the same batches in `train` and in
`distill` with any loss, pairing or teacher.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmkd.checkpointing import file_sha256
from cmkd.checkpoints import load_model, resolve_checkpoint
from cmkd.classmap import ClassMap
from cmkd.config import (
    DataConfig,
    DistillConfig,
    MatchConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    RunConfig,
)
from cmkd.data.corruption import corrupt_teacher_inputs
from cmkd.data.datamodule import (
    ModalityDataModule,
    ModalityDataset,
    PreparedData,
    check_no_leak,
    checkpoint_data_config,
    prepare_data,
    trained_on,
)
from cmkd.errors import CmkdError
from cmkd.methods.classifier import ClassifierModule, module_args
from cmkd.methods.distill import DistillModule
from cmkd.methods.quality import save_teacher_quality
from cmkd.models.model import rebuild_spec
from cmkd.pairing import PairList, build_pairing, match
from cmkd.pairing.dynamic import schedule_from
from cmkd.pairing.rematch import DynamicMatching
from cmkd.pairing.strategies import IdentityPairing
from cmkd.preflight import check_output_dir, check_settings, check_terms
from cmkd.training import check_run, fit_and_test, is_global_zero, open_run_dir, plain_trainer


def _resolved(command: str, modality: str, seed: int, **sections) -> dict[str, Any]:
    """The config a run folder keeps: every section as plain data, so the run can be repeated."""
    return {
        "command": command,
        "modality": modality,
        "seed": seed,
        **{name: asdict(section) for name, section in sections.items()},
    }


def _keep_rebuild_spec(module: ClassifierModule) -> None:
    """The checkpoint's network spec says what rebuilds the network, not where its initial
    weights came from (`model.options.checkpoint_path`, `pretrained`): a teacher keeps
    loading after that file moves. The run's config.yaml keeps them for the record."""
    module.hparams["network"] = rebuild_spec(module.hparams["network"])


def _open_run(run: RunConfig, default_name: str, seed: int, config: dict[str, Any]):
    """The run folder, once every check has passed; its path is checked first (a file in the
    way is a one-line error, not a traceback with half a folder)."""
    check_output_dir(Path(run.output_dir) / (run.name or default_name) / f"seed{seed}")
    return open_run_dir(run, default_name, seed, config)


def _check_module(module: ClassifierModule, dm: ModalityDataModule) -> None:
    """One small training batch through the network (and the distillation terms) before the
    run folder exists: a backbone that cannot take these inputs is a one-line error here, not
    a traceback after the folder was written."""
    train = dm.sets["train"]
    example_rows = getattr(module, "example_rows", None)
    rows = example_rows(train.y) if example_rows else range(min(2, len(train)))
    module.check_batch(train.batch(rows))


def train_classifier(
    data: DataConfig,
    model: ModelConfig,
    optim: OptimConfig,
    run: RunConfig,
    modality: str,
    seed: int = 0,
    *,
    callbacks: tuple = (),
    prepared: PreparedData | None = None,
) -> dict[str, Any]:
    """Train one network on one modality with cross-entropy (a teacher, or the no-KD student)."""
    check_run(run, optim, data)
    check_settings(run, optim)
    prepared = prepared or prepare_data(data, seed)
    module = ClassifierModule(**module_args(model, optim, data, prepared, modality, seed))
    _keep_rebuild_spec(module)
    dm = ModalityDataModule(prepared, modality, data.batch_size, seed)
    _check_module(module, dm)
    config = _resolved("train", modality, seed, data=data, model=model, optim=optim, run=run)
    run_dir, resume = _open_run(run, f"{data.source}-{modality}-{model.backbone}", seed, config)
    return fit_and_test(module, dm, run_dir, run, optim.epochs, resume, callbacks)


def _teacher_bank(distill: DistillConfig, data: DataConfig, seed: int, prepared: PreparedData):
    """(frozen teacher, its hyperparameters, the teacher-modality training samples it teaches
    from, the class map or None), checked: the same classes or a class map between them (then
    the samples are those of the used teacher classes, relabelled into the student's classes),
    and no leak into the student's scored splits (checked by the caller)."""
    teacher, t_hp = load_model(distill.teacher, distill.teacher_weights)
    class_map = ClassMap.build(distill.class_map, t_hp["classes"], prepared.classes)
    t_mod = t_hp["modality"]
    bank = trained_on(t_hp, data, seed, prepared).rows(t_mod, "train")
    if distill.teacher_data is not None:
        # Another bank of teacher-modality samples, e.g. the true twins for an oracle row.
        other = DataConfig(**{**asdict(distill.teacher_data), "root": data.root})
        bank = prepare_data(other, seed).rows(t_mod, "train")
    if class_map is not None:
        bank = class_map.teacher_samples(bank)
    return teacher, t_hp, bank, class_map


def distill_student(
    data: DataConfig,
    model: ModelConfig,
    optim: OptimConfig,
    run: RunConfig,
    distill: DistillConfig,
    modality: str,
    seed: int = 0,
    *,
    callbacks: tuple = (),
    prepared: PreparedData | None = None,
) -> dict[str, Any]:
    """The frozen teacher of `distill.teacher` teaches a student on `modality`. Teacher and
    student samples may be the same (paired) or not (asymmetric: only labels are shared);
    `distill.pairing` says which teacher sample teaches each student sample."""
    if not distill.teacher:
        raise CmkdError("no teacher checkpoint: set --distill.teacher PATH (a .ckpt or run folder)")
    check_run(run, optim, data)
    check_settings(run, optim)
    check_terms(distill)
    prepared = prepared or prepare_data(data, seed)
    teacher, t_hp, teacher_train, class_map = _teacher_bank(distill, data, seed, prepared)
    check_no_leak(teacher_train.ids, prepared, modality)
    student_train = prepared.rows(modality, "train")
    covered = None if class_map is None else class_map.covered_labels
    pairing = build_pairing(distill.pairing, student_train, teacher_train, seed, covered)
    # The robustness scenario's one hook: a seeded share of the teacher's inputs degraded.
    teacher_inputs, corrupted = corrupt_teacher_inputs(
        ModalityDataset(teacher_train, t_hp["modality"]).x, distill.corruption
    )
    teacher_path = str(Path(distill.teacher).expanduser().resolve())
    # The student's checkpoints name the teacher's file and its hash instead of copying its
    # weights; a resume rebuilds the teacher from the config and refuses a changed file.
    teacher_file = resolve_checkpoint(distill.teacher, distill.teacher_weights)
    module = DistillModule(
        **module_args(model, optim, data, prepared, modality, seed),
        teacher=teacher,
        teacher_inputs=teacher_inputs,
        teacher_labels=torch.from_numpy(teacher_train.y),
        pairing=pairing,
        terms=[asdict(t) for t in distill.terms],
        ce_weight=distill.ce_weight,
        cache_teacher=distill.cache_teacher,
        teacher_target=distill.teacher_target,
        teacher_free_confidence=distill.teacher_free_confidence,
        teacher_checkpoint=str(teacher_file),
        teacher_sha256=file_sha256(teacher_file),
        num_train=len(student_train),
        quality=asdict(distill.quality),
        class_map=class_map,
    )
    _keep_rebuild_spec(module)
    dm = ModalityDataModule(prepared, modality, data.batch_size, seed)
    _check_module(module, dm)
    # The saved config names the teacher (and a class map file) by its absolute path: a rerun
    # from another folder finds the same file.
    distill = replace(distill, teacher=teacher_path)
    if isinstance(distill.class_map, str):
        distill = replace(distill, class_map=str(Path(distill.class_map).expanduser().resolve()))
    config = _resolved(
        "distill", modality, seed, data=data, model=model, optim=optim, run=run, distill=distill
    )
    names = "+".join(t.name for t in distill.terms) or "ce"
    default_name = f"{data.source}-{t_hp['modality']}-to-{modality}-{names}"
    run_dir, resume = _open_run(run, default_name, seed, config)
    if distill.pairing.dynamic:
        epochs = schedule_from(distill.pairing, optim.epochs)
        dynm = DynamicMatching(
            epochs, distill.pairing.temperature, audit_dir=run_dir / "pairs-digests"
        )
        callbacks = (*callbacks, dynm)
    extra = {"teacher_checkpoint": str(teacher_file), "pairing": _pairing_name(distill.pairing)}
    if class_map is not None:
        extra["class_map"] = class_map.record()
    result = fit_and_test(module, dm, run_dir, run, optim.epochs, resume, callbacks, extra)
    save_teacher_quality(run_dir, module, teacher_train.ids, corrupted)
    final = pairing.table_for(optim.epochs - 1)
    # The pairs the student ended with, for `cmkd pairs show RUN`; a pair list never crosses
    # classes, so unpaired (zip) pairs, which do by design, are not kept. Under a class map,
    # students of uncovered classes have no teacher (-1).
    taught = final >= 0
    same_class = np.array_equal(teacher_train.y[final[taught]], student_train.y[taught])
    if not isinstance(pairing, IdentityPairing) and same_class and is_global_zero():
        PairList.from_table(
            final,
            student_train,
            teacher_train,
            method=_pairing_name(distill.pairing),
            class_map=class_map,
        ).save(run_dir / "pairs.json")
    return result


def _pairing_name(cfg: PairingConfig) -> str:
    return cfg.strategy + ("+dynm" if cfg.dynamic else "")


def evaluate_checkpoint(
    checkpoint: str, split: str = "test", root: str | None = None, run: RunConfig | None = None
) -> dict[str, float]:
    """Score a checkpoint on a split of the data it was trained with (same source, seed and
    fractions, so 'test' is the test split the run never selected on)."""
    from cmkd.data.datamodule import SPLITS

    if split not in SPLITS:
        raise CmkdError(f"unknown split '{split}'; choose train, val or test")
    model, hp = load_model(checkpoint)
    data = checkpoint_data_config(hp, **({"root": root} if root else {}))
    prepared = prepare_data(data, hp["seed"])
    module = ClassifierModule(
        rebuild_spec(hp["network"]), hp["modality"], hp["classes"], hp["optim"], seed=hp["seed"]
    )
    module.model = model
    dm = ModalityDataModule(prepared, hp["modality"], data.batch_size, hp["seed"])
    if not len(dm.sets[split]):
        raise CmkdError(f"the {split} split of {checkpoint}'s data is empty")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    trainer = plain_trainer(run or RunConfig(progress_bar=False), module)
    metrics = trainer.test(module, dataloaders=loader[split](), verbose=False)[0]
    return {k.replace("test/", f"{split}/"): float(v) for k, v in metrics.items()}


def match_pairs(
    teacher_checkpoint: str,
    data: DataConfig,
    modality: str,
    seed: int = 0,
    output: str | Path = "pairs.json",
    method: str = "ssm",
    pseudo_view: str | None = None,
    backbone: str = "resnet34",
    epochs: int = 100,
    batch_size: int = 64,
    *,
    run: RunConfig | None = None,
    progress: bool = True,
    class_map: str | dict[str, str | None] | None = None,
) -> PairList:
    """Pair every student training sample with a same-class teacher training sample with the
    registered matcher `method` and save the pair list (`cmkd.pairing.matchers`: ssm,
    teacher_embedding, class_random). With a `class_map` (a teacher of other classes) the
    teacher samples count as the student classes their classes map to, and students of
    uncovered classes get no teacher."""
    cfg = MatchConfig(method, pseudo_view, backbone, epochs, batch_size)
    run = run or RunConfig(progress_bar=progress)
    check_output_dir(Path(output).parent)
    t_model, t_hp = load_model(teacher_checkpoint)
    prepared = prepare_data(data, seed)
    mapped = ClassMap.build(class_map, t_hp["classes"], prepared.classes)
    teacher = trained_on(t_hp, data, seed, prepared).rows(t_hp["modality"], "train")
    student = prepared.rows(modality, "train")
    check_no_leak(teacher.ids, prepared, modality)
    if mapped is not None:
        teacher = mapped.teacher_samples(teacher)
    pairs = match(method, t_model, teacher, student, cfg, seed, run, mapped)
    pairs.save(Path(output))
    return pairs


def predict_checkpoint(
    checkpoint: str,
    output: str | Path,
    split: str = "test",
    data: DataConfig | None = None,
    batch_size: int = 256,
    run: RunConfig | None = None,
) -> Path:
    """Predictions of a checkpoint's network as CSV (id, label, predicted class, one probability
    per class): on a split of the data it was trained with, or, with `data`, on every sample
    of another source of the same modality and classes."""
    import csv

    from cmkd.io import atomic_path
    from cmkd.models.inference import predict
    from cmkd.training import device_of

    check_output_dir(Path(output).parent)
    model, hp = load_model(checkpoint)
    if data is None:
        from cmkd.data.datamodule import SPLITS

        if split not in SPLITS:
            raise CmkdError(f"unknown split '{split}'; choose train, val or test")
        samples = prepare_data(checkpoint_data_config(hp), hp["seed"]).rows(hp["modality"], split)
    else:
        prepared = prepare_data(data, hp["seed"])
        prepared._check(hp["modality"])
        samples = prepared.samples[hp["modality"]]
        if samples.classes != hp["classes"]:
            raise CmkdError(
                f"the data's classes {samples.classes} differ from the model's {hp['classes']}"
            )
    device = device_of(run)
    out = predict(model.to(device), samples.x, batch_size, device, ("logits",))
    prob = out.logits.float().softmax(dim=1).numpy()
    classes = hp["classes"]
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "predicted", *(f"p_{c}" for c in classes)])
        for i, row in enumerate(prob):
            writer.writerow(
                [samples.ids[i], classes[samples.y[i]], classes[int(row.argmax())]]
                + [f"{v:.6f}" for v in row]
            )
    return Path(output)
