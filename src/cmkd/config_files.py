"""Reading parts of config files: a section of a YAML run config as the typed config it holds,
for code that builds runs itself (grids, comparisons) rather than through the CLI parser."""

from __future__ import annotations

from pathlib import Path

import yaml

from cmkd.config import DistillConfig, TermConfig
from cmkd.errors import CmkdError


def load_distill_section(path: str | Path) -> DistillConfig:
    """The `distill` section of a config file: its terms and CE weight (the teacher, pairing
    and the rest are left at their defaults: the caller sets them per run)."""
    path = Path(path)
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
