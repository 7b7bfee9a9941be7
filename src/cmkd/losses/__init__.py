"""Distillation terms behind one interface; see `base.DistillationTerm`."""

from cmkd.losses import logits  # noqa: F401  (registers its terms)
from cmkd.losses.base import LOSSES, DistillationTerm, TermContext, build_term

__all__ = ["LOSSES", "DistillationTerm", "TermContext", "build_term"]
