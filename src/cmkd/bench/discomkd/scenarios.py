"""What `cmkd bench discomkd` compares: the scenarios (modalities, data, encoders) and the
logit KD baselines.

Per scenario and seed, with one split by sample for modalities of one source and the same
optimiser, epochs and batch size for every model:
- single-modality training of each modality (`train_classifier`);
- DisCoM-KD: one joint training, every modality's student selected on its own validation split;
- KD, DKD, MLKD, CTKD, each without and with LSKD (`standardize: true`), into each modality's
  student from (a) a single-modality teacher of another modality, the one with the best
  validation accuracy (non-overlapping: only labels shared, class-random pairs) and (b) where
  the modalities are views of the same samples, an early-fusion multi-modal teacher (one
  network on the concatenated views; overlapping: the student's own sample, paired).
Every row is scored on each modality's test split (accuracy and weighted F1) for the
best-on-validation and the last-epoch weights; Δ is the per-seed paired difference to
single-modality training with its 95 % t interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cmkd.bench.losses import LOSS_CONFIGS, loss_configs
from cmkd.config import DataConfig, DistillConfig, ModelConfig
from cmkd.config_files import load_distill_section
from cmkd.data.multimodal import ModalitySpec
from cmkd.errors import CmkdError

SINGLE, DCK, FUSED = "single-modality", "DisCoM-KD", "fused"
LOGIT_METHODS = ("kd", "dkd", "mlkd", "ctkd")
TEACHERS = ("other", "fused")


@dataclass(frozen=True)
class DckScenario:
    title: str
    specs: tuple[ModalitySpec, ...]
    batch_size: int
    fusable: bool
    """The modalities are views of the same samples (one paired source): an early-fusion
    teacher exists."""
    note: str = ""


def _scenarios() -> dict[str, DckScenario]:
    mlp = ModelConfig(backbone="mlp", options={"hidden": [256, 128]})
    cnn = ModelConfig(backbone="small_cnn")
    mfeat = DataConfig(source="mfeat", val_fraction=0.1, test_fraction=0.2, batch_size=128)
    eurosat = DataConfig(
        source="eurosat_paired", val_fraction=0.1, test_fraction=0.2, batch_size=32, augment=True
    )
    fsdd = DataConfig(
        source="fsdd",
        split="official",
        val_fraction=0.1,
        test_fraction=0.1,
        train_per_class=50,
        batch_size=64,
    )
    mnist = DataConfig(
        source="mnist", val_fraction=0.1, test_fraction=0.2, train_per_class=50, batch_size=64
    )
    views = ("fou", "fac", "kar", "pix", "zer", "mor")
    return {
        "mfeat2": DckScenario(
            "UCI Multiple Features, M = 2 (Fourier 76-d, Zernike 47-d), 2,000 digits 70/10/20",
            (ModalitySpec("fou", mfeat, mlp), ModalitySpec("zer", mfeat, mlp)),
            128,
            True,
            "MLP encoders [256, 128]; latent 64.",
        ),
        "mfeat6": DckScenario(
            "UCI Multiple Features, M = 6 (all views), 2,000 digits 70/10/20",
            tuple(ModalitySpec(v, mfeat, mlp) for v in views),
            128,
            True,
            "MLP encoders [256, 128]; latent 64.",
        ),
        "eurosat": DckScenario(
            "EuroSAT MS (13 bands) + RGB, the 369 twins used unpaired, 70/10/20",
            (ModalitySpec("ms", eurosat, cnn), ModalitySpec("rgb", eurosat, cnn)),
            32,
            True,
            "small_cnn encoders (128-d, latent 64); flips + 90-degree rotations for every model.",
        ),
        "digits": DckScenario(
            "Spoken digits (FSDD log-mel) + written digits (MNIST), 50 training samples per "
            "class each",
            (ModalitySpec("audio", fsdd, cnn), ModalitySpec("image", mnist, cnn)),
            64,
            False,
            "small_cnn encoders; FSDD official test split (takes 0-4), MNIST 70/10/20 of the "
            "10,000 test-set images; no sample-level pairs, so no multi-modal teacher.",
        ),
    }


def _logit_methods(
    names: list[str], configs: str | Path = LOSS_CONFIGS
) -> dict[str, DistillConfig]:
    """KD, DKD, MLKD, CTKD with the loss zoo's settings (the configs of that name in
    `configs`), each also with LSKD's z-score (`standardize: true`)."""
    unknown = [name for name in names if name not in LOGIT_METHODS]
    if unknown:
        raise CmkdError(f"unknown baseline {unknown[0]!r}; choose from {LOGIT_METHODS}")
    found = loss_configs(configs)
    out = {}
    for name in names:
        if name not in found:
            raise CmkdError(f"no {name}.yaml among the loss configs in {configs}")
        base = load_distill_section(found[name])
        out[name.upper()] = base
        lskd = [replace(t, params={**t.params, "standardize": True}) for t in base.terms]
        out[f"{name.upper()} + LSKD"] = replace(base, terms=lskd)
    return out
