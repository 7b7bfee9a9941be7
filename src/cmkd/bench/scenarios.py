"""Who teaches whom on which data in the benchmarks, and the rows every benchmark table shares
(teacher, no-KD student, controls, oracle, SemBridge plugged into a method): their labels and
how the oracle and SemBridge rows are built from a method."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cmkd.config import DataConfig, DistillConfig, PairingConfig, TermConfig
from cmkd.errors import CmkdError

TEACHER, NO_KD = "teacher", "student, no KD"
CONTROL_TF, CONTROL_CM = "control: teacher-free", "control: class-mean"
ORACLE = "oracle: true twins"
PAIRS = "pairs"
"""The method name of a pair-list cell in a grid's store (no training, no table row)."""
SEMBRIDGE = " + SemBridge"
"""Suffix of a method's row with SemBridge plugged in."""


@dataclass(frozen=True)
class Scenario:
    """Who teaches whom, on which data; `match` says how `cmkd match` pairs them."""

    title: str
    teacher_data: DataConfig
    teacher_modality: str
    student_data: DataConfig
    student_modality: str
    match_method: str = "class_random"
    pseudo_view: str | None = None
    oracle_data: DataConfig | None = None
    """The student's own samples in the teacher's modality, where such twins exist: the bank
    of an oracle row that pairs every student sample with its true twin."""
    class_map: dict[str, str | None] | None = None
    """Teacher class -> student class where the two label sets differ (`distill.class_map`;
    a grid sets it from `class_maps`): every distillation and matching of the scenario runs
    over the covered classes."""


_RGB_UNPAIRED = DataConfig(
    source="eurosat_rgb", options={"subset": "unpaired", "per_class_limit": 300}, batch_size=64
)
_DIGITS = {"train_per_class": 20, "batch_size": 64}
# UC Merced at EuroSAT's 64 x 64 (the student's pairing and pseudo-views need that size): each
# image resized at decode time with antialiasing (cmkd.data.sources.ucmerced).
_UCMERCED = DataConfig(source="ucmerced", options={"size": 64}, batch_size=64)
_FSDD = DataConfig(source="fsdd", split="official", val_fraction=0.1, test_fraction=0.1)
SCENARIOS = {
    "eurosat_paired": Scenario(
        "EuroSAT paired MS -> RGB (369 twins)",
        DataConfig(source="eurosat_paired", batch_size=32),
        "ms",
        DataConfig(source="eurosat_paired", batch_size=32),
        "rgb",
    ),
    "eurosat_ms_to_rgb": Scenario(
        "EuroSAT asymmetric MS teacher (369 patches) -> RGB student (3,000 unpaired patches)",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        _RGB_UNPAIRED,
        "rgb",
        match_method="ssm",
        pseudo_view="eurosat_ms_to_rgb",
    ),
    "eurosat_rgb_to_ms": Scenario(
        "EuroSAT asymmetric RGB teacher (3,000 unpaired patches) -> MS student (369 patches)",
        _RGB_UNPAIRED,
        "rgb",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        match_method="teacher_embedding",
        pseudo_view="eurosat_ms_to_rgb",
        oracle_data=DataConfig(source="eurosat_paired", batch_size=32),
    ),
    "eurosat_rgb_full_to_ms": Scenario(
        "EuroSAT asymmetric, strong teacher: RGB teacher on all 26,631 patches without an MS "
        "twin -> MS student (221 training patches)",
        DataConfig(
            source="eurosat_rgb",
            options={"subset": "unpaired"},
            val_fraction=0.05,
            test_fraction=0.05,
            batch_size=128,
        ),
        "rgb",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        match_method="teacher_embedding",
        pseudo_view="eurosat_ms_to_rgb",
        oracle_data=DataConfig(source="eurosat_paired", batch_size=32),
    ),
    "ucmerced_to_eurosat_ms": Scenario(
        "UC Merced RGB teacher (21 aerial classes, 0.3 m, resized 256 -> 64 px with "
        "antialiasing) -> EuroSAT MS student (10 classes, 221 training patches), partial "
        "label overlap through a class map",
        _UCMERCED,
        "rgb",
        DataConfig(source="eurosat_ms", batch_size=32),
        "ms",
        match_method="teacher_embedding",
        pseudo_view="eurosat_ms_to_rgb",
    ),
    "ucmerced_to_eurosat_rgb": Scenario(
        "UC Merced RGB teacher (21 aerial classes, 0.3 m, resized 256 -> 64 px with "
        "antialiasing) -> EuroSAT RGB student with 20 labels per class, partial label overlap "
        "through a class map",
        _UCMERCED,
        "rgb",
        replace(_RGB_UNPAIRED, train_per_class=20, batch_size=32),
        "rgb",
        match_method="teacher_embedding",
        pseudo_view="rgb_to_rgb",
    ),
    "fsdd_to_mnist": Scenario(
        "Spoken digits teacher -> MNIST student with 20 labels per class",
        replace(_FSDD, batch_size=64),
        "audio",
        DataConfig(source="mnist", **_DIGITS),
        "image",
    ),
    "mnist_to_fsdd": Scenario(
        "MNIST teacher -> spoken digits student with 20 labels per class",
        DataConfig(source="mnist", batch_size=128),
        "image",
        replace(_FSDD, **_DIGITS),
        "audio",
    ),
}


def oracle(distill: DistillConfig, sc: Scenario) -> DistillConfig:
    """The same loss with every student sample paired with its true twin in the teacher's
    modality: what a perfect matcher could reach."""
    if sc.oracle_data is None:
        raise CmkdError(f"scenario '{sc.title}' has no twins for an oracle row")
    return replace(distill, pairing=PairingConfig("paired"), teacher_data=sc.oracle_data)


def sembridge_plugin(distill: DistillConfig, epochs: int) -> DistillConfig:
    """SemBridge over a paired KD loss: SSM-matched pairs re-matched by DynM on the authors'
    curriculum (30, 60, 95, 135 of 200 epochs) scaled to `epochs`, plus SKA at the paper's
    weight (0.3 x 0.01)."""
    e0, emu = max(1, round(0.15 * epochs)), max(1, round(0.025 * epochs))
    ska = TermConfig("ska", 0.3 * 0.01, {"dim": 256})
    pairing = PairingConfig("matched", dynamic=True, e0=e0, de=e0, emu=emu)
    return replace(distill, terms=[*distill.terms, ska], pairing=pairing)
