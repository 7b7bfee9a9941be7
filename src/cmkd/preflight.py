"""Checks a run passes before its run folder exists (beside `training.check_run`): settings
that would otherwise fail only once the Trainer starts or the first file is written, each a
one-line CmkdError naming the option, its value and the fix. A bad input then leaves nothing
behind that would block the corrected rerun."""

from __future__ import annotations

import math
import os
from pathlib import Path

from cmkd.config import DistillConfig, OptimConfig, RunConfig
from cmkd.errors import CmkdError


def check_settings(run: RunConfig, optim: OptimConfig) -> None:
    """The optimiser's options, the Trainer's settings and the output folder."""
    check_optim(optim)
    check_trainer(run)
    check_output_dir(Path(run.output_dir))


def check_optim(optim: OptimConfig) -> None:
    if not (math.isfinite(optim.weight_decay) and optim.weight_decay >= 0):
        raise CmkdError(f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
    if not (math.isfinite(optim.momentum) and 0 <= optim.momentum < 1):
        raise CmkdError(f"optim.momentum must be in [0, 1), got {optim.momentum}")
    if optim.nesterov and optim.optimizer != "sgd":
        raise CmkdError(
            f"optim.nesterov applies to SGD only; set --optim.optimizer sgd or drop it "
            f"(optimizer is {optim.optimizer!r})"
        )
    if optim.nesterov and optim.momentum == 0:
        raise CmkdError("optim.nesterov needs optim.momentum > 0")


def check_trainer(run: RunConfig) -> None:
    """Build (and drop) a Trainer with the run's devices, strategy, nodes and precision: a
    setting Lightning refuses is an error now, not after the run folder was written."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from cmkd.precision import resolve_precision

    try:
        L.Trainer(
            accelerator=run.accelerator,
            devices=run.devices,
            strategy=run.strategy,
            num_nodes=run.num_nodes,
            precision=resolve_precision(run.precision, run.accelerator),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CmkdError(
            f"Lightning refuses the run settings (run.accelerator {run.accelerator!r}, "
            f"run.devices {run.devices!r}, run.strategy {run.strategy!r}, run.num_nodes "
            f"{run.num_nodes}, run.precision {run.precision!r}): {first}"
        ) from None


def check_output_dir(folder: Path) -> None:
    """`folder` (and anything under it) can be created and written: every part of it that
    exists is a folder, and the deepest existing one is writable."""
    folder = folder.expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CmkdError(
            f"cannot create the output folder {folder}: {existing} is a file, not a folder; "
            "choose another output folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CmkdError(
            f"cannot write the output folder {folder}: {existing} is not writable; "
            "choose another output folder"
        )


def check_terms(distill: DistillConfig) -> None:
    """Term names registered and each given once (a repeated name would silently replace the
    first), weights finite: before the teacher and the data are loaded."""
    from cmkd.losses import LOSSES

    seen: set[str] = set()
    for i, term in enumerate(distill.terms):
        if term.name not in LOSSES:
            raise CmkdError(
                f"distill.terms[{i}].name: unknown distillation term {term.name!r}; "
                f"registered: {', '.join(sorted(LOSSES))} (`cmkd losses` describes them)"
            )
        if term.name in seen:
            raise CmkdError(
                f"distill.terms lists {term.name!r} twice; give each term once (one weight, "
                "one set of params)"
            )
        seen.add(term.name)
        if not math.isfinite(term.weight):
            raise CmkdError(f"distill.terms[{i}].weight must be a finite number, got {term.weight}")
    if not (math.isfinite(distill.ce_weight) and distill.ce_weight >= 0):
        raise CmkdError(f"distill.ce_weight must be >= 0, got {distill.ce_weight}")
