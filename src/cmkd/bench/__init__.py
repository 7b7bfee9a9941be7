"""Benchmarks run from the CLI (`cmkd bench ...`), one module per benchmark. Each compares
against a baseline measured in the same process and reports the ratio, never an absolute time
alone."""

from cmkd.bench.losses import LOSS_CONFIGS, distill_section, loss_grid
from cmkd.bench.sembridge import sembridge_grid
from cmkd.bench.teacher_cache import teacher_cache

__all__ = ["LOSS_CONFIGS", "distill_section", "loss_grid", "sembridge_grid", "teacher_cache"]
