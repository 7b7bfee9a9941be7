"""cmkd: cross-modal knowledge distillation.

The public API is the names below; each is imported from its module when first used, so
`import cmkd` (and the `cmkd` command's help) does not load torch or Lightning.

    import lightning as L
    import cmkd

    ms = cmkd.DataModule.from_source("eurosat_paired", "ms", batch_size=32)
    teacher = cmkd.ClassifierTask.for_data(ms, model="small_cnn")
    L.Trainer(max_epochs=30).fit(teacher, ms)
    student = cmkd.DistillTask.for_data(
        ms.with_modality("rgb"), teacher=teacher, teacher_data=ms, terms=["kd"]
    )

Networks: `create_network`, `available_backbones`, `adapt_network` (your own module),
`ModelOutput`, `load_model`. Data: `DataModule`. Tasks (LightningModules): `ClassifierTask`,
`DistillTask`; `use_fast_paths` readies one for a plain Trainer as the CLI does (layout, weight
gradients; it returns the precision), and `standardized_once` serves its training data as the
CLI does (standardised once per fit on a CPU, not once per batch). Registries: `LOSSES` /
`register_loss` / `DistillationTerm`, `PAIRINGS` / `register_pairing` / `Pairing`, `MATCHERS`
/ `register_matcher`, `PairList`. Configs (the CLI's sections): `DataConfig`, `ModelConfig`,
`OptimConfig`, `RunConfig`, `DistillConfig`, `TermConfig`, `PairingConfig`, `MatchConfig`,
`QualityConfig`, `CorruptionConfig`. Errors: `CmkdError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute there)
_EXPORTS: dict[str, tuple[str, str]] = {
    # networks
    "create_network": ("cmkd.models.backbones", "create_network"),
    "available_backbones": ("cmkd.models.backbones", "available_backbones"),
    "adapt_network": ("cmkd.models.adapter", "adapt_network"),
    "AdaptedNetwork": ("cmkd.models.adapter", "AdaptedNetwork"),
    "ModelOutput": ("cmkd.models.outputs", "ModelOutput"),
    "load_model": ("cmkd.checkpoints", "load_model"),
    # data and tasks
    "DataModule": ("cmkd.data.datamodule", "ModalityDataModule"),
    "ClassifierTask": ("cmkd.methods.classifier", "ClassifierModule"),
    "DistillTask": ("cmkd.methods.distill", "DistillModule"),
    "use_fast_paths": ("cmkd.training", "use_fast_paths"),
    "standardized_once": ("cmkd.served", "standardized_once"),
    # registries (importing their packages registers the built-ins)
    "LOSSES": ("cmkd.losses", "LOSSES"),
    "DistillationTerm": ("cmkd.losses", "DistillationTerm"),
    "register_loss": ("cmkd.losses.base", "register"),
    "PAIRINGS": ("cmkd.pairing", "PAIRINGS"),
    "MATCHERS": ("cmkd.pairing", "MATCHERS"),
    "Pairing": ("cmkd.pairing", "Pairing"),
    "PairList": ("cmkd.pairing", "PairList"),
    "register_pairing": ("cmkd.pairing", "register_pairing"),
    "register_matcher": ("cmkd.pairing", "register_matcher"),
    # configs and errors (light modules)
    "DataConfig": ("cmkd.config", "DataConfig"),
    "ModelConfig": ("cmkd.config", "ModelConfig"),
    "OptimConfig": ("cmkd.config", "OptimConfig"),
    "RunConfig": ("cmkd.config", "RunConfig"),
    "DistillConfig": ("cmkd.config", "DistillConfig"),
    "TermConfig": ("cmkd.config", "TermConfig"),
    "PairingConfig": ("cmkd.config", "PairingConfig"),
    "MatchConfig": ("cmkd.config", "MatchConfig"),
    "QualityConfig": ("cmkd.config", "QualityConfig"),
    "CorruptionConfig": ("cmkd.config", "CorruptionConfig"),
    "CmkdError": ("cmkd.errors", "CmkdError"),
}

# A literal, so that linters and type checkers read it; a test checks it lists _EXPORTS.
__all__ = [
    "__version__",
    "create_network",
    "available_backbones",
    "adapt_network",
    "AdaptedNetwork",
    "ModelOutput",
    "load_model",
    "DataModule",
    "ClassifierTask",
    "DistillTask",
    "use_fast_paths",
    "standardized_once",
    "LOSSES",
    "DistillationTerm",
    "register_loss",
    "PAIRINGS",
    "MATCHERS",
    "Pairing",
    "PairList",
    "register_pairing",
    "register_matcher",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "DistillConfig",
    "TermConfig",
    "PairingConfig",
    "MatchConfig",
    "QualityConfig",
    "CorruptionConfig",
    "CmkdError",
]


def __getattr__(name: str) -> Any:
    """PEP 562: import a public name's module on first use, then keep the name here."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'cmkd' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from cmkd.checkpoints import load_model
    from cmkd.config import (
        CorruptionConfig,
        DataConfig,
        DistillConfig,
        MatchConfig,
        ModelConfig,
        OptimConfig,
        PairingConfig,
        QualityConfig,
        RunConfig,
        TermConfig,
    )
    from cmkd.data.datamodule import ModalityDataModule as DataModule
    from cmkd.errors import CmkdError
    from cmkd.losses import LOSSES, DistillationTerm
    from cmkd.losses.base import register as register_loss
    from cmkd.methods.classifier import ClassifierModule as ClassifierTask
    from cmkd.methods.distill import DistillModule as DistillTask
    from cmkd.models.adapter import AdaptedNetwork, adapt_network
    from cmkd.models.backbones import available_backbones, create_network
    from cmkd.models.outputs import ModelOutput
    from cmkd.pairing import (
        MATCHERS,
        PAIRINGS,
        Pairing,
        PairList,
        register_matcher,
        register_pairing,
    )
    from cmkd.served import standardized_once
    from cmkd.training import use_fast_paths
