"""Building the configured strategy and running a registered matcher; importing this module
registers the built-ins (`strategies`, `matchers`), so these always find them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cmkd.errors import CmkdError
from cmkd.pairing import matchers  # noqa: F401  (registers the built-in matchers)
from cmkd.pairing.base import PAIRINGS, check_matcher, check_strategy
from cmkd.pairing.covered import NO_TEACHER, CoveredPairing
from cmkd.pairing.pairs import PairList
from cmkd.pairing.strategies import DynamicPairing

if TYPE_CHECKING:
    from cmkd.classmap import ClassMap
    from cmkd.config import MatchConfig, PairingConfig, RunConfig
    from cmkd.data.samples import Samples
    from cmkd.pairing.base import Pairing


def build_pairing(
    cfg: PairingConfig,
    student: Samples,
    teacher: Samples,
    seed: int,
    covered: np.ndarray | None = None,
) -> Pairing:
    """The configured strategy between the student's and the teacher's training rows; with
    `cfg.dynamic`, DynM re-matching starts from its epoch-0 table.

    `covered`: under a class map, the student labels some teacher class reaches (the teacher
    rows relabelled into the student's classes): only their rows are paired, the others get no
    teacher (`cmkd.pairing.covered`)."""
    check_strategy(cfg.strategy)
    if covered is None:
        pairing = PAIRINGS[cfg.strategy].build(cfg, student, teacher, seed)
    else:
        rows = np.flatnonzero(np.isin(student.y, covered))
        inner = PAIRINGS[cfg.strategy].build(cfg, student.subset(rows), teacher, seed)
        pairing = CoveredPairing(inner, rows, len(student))
    return DynamicPairing(pairing.table_for(0)) if cfg.dynamic else pairing


def match(
    name: str,
    teacher_model: torch.nn.Module,
    teacher: Samples,
    student: Samples,
    cfg: MatchConfig,
    seed: int,
    run: RunConfig,
    class_map: ClassMap | None = None,
) -> PairList:
    """Run the registered matcher `name`. Under a `class_map` the teacher samples are already
    relabelled into the student's classes (`ClassMap.teacher_samples`); students of uncovered
    classes get no teacher."""
    found = check_matcher(name)
    if found.needs_pseudo_view and not cfg.pseudo_view:
        raise CmkdError(f"matching method '{name}' needs a pseudo_view (--pseudo_view NAME)")
    if class_map is None:
        return found.match(teacher_model, teacher, student, cfg, seed, run)
    # Under a class map the matcher sees the covered students only; the uncovered ones join
    # the list without a teacher.
    rows = np.flatnonzero(np.isin(student.y, class_map.covered_labels))
    pairs = found.match(teacher_model, teacher, student.subset(rows), cfg, seed, run)
    table = np.full(len(student), NO_TEACHER, dtype=np.int64)
    table[rows] = pairs.to_table(student.ids[rows], teacher.ids)
    scores = None
    if pairs.scores is not None:
        scores = np.full(len(student), np.nan)
        order = {sid: k for k, sid in enumerate(pairs.student_ids)}
        scores[rows] = pairs.scores[[order[sid] for sid in student.ids[rows]]]
    return PairList.from_table(table, student, teacher, pairs.method, scores, class_map)
