"""Building the configured strategy and running a registered matcher; importing this module
registers the built-ins (`strategies`, `matchers`), so these always find them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cmkd.errors import CmkdError
from cmkd.pairing import matchers  # noqa: F401  (registers the built-in matchers)
from cmkd.pairing.base import PAIRINGS, check_matcher, check_strategy
from cmkd.pairing.strategies import DynamicPairing

if TYPE_CHECKING:
    from cmkd.config import MatchConfig, PairingConfig, RunConfig
    from cmkd.data.samples import Samples
    from cmkd.pairing.base import Pairing
    from cmkd.pairing.pairs import PairList


def build_pairing(cfg: PairingConfig, student: Samples, teacher: Samples, seed: int) -> Pairing:
    """The configured strategy between the student's and the teacher's training rows; with
    `cfg.dynamic`, DynM re-matching starts from its epoch-0 table."""
    check_strategy(cfg.strategy)
    pairing = PAIRINGS[cfg.strategy].build(cfg, student, teacher, seed)
    return DynamicPairing(pairing.table_for(0)) if cfg.dynamic else pairing


def match(
    name: str,
    teacher_model: torch.nn.Module,
    teacher: Samples,
    student: Samples,
    cfg: MatchConfig,
    seed: int,
    run: RunConfig,
) -> PairList:
    """Run the registered matcher `name`."""
    found = check_matcher(name)
    if found.needs_pseudo_view and not cfg.pseudo_view:
        raise CmkdError(f"matching method '{name}' needs a pseudo_view (--pseudo_view NAME)")
    return found.match(teacher_model, teacher, student, cfg, seed, run)
