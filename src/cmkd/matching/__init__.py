"""Matching student samples to teacher samples for asymmetric distillation (no shared samples):
pair lists on disk and SemBridge's dynamic min-KL re-matching."""

from cmkd.matching.dynamic import (
    AUTHORS_SCHEDULES,
    curriculum_epochs,
    min_kl_match,
    schedule_from,
)
from cmkd.matching.pairs import PairList

__all__ = [
    "AUTHORS_SCHEDULES",
    "PairList",
    "curriculum_epochs",
    "min_kl_match",
    "schedule_from",
]
