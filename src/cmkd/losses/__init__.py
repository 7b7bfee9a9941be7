"""Distillation terms behind one interface; see `base.DistillationTerm`.

Importing a family module registers its terms in `LOSSES`.
"""

from cmkd.losses import (  # noqa: F401
    contrastive,
    distilvpr,
    feature,
    logits,
    relation,
    selection,
    ska,
    soft,
)
from cmkd.losses.base import LOSSES, DistillationTerm, TermContext, build_term

__all__ = ["LOSSES", "DistillationTerm", "TermContext", "build_term"]
