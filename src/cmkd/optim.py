"""The optimiser and learning-rate schedule of every trained module, built from its `optim`
settings (an `OptimConfig`, or the plain dict a checkpoint's hyperparameters keep).

One builder for every module (supervised, distillation, DisCoM-KD), so an option such as
`optim.momentum` means the same thing in every recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from cmkd.config import OptimConfig
from cmkd.errors import CmkdError

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
# What SGD used before `optim.momentum` and `optim.nesterov` existed: checkpoints saved then
# hold neither, and resume with the momentum they were trained with.
LEGACY_SGD = {"momentum": 0.9, "nesterov": False}


def _settings(optim: OptimConfig | Mapping[str, Any]) -> dict[str, Any]:
    return asdict(optim) if isinstance(optim, OptimConfig) else dict(optim)


FUSED_DEVICES = ("cpu", "cuda")
"""Where `run.fused_optimizer: auto` takes torch's fused kernel (Adam, AdamW and SGD have one)."""


def fused_step(setting: bool | str, params: list[torch.nn.Parameter]) -> bool | None:
    """What `run.fused_optimizer` (`setting`) resolves to for `params`: True (the fused
    kernel), or None (torch's default loop; an optimiser state saved by either loads into
    the other)."""
    if setting == "auto":
        setting = bool(params) and all(
            p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params
        )
    if setting not in (True, False):
        raise CmkdError(f"run.fused_optimizer must be true, false or auto, got {setting!r}")
    return True if setting else None


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    optim: OptimConfig | Mapping[str, Any],
    fused: bool | str = "auto",
) -> tuple[Optimizer, LRScheduler | None]:
    """The optimiser over the trainable ones of `params` and its schedule (None without one).
    SGD takes `momentum` and `nesterov`; the cosine schedule anneals over `epochs` (stepped
    once per epoch); `fused`: `run.fused_optimizer` (`fused_step`)."""
    cfg = _settings(optim)
    kind = OPTIMIZERS.get(cfg["optimizer"])
    if kind is None:
        raise CmkdError(
            f"unknown optim.optimizer {cfg['optimizer']!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    extra: dict[str, Any] = {}
    if cfg["optimizer"] == "sgd":
        extra = {key: cfg.get(key, default) for key, default in LEGACY_SGD.items()}
    trainable = [p for p in params if p.requires_grad]
    optimizer = kind(
        trainable,
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        fused=fused_step(fused, trainable),
        **extra,
    )
    scheduler = None
    if cfg.get("scheduler", "none") == "cosine":
        scheduler = CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    return optimizer, scheduler


def lightning_optimizers(
    params: Iterable[torch.nn.Parameter],
    optim: OptimConfig | Mapping[str, Any],
    fused: bool | str = "auto",
) -> Optimizer | dict[str, Any]:
    """`build_optimizer` in the form a LightningModule's `configure_optimizers` returns."""
    optimizer, scheduler = build_optimizer(params, optim, fused)
    if scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
