"""`cmkd bench losses`: every loss config of the zoo against no KD on the EuroSAT twins."""

from __future__ import annotations

from pathlib import Path

from cmkd.bench.compare import compare_students
from cmkd.config_files import load_distill_section
from cmkd.errors import CmkdError

LOSS_CONFIGS = "configs/eurosat_paired/losses"
"""The loss zoo's configs, relative to the folder the command runs in (a checkout)."""


def loss_configs(folder: str | Path = LOSS_CONFIGS) -> dict[str, Path]:
    """The distill configs (*.yaml) of a folder by name."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not paths:
        raise CmkdError(
            f"no loss configs (*.yaml) in {folder}: run from a checkout or pass --configs DIR"
        )
    return {p.stem: p for p in paths}


def loss_grid(
    configs: str | Path = LOSS_CONFIGS,
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 50,
    backbone: str = "small_cnn",
    output_dir: str = "runs/bench/losses",
    page: str | None = None,
    command: str = "",
) -> str:
    """Every distill config of `configs` (only its `distill` section: terms and CE weight, so
    every method gets the same budget) against the no-KD student on the EuroSAT paired twins,
    with the same teacher, split, backbone and budget per seed (see cmkd.bench.compare)."""
    methods = {name: load_distill_section(p) for name, p in loss_configs(configs).items()}
    return compare_students(
        methods,
        seeds,
        epochs,
        output_dir,
        backbone=backbone,
        page=page,
        heading="Every loss of the zoo against no KD",
        command=command,
    )
