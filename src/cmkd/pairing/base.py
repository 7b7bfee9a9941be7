"""Who teaches whom: the pairing contract and the two open registries behind it.

A **pairing strategy** maps each student training row to a teacher training row, per epoch
(`teacher_rows`), and saves and restores whatever it learns during training through
`state_dict` / `load_state_dict` (a DynM table travels in the checkpoint this way). Strategies
are registered by name (`@register_pairing`) and chosen in YAML with `distill.pairing.strategy`.

An **offline matcher** writes a pair list before distillation (`cmkd match --method NAME`):
SemBridge's SSM, matching in the teacher's embedding space, class-random. Matchers are
registered by name (`@register_matcher`) the same way.

A new strategy or matcher is one file with one decorated class or function; importing it
registers it (built-ins are imported by `cmkd.pairing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cmkd.errors import CmkdError

if TYPE_CHECKING:
    from cmkd.pairing.pairs import PairList


class Pairing:
    """Maps student training rows to teacher training rows.

    Strategies must be pure functions of their inputs, a seed and the epoch (every DDP rank
    then computes the same pairs without talking), or keep what they learn in `state_dict`.
    """

    def teacher_rows(self, student_rows: torch.Tensor, epoch: int) -> torch.Tensor:
        """Teacher training rows for these student training rows, on the same device."""
        raise NotImplementedError

    def table_for(self, epoch: int) -> np.ndarray:
        """The whole student-row -> teacher-row table used at `epoch` (int64)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Training state a resumed run must continue from (tensors only: checkpoints load
        with weights_only). Default: none, the strategy is a pure function of seed and epoch."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()`'s output."""


@dataclass(frozen=True)
class RegisteredPairing:
    build: Callable[..., Pairing]
    description: str


@dataclass(frozen=True)
class RegisteredMatcher:
    match: Callable[..., PairList]
    description: str
    needs_pseudo_view: bool


PAIRINGS: dict[str, RegisteredPairing] = {}
MATCHERS: dict[str, RegisteredMatcher] = {}


def register_pairing(name: str, description: str) -> Callable:
    """Decorator for a strategy: a `Pairing` subclass with a classmethod
    `build(cfg: PairingConfig, student: Samples, teacher: Samples, seed: int) -> Pairing`,
    or a function with that signature. `cfg.options` carries its own settings."""

    def wrap(obj: Any) -> Any:
        build = obj.build if isinstance(obj, type) else obj
        PAIRINGS[name] = RegisteredPairing(build, description)
        return obj

    return wrap


def register_matcher(name: str, description: str, needs_pseudo_view: bool = False) -> Callable:
    """Decorator for a matcher function
    `match(teacher_model, teacher: Samples, student: Samples, cfg: MatchConfig, seed: int,
    run: RunConfig) -> PairList` pairing every student row with a same-class teacher row."""

    def wrap(fn: Callable[..., PairList]) -> Callable[..., PairList]:
        MATCHERS[name] = RegisteredMatcher(fn, description, needs_pseudo_view)
        return fn

    return wrap


def _unknown(kind: str, name: str, known: dict) -> CmkdError:
    return CmkdError(f"unknown {kind} '{name}'; registered: {', '.join(sorted(known))}")


def check_strategy(name: str) -> None:
    """A CmkdError naming the registered strategies if `name` is not one."""
    if name not in PAIRINGS:
        raise _unknown("pairing strategy", name, PAIRINGS)


def check_matcher(name: str) -> RegisteredMatcher:
    if name not in MATCHERS:
        raise _unknown("matching method", name, MATCHERS)
    return MATCHERS[name]
