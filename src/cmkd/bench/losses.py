"""`cmkd bench losses`: every loss config of the zoo against no KD on the EuroSAT twins."""

from __future__ import annotations

from pathlib import Path

import yaml

from cmkd.config import DistillConfig, TermConfig
from cmkd.errors import CmkdError


def loss_grid(
    configs: list[str] | None = None,
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 50,
    backbone: str = "small_cnn",
    output_dir: str = "runs/bench/losses",
) -> None:
    """Every distillation config against the no-KD student on the EuroSAT paired twins, with
    the same teacher, split, backbone and budget per seed (see cmkd.comparison).

    Args:
        configs: Distill YAML files (default: configs/eurosat_paired/losses/*.yaml); only their
            `distill` section (terms, ce_weight) is used, so every method gets the same budget.
        seeds: One split and one teacher per seed.
        epochs: Epochs of every training.
        backbone: Teacher and students.
        output_dir: Where the runs and results.md go.
    """
    from cmkd.comparison import compare_students

    paths = [Path(c) for c in configs] if configs else sorted(LOSS_CONFIGS.glob("*.yaml"))
    methods = {p.stem: distill_section(p) for p in paths}
    compare_students(methods, seeds, epochs, output_dir, backbone=backbone)


LOSS_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "eurosat_paired" / "losses"


def distill_section(path: Path) -> DistillConfig:
    """The `distill` section of a config file (terms and CE weight; the teacher is per seed)."""
    if not path.is_file():
        raise CmkdError(f"config {path} does not exist")
    section = (yaml.safe_load(path.read_text()) or {}).get("distill")
    if not section:
        raise CmkdError(f"config {path} has no distill section")
    try:
        terms = [TermConfig(**t) for t in section.get("terms", [])]
    except TypeError as err:
        raise CmkdError(f"config {path}: bad distill term ({err})") from None
    return DistillConfig(ce_weight=section.get("ce_weight", 0.5), terms=terms)
