"""Run directories, the Lightning Trainer, and fit-then-test with honest model selection.

A run lives in one folder: config.yaml (resolved), checkpoints/{best,last}.ckpt, tensorboard/,
csv/metrics.csv and results.json. The checkpoint is chosen on validation accuracy; the test
split is scored twice, for the best-on-validation and the last-epoch weights, and never used
for any choice. Without a validation split the last epoch's weights are kept (nothing to
choose with); without a test split nothing is scored. results.json says which.

When validation and checkpoints happen, and how data epochs map onto Lightning epochs, is
`cmkd.epochs`; what a checkpoint holds and how it is written, `cmkd.checkpointing`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from cmkd.checkpointing import (
    AtomicCheckpointIO,
    RandomStates,
    RunCheckpoints,
    check_resume_checkpoint,
)
from cmkd.config import DataConfig, OptimConfig, RunConfig
from cmkd.data.datamodule import ModalityDataModule
from cmkd.epochs import EpochBlockLoader, EpochPlan, InOrder, plan_epochs, tiny_epochs
from cmkd.errors import CmkdError
from cmkd.io import write_atomic, write_json
from cmkd.models.matmul_weight_grad import convertible_convolutions, use_matmul_weight_grad
from cmkd.paths import child_path
from cmkd.precision import (
    resolve_channels_last,
    resolve_matmul_weight_grad,
    resolve_precision,
)
from cmkd.seeding import seed_for
from cmkd.served import standardized_once
from cmkd.threads import choose_threads, training_threads
from cmkd.tracking import TestTracker

__all__ = [
    "AtomicCheckpointIO",
    "build_trainer",
    "check_run",
    "device_of",
    "fit_and_test",
    "fitted",
    "is_global_zero",
    "open_run_dir",
    "plain_trainer",
]

# What a run folder holds before its first checkpoint: a start that failed there left
# nothing worth keeping, and must not block the rerun.
_BEFORE_FIRST_CHECKPOINT = {"config.yaml", "tensorboard", "csv", "checkpoints"}


def global_rank() -> int:
    """This process's DDP rank, 0 without DDP. Known before any Trainer exists: Lightning's
    launcher (and torchrun, SLURM) start ranks > 0 with their rank in the environment, and
    they re-run the whole command, run-folder set-up included."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """Whether this process writes the run's shared files (one writer, no races)."""
    return global_rank() == 0


def run_path(run: RunConfig, default_name: str, seed: int) -> Path:
    """The run folder `output_dir / name / seed<K>`; a name that would leave output_dir is a
    CmkdError (`cmkd.paths.child_path`)."""
    name = run.name if run.name is not None else default_name
    return child_path(run.output_dir, name, "run.name") / f"seed{int(seed)}"


def _holds_run(path: Path) -> bool:
    """Whether the folder holds something a new run must not silently replace: a checkpoint,
    results, or files cmkd did not write."""
    if (path / "results.json").exists():
        return True
    if any((path / "checkpoints").glob("*.ckpt")):
        return True
    return any(entry.name not in _BEFORE_FIRST_CHECKPOINT for entry in path.iterdir())


def open_run_dir(
    run: RunConfig, default_name: str, seed: int, config: dict
) -> tuple[Path, str | None]:
    """Create (or reopen, when resuming) the run folder; return it and the checkpoint to
    resume from. Refuses to mix a new run into an old one's folder; a folder left by a start
    that failed before its first checkpoint is cleared instead. Only rank 0 checks and
    writes: under DDP the other ranks start once rank 0 has set the folder up, and would
    otherwise find it taken (or, with overwrite, delete it)."""
    path = run_path(run, default_name, seed)
    last = path / "checkpoints" / "last.ckpt"
    if not is_global_zero():
        return path, str(last) if run.resume else None
    if run.resume:
        if not last.exists():
            raise CmkdError(f"nothing to resume: {last} does not exist")
        return path, str(last)
    if path.is_dir() and any(path.iterdir()):
        if _holds_run(path) and not run.overwrite:
            raise CmkdError(
                f"run folder {path} already holds a run; pass --run.resume true to continue it "
                "or --run.overwrite true to replace it"
            )
        shutil.rmtree(path)  # inside output_dir: run_path checked it
    write_atomic(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return path, None


def check_run(run: RunConfig, optim: OptimConfig, data: DataConfig | None = None) -> None:
    """Settings that would only fail once training starts, checked before anything is
    written: a one-line CmkdError naming the option and the fix. Without `data` (a run that
    batches by its own setting, DisCoM-KD) the batch size is the caller's to check."""
    if optim.epochs < 1:
        raise CmkdError(f"optim.epochs must be >= 1, got {optim.epochs}")
    if data is not None and data.batch_size < 1:
        raise CmkdError(f"data.batch_size must be >= 1, got {data.batch_size}")
    if not optim.lr > 0 or optim.lr != optim.lr or optim.lr == float("inf"):
        raise CmkdError(f"optim.lr must be a positive finite number, got {optim.lr}")
    if run.name is not None:
        child_path(run.output_dir, run.name, "run.name")
    choose_threads(run.threads, 1)
    plan_epochs(optim.epochs, run.val_every, run.checkpoint_every)
    for option in ("channels_last", "matmul_weight_grad", "fused_optimizer", "standardize_once"):
        if getattr(run, option) not in (True, False, "auto"):
            raise CmkdError(f"run.{option} must be true, false or auto, got {getattr(run, option)}")
    accelerator = str(run.accelerator).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CmkdError(
            f"run.accelerator is {run.accelerator!r} but this machine has no CUDA GPU; "
            "use --run.accelerator cpu (or auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise CmkdError("run.accelerator is 'mps' but MPS is not available; use cpu or auto")


def device_of(run: RunConfig | None) -> torch.device:
    """The device single-process work outside a Trainer runs on (matching, caches)."""
    accelerator = str(run.accelerator).lower() if run is not None else "cpu"
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def plain_trainer(
    run: RunConfig | None, module: torch.nn.Module, max_epochs: int | None = None
) -> L.Trainer:
    """A Trainer without run folder, loggers or checkpoints, on one device, for `module`:
    evaluation, prediction and the SSM matcher's training. Accelerator, precision and progress
    bar come from `run`."""
    run = run or RunConfig()
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=run.accelerator,
        devices=1,
        precision=resolve_precision(run.precision, run.accelerator, module),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


class _ValidationSchedule(Callback):
    """Validation at the Lightning epochs the plan says (Lightning's own
    check_val_every_n_epoch cannot also validate the last epoch)."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan

    def on_train_epoch_start(self, trainer, module) -> None:
        due = self.plan.validates(trainer.current_epoch)
        trainer.check_val_every_n_epoch = 1 if due else trainer.max_epochs + 1


def build_trainer(
    run_dir: Path,
    run: RunConfig,
    plan: EpochPlan | int,
    callbacks: list[Callback] | tuple = (),
) -> tuple[L.Trainer, RunCheckpoints]:
    """The run's Trainer and its checkpoint callback. `plan` may be a number of epochs (the
    default plan for it)."""
    if isinstance(plan, int):
        plan = plan_epochs(plan, run.val_every, run.checkpoint_every)
    checkpoints = RunCheckpoints(run_dir / "checkpoints", plan)
    writer = AtomicCheckpointIO(durable=run.durable_checkpoints)
    trainer = L.Trainer(
        max_epochs=plan.lightning_epochs,
        accelerator=run.accelerator,
        devices=run.devices,
        strategy=run.strategy,
        num_nodes=run.num_nodes,
        precision=resolve_precision(run.precision, run.accelerator),
        default_root_dir=run_dir,
        logger=[
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
            CSVLogger(run_dir, name="csv", version=""),
        ],
        callbacks=[checkpoints, RandomStates(), _ValidationSchedule(plan), *callbacks],
        plugins=[AsyncCheckpointIO(writer) if run.async_checkpoints else writer],
        limit_val_batches=None if plan.validation else 0,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return trainer, checkpoints


def _test_scores(metrics: dict[str, float], classes: list[str]) -> dict[str, Any]:
    return {
        "acc": metrics["test/acc"],
        "f1_macro": metrics["test/f1"],
        "acc_per_class": {c: metrics[f"test/acc_class/{c}"] for c in classes},
    }


def _split_size(datamodule: L.LightningDataModule, split: str) -> int | None:
    sets = getattr(datamodule, "sets", None)
    return len(sets[split]) if isinstance(sets, dict) and split in sets else None


def one_process(run: RunConfig) -> bool:
    """Whether the run trains in one process on one device (no DDP)."""
    return str(run.devices) == "1" and int(run.num_nodes) == 1


@dataclass
class Fit:
    """A finished `fitted` training: its Trainer and checkpoints, and what the run section of
    results.json records about how it ran."""

    trainer: L.Trainer
    checkpoints: RunCheckpoints
    plan: EpochPlan
    precision: str
    channels_last: bool
    matmul_weight_grad: bool
    standardized_once: bool
    threads: int
    seconds: float

    def run_record(self) -> dict[str, Any]:
        """The `run` section of results.json."""
        plan = self.plan
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "matmul_weight_grad": self.matmul_weight_grad,
            "fused_optimizer": any(
                group.get("fused") for opt in self.trainer.optimizers for group in opt.param_groups
            ),
            "inputs_standardized_once": self.standardized_once,
            "threads": self.threads,
            "val_every": plan.val_every if plan.validation else None,
            "checkpoint_every": plan.checkpoint_every,
            "epochs_per_lightning_epoch": plan.block,
            "checkpoint_seconds": round(self.checkpoints.save_seconds, 3),
        }


def fast_paths(module: torch.nn.Module, run: RunConfig) -> tuple[str, bool, bool]:
    """What the run's precision, channels-last layout and matmul weight gradients resolve to
    for `module` on its device (the last: on, and `module` has a convolution to convert)."""
    precision = resolve_precision(run.precision, run.accelerator, module)
    channels_last = resolve_channels_last(run.channels_last, module)
    matmul_weight_grad = resolve_matmul_weight_grad(
        run.matmul_weight_grad, run.accelerator
    ) and bool(convertible_convolutions(module))
    return precision, channels_last, matmul_weight_grad


def use_fast_paths(module: torch.nn.Module, run: RunConfig) -> tuple[str, bool, bool]:
    """`fast_paths`, with the layout and the weight gradients applied to `module` in place (as
    every fit does)."""
    precision, channels_last, matmul_weight_grad = fast_paths(module, run)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if matmul_weight_grad:
        use_matmul_weight_grad(module)
    return precision, channels_last, matmul_weight_grad


@contextmanager
def fitted(
    module: L.LightningModule,
    data: dict[str, Any],
    run_dir: Path,
    run: RunConfig,
    plan: EpochPlan,
    resume_from: str | None = None,
    callbacks: list[Callback] | tuple = (),
    datamodule: L.LightningDataModule | None = None,
) -> Iterator[Fit]:
    """Train `module` in its run folder and hand over the result; the block runs with the
    run's CPU threads (score there). Every recipe trains here: the Trainer of `build_trainer`
    (devices, precision, progress, validation and last.ckpt as `plan` says, best.ckpt where
    the module logs `val/acc`), channels-last where chosen, dropout and augmentation from the
    stream of (seed, "fit"), and a resume from `resume_from` checked first. `data`: the
    Trainer.fit arguments (`datamodule`, or the loaders); `datamodule` (the one `data` draws
    its training batches from): its training split is standardised once where
    `run.standardize_once` asks for it (`cmkd.served.serves`)."""
    if resume_from is not None:
        check_resume_checkpoint(resume_from, plan)
    precision, channels_last, matmul_weight_grad = use_fast_paths(module, run)
    module.fused_optimizer = run.fused_optimizer
    trainer, checkpoints = build_trainer(
        run_dir, replace(run, precision=precision), plan, callbacks
    )
    # Dropout and augmentation draw from a stream fixed by (seed, "fit"), whatever was built
    # before: the same for every method of one seed. A resume continues it from last.ckpt.
    L.seed_everything(seed_for(module.hparams.seed, "fit"), verbose=False)
    with training_threads(run.threads) as threads:
        start = time.perf_counter()
        with standardized_once(
            module, datamodule, run.accelerator, run.standardize_once, precision
        ) as served:
            # weights_only everywhere a checkpoint is read: loading one must never run code.
            trainer.fit(module, **data, ckpt_path=resume_from, weights_only=True)
        seconds = time.perf_counter() - start
        if trainer.interrupted:
            raise CmkdError(f"training was interrupted; resume with --run.resume true ({run_dir})")
        yield Fit(
            trainer,
            checkpoints,
            plan,
            precision,
            channels_last,
            matmul_weight_grad,
            served,
            threads,
            seconds,
        )


def fit_and_test(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    run: RunConfig,
    epochs: int,
    resume_from: str | None = None,
    callbacks: list[Callback] | tuple = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, then score the last-epoch and the best-on-validation weights on the test split.
    Writes results.json (with `extra` fields) in the run folder and returns the same record.

    Where the module supports it (one process, a `ModalityDataModule`, data epochs of a few
    steps), a Lightning epoch covers the data epochs between two validations (`cmkd.epochs`):
    callbacks then see one training batch per block of data epochs."""
    sizes = {split: _split_size(datamodule, split) for split in ("train", "val", "test")}
    blocks = (
        run.epoch_blocks
        and getattr(module, "supports_epoch_blocks", False)
        and isinstance(datamodule, ModalityDataModule)
        and tiny_epochs(len(datamodule.sets["train"]), datamodule.batch_size)
        and one_process(run)
    )
    plan = plan_epochs(
        epochs, run.val_every, run.checkpoint_every, bool(blocks), validation=sizes["val"] != 0
    )
    tracker = None
    if run.track_test and sizes["test"]:
        test = datamodule.sets["test"]
        tracker = TestTracker(test.x, test.y, plan)
        callbacks = (*callbacks, tracker)
    if plan.block > 1:
        module.automatic_optimization = False  # the module steps through each EpochBlock
        loader = EpochBlockLoader(datamodule, plan)
        val = InOrder(datamodule.sets["val"], datamodule.batch_size)
        data = {"train_dataloaders": loader, "val_dataloaders": val}
    else:
        data = {"datamodule": datamodule}
    with fitted(module, data, run_dir, run, plan, resume_from, callbacks, datamodule) as fit:
        scores = _score(fit.trainer, module, datamodule, fit.checkpoints, sizes["test"] != 0)
    results = {
        "modality": module.modality,
        "seed": module.hparams.seed,
        "epochs": epochs,
        **scores,
        "fit_seconds": round(fit.seconds, 2),
        "train_samples": sizes["train"],
        "run": fit.run_record(),
        **(
            {"teacher_seconds": round(module.teacher_seconds, 3)}
            if hasattr(module, "teacher_seconds")
            else {}
        ),
        **(tracker.results() if tracker is not None else {}),
        **(extra or {}),
    }
    if fit.trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
    return results


def _score(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    checkpoints: RunCheckpoints,
    test: bool,
) -> dict[str, Any]:
    """The selection and the test scores of the last-epoch and best-on-validation weights."""
    classes = module.classes
    epochs = checkpoints.plan.epochs

    def scored(**kwargs: Any) -> dict[str, Any]:
        if not test:
            return {}
        metrics = trainer.test(module, datamodule=datamodule, verbose=False, **kwargs)[0]
        return {"test": _test_scores(metrics, classes)}

    last = {"epoch": epochs - 1, **scored()}
    evaluation = "test split" if test else "none (no test split)"
    if checkpoints.best_path is None:
        why = "no validation score" if checkpoints.plan.validation else "no validation split"
        return {
            "selection": f"last epoch ({why})",
            "evaluation": evaluation,
            "last": last,
            "checkpoint": str(checkpoints.last_path),
        }
    best = scored(ckpt_path=str(checkpoints.best_path), weights_only=True)
    every = checkpoints.plan.val_every
    return {
        "selection": "best validation accuracy"
        + (f" (validated every {every} epochs and after the last)" if every > 1 else ""),
        "evaluation": evaluation,
        "best": {"epoch": checkpoints.best_epoch, "val_acc": checkpoints.best_score, **best},
        "last": last,
        "checkpoint": str(checkpoints.best_path),
    }
