"""Run directories, the Lightning Trainer, and fit-then-test with honest model selection.

A run lives in one folder: config.yaml (resolved), checkpoints/{best,last}.ckpt, tensorboard/,
csv/metrics.csv and results.json. The checkpoint is chosen on validation accuracy; the test
split is scored twice, for the best-on-validation and the last-epoch weights, and never used
for any choice.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cmkd.config import DataConfig, OptimConfig, RunConfig
from cmkd.errors import CmkdError
from cmkd.io import write_atomic, write_json, write_with
from cmkd.seeding import seed_for


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file in the checkpoint's own folder, flushed to disk, then
    renamed over the target (os.replace): a process killed mid-write (SIGKILL, power loss)
    leaves the previous complete file, never a truncated one. Lightning's own writer goes
    through fsspec, whose temp file lies in the system temp folder: when that is another
    filesystem (a tmpfs /tmp) the final move is a copy, written in place. Local paths only;
    anything with a URL scheme goes to Lightning's writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        write_with(path, lambda f: torch.save(checkpoint, f), durable=True)


def global_rank() -> int:
    """This process's DDP rank, 0 without DDP. Known before any Trainer exists: Lightning's
    launcher (and torchrun, SLURM) start ranks > 0 with their rank in the environment, and
    they re-run the whole command, run-folder set-up included."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """Whether this process writes the run's shared files (one writer, no races)."""
    return global_rank() == 0


def open_run_dir(
    run: RunConfig, default_name: str, seed: int, config: dict
) -> tuple[Path, str | None]:
    """Create (or reopen, when resuming) the run folder; return it and the checkpoint to
    resume from. Refuses to mix a new run into an old one's folder. Only rank 0 checks and
    writes: under DDP the other ranks start once rank 0 has set the folder up, and would
    otherwise find it taken (or, with overwrite, delete it)."""
    path = Path(run.output_dir) / (run.name or default_name) / f"seed{seed}"
    last = path / "checkpoints" / "last.ckpt"
    if not is_global_zero():
        return path, str(last) if run.resume else None
    if run.resume:
        if not last.exists():
            raise CmkdError(f"nothing to resume: {last} does not exist")
        return path, str(last)
    if path.exists() and any(path.iterdir()):
        if not run.overwrite:
            raise CmkdError(
                f"run folder {path} already holds a run; pass --run.resume true to continue it "
                "or --run.overwrite true to replace it"
            )
        shutil.rmtree(path)
    write_atomic(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return path, None


def check_run(run: RunConfig, optim: OptimConfig, data: DataConfig) -> None:
    """Settings that would only fail once training starts, checked before anything is
    written: a one-line CmkdError naming the option and the fix."""
    if optim.epochs < 1:
        raise CmkdError(f"optim.epochs must be >= 1, got {optim.epochs}")
    if data.batch_size < 1:
        raise CmkdError(f"data.batch_size must be >= 1, got {data.batch_size}")
    if not optim.lr > 0 or optim.lr != optim.lr or optim.lr == float("inf"):
        raise CmkdError(f"optim.lr must be a positive finite number, got {optim.lr}")
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


def plain_trainer(run: RunConfig | None, max_epochs: int | None = None) -> L.Trainer:
    """A Trainer without run folder, loggers or checkpoints, on one device: evaluation,
    prediction and the SSM matcher's training. Accelerator, precision and progress bar come
    from `run`."""
    run = run or RunConfig()
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=run.accelerator,
        devices=1,
        precision=run.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def build_trainer(
    run_dir: Path, run: RunConfig, epochs: int, callbacks: list[Callback] | tuple = ()
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/acc",
        mode="max",
        enable_version_counter=False,
    )
    # Its own callback: Lightning's save_last only copies a checkpoint when the monitored one
    # is saved, so last.ckpt would hold the best epoch and a resume would start from there.
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=run.accelerator,
        devices=run.devices,
        strategy=run.strategy,
        num_nodes=run.num_nodes,
        precision=run.precision,
        default_root_dir=run_dir,
        logger=[
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
            CSVLogger(run_dir, name="csv", version=""),
        ],
        callbacks=[checkpoint, last, *callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return trainer, checkpoint


def _check_checkpoint(path: str) -> None:
    """A checkpoint to resume from must load (weights only, no code run): a truncated or
    tampered file is a CmkdError naming it, not a traceback from deep inside Lightning."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(ckpt, dict) and "state_dict" in ckpt and "epoch" in ckpt
    except Exception as err:  # torch raises many types on a damaged file
        raise CmkdError(f"cannot resume: {path} is not a readable checkpoint ({err})") from None
    if not ok:
        raise CmkdError(f"cannot resume: {path} is not a Lightning checkpoint")


def _test_scores(metrics: dict[str, float], classes: list[str]) -> dict[str, Any]:
    return {
        "acc": metrics["test/acc"],
        "f1_macro": metrics["test/f1"],
        "acc_per_class": {c: metrics[f"test/acc_class/{c}"] for c in classes},
    }


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
    Writes results.json (with `extra` fields) in the run folder and returns the same record."""
    if resume_from is not None:
        _check_checkpoint(resume_from)
    trainer, checkpoint = build_trainer(run_dir, run, epochs, callbacks)
    # Dropout and augmentation draw from a stream fixed by (seed, "fit"), whatever was built
    # before: the same for every method of one seed.
    L.seed_everything(seed_for(module.hparams.seed, "fit"), verbose=False)
    start = time.perf_counter()
    # weights_only everywhere a checkpoint is read: loading one must never execute code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_s = time.perf_counter() - start
    if trainer.interrupted:
        raise CmkdError(f"training was interrupted; resume with --run.resume true ({run_dir})")
    classes = module.classes
    last = _test_scores(trainer.test(module, datamodule=datamodule, verbose=False)[0], classes)
    best_path = checkpoint.best_model_path
    best = _test_scores(
        trainer.test(
            module, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=True
        )[0],
        classes,
    )
    best_epoch = torch.load(best_path, map_location="cpu", weights_only=True)["epoch"]
    results = {
        "modality": module.modality,
        "seed": module.hparams.seed,
        "epochs": epochs,
        "best": {"epoch": best_epoch, "val_acc": float(checkpoint.best_model_score), "test": best},
        "last": {"epoch": epochs - 1, "test": last},
        "checkpoint": str(best_path),
        "fit_seconds": round(fit_s, 2),
        "train_samples": len(datamodule.sets["train"]) if hasattr(datamodule, "sets") else None,
        **(
            {"teacher_seconds": round(module.teacher_seconds, 3)}
            if hasattr(module, "teacher_seconds")
            else {}
        ),
        **(extra or {}),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
    return results
