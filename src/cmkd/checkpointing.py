"""Writing a run's checkpoints: what goes in them, when, and how.

- `best.ckpt`: the network (and a distillation's trained adapters) with the best validation
  accuracy so far, weights only: it is read for testing, evaluation and as a teacher, never
  resumed from, so optimiser state would only make it 2-3x larger.
- `last.ckpt`: the full training state (optimiser, scheduler, loops, callbacks, the global
  random generators) every `checkpoint_every` epochs and after the last: the resume point.
- A frozen teacher's weights are in neither (`DistillModule` keeps only its file's path and
  SHA-256 in the hyperparameters): they are already on disk in the teacher's own checkpoint.

Every file goes through `AtomicCheckpointIO` (temp file in the same folder, then rename), so a
process killed mid-write leaves the previous file. fsync is optional (`durable`): it protects
against power loss only, and costs a disk flush per checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cmkd.epochs import EpochPlan
from cmkd.errors import CmkdError
from cmkd.io import write_with


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file in the checkpoint's own folder, then renamed over the
    target (os.replace): a process killed mid-write leaves the previous complete file, never a
    truncated one. `durable` also flushes file and folder to disk (power loss). Lightning's own
    writer goes through fsspec, whose temp file lies in the system temp folder: when that is
    another filesystem (a tmpfs /tmp) the final move is a copy, written in place. Local paths
    only; anything with a URL scheme goes to Lightning's writer."""

    def __init__(self, durable: bool = False) -> None:
        super().__init__()
        self.durable = durable

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        write_with(path, lambda f: torch.save(checkpoint, f), durable=self.durable)


class RunCheckpoints(Checkpoint):
    """best.ckpt (weights only) whenever validation accuracy improves; last.ckpt (full state)
    at the epochs the plan says. Epochs in its records are data epochs. `save_seconds` is the
    time the training thread spent saving (for `cmkd bench perf`)."""

    def __init__(self, folder: str | Path, plan: EpochPlan, monitor: str = "val/acc") -> None:
        self.folder, self.plan, self.monitor = Path(folder), plan, monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.save_seconds = 0.0
        self.saves = 0

    @property
    def best_path(self) -> Path | None:
        return None if self.best_score is None else self.folder / "best.ckpt"

    @property
    def last_path(self) -> Path:
        return self.folder / "last.ckpt"

    def _save(self, trainer, name: str, weights_only: bool) -> None:
        start = time.perf_counter()
        trainer.save_checkpoint(self.folder / name, weights_only=weights_only)
        self.save_seconds += time.perf_counter() - start
        self.saves += 1

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        # Ties keep the earlier epoch; NaN is never an improvement.
        if not math.isnan(score) and (self.best_score is None or score > self.best_score):
            self.best_score = score
            self.best_epoch = self.plan.last_data_epoch(trainer.current_epoch)
            self._save(trainer, "best.ckpt", weights_only=True)

    def on_train_epoch_end(self, trainer, module) -> None:
        # A Checkpoint runs after the module's own on_train_epoch_end: the saved state has
        # the epoch's logs flushed.
        if self.plan.checkpoints(trainer.current_epoch):
            self._save(trainer, "last.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        # The block size says what Lightning's epoch counter means in data epochs: a resume
        # must count the same way (check_resume_checkpoint).
        return {"best_score": self.best_score, "best_epoch": self.best_epoch,
                "epochs_per_lightning_epoch": self.plan.block}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")


class RandomStates(Callback):
    """The global random generators (torch, CUDA, numpy, Python) saved with last.ckpt and put
    back on resume: dropout, augmentation and whatever else draws from them continue where the
    interrupted run stopped, so the resumed run ends with the uninterrupted run's weights.
    Saved as tensors and plain values, which a weights-only load reads."""

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        version, internal, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        n = state_dict["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = state_dict["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def check_resume_checkpoint(path: str | Path, plan: EpochPlan | None = None) -> None:
    """A checkpoint to resume from must load (weights only, no code run), hold training state
    and count epochs the way `plan` does: a truncated or tampered file, a weights-only
    best.ckpt or another grouping of data epochs is a CmkdError naming it, not a traceback
    from deep inside Lightning (or a silently shifted schedule)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(ckpt, dict) and "state_dict" in ckpt and "epoch" in ckpt
    except Exception as err:  # torch raises many types on a damaged file
        raise CmkdError(f"cannot resume: {path} is not a readable checkpoint ({err})") from None
    if not ok:
        raise CmkdError(f"cannot resume: {path} is not a Lightning checkpoint")
    if "optimizer_states" not in ckpt:
        raise CmkdError(f"cannot resume: {path} holds weights only, no training state")
    state = (ckpt.get("callbacks") or {}).get(RunCheckpoints.__qualname__) or {}
    saved = state.get("epochs_per_lightning_epoch", 1)  # 1: checkpoints before blocks
    if plan is not None and saved != plan.block:
        raise CmkdError(
            f"cannot resume: {path} was written with {saved} data epochs per Lightning epoch, "
            f"this run would use {plan.block}; resume with the options the run started with "
            "(optim.epochs, run.val_every, run.checkpoint_every, run.epoch_blocks)"
        )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
