"""The distillation-term contract and its registry.

A term maps (student output, teacher output, batch) to a scalar or a dict of named scalars.
It declares which teacher outputs it reads (`needs`), so the teacher cache stores only those,
and owns any extra trainable parts (adapters, learnable temperatures) as submodules, so the
optimiser picks them up with the student. The trainer never changes for a new term.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cmkd.errors import CmkdError
from cmkd.models.outputs import ModelOutput


@dataclass(frozen=True)
class TermContext:
    """What a term may need to size itself, beyond the two networks."""

    num_train: int = 0
    """Student training samples (batch["index"] runs over range(num_train)), e.g. for a bank."""
    max_epochs: int = 1


class DistillationTerm(nn.Module):
    """Base class. Subclasses set `needs` and implement `forward`."""

    needs: frozenset[str] = frozenset({"logits"})

    @classmethod
    def from_networks(
        cls, student: nn.Module, teacher: nn.Module, context: TermContext, **params
    ) -> DistillationTerm:
        """Build the term; terms whose adapters depend on widths read them from the networks
        (`embedding_dim`, `feature_channels`, `num_classes`), sizes from `context`."""
        return cls(**params)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Hook for schedules (warm-up, ramps); default: none."""

    def diagnostics(self) -> dict[str, torch.Tensor | float]:
        """Values worth logging that are not part of the loss (a learnt temperature, the
        fraction of samples kept); default: none."""
        return {}

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def per_sample(self, student: ModelOutput, teacher: ModelOutput, batch: dict) -> torch.Tensor:
        """The term's value for each sample, shape [B], whose mean is `forward`'s value.

        Per-sample weighting (quality weights, `cmkd.methods.quality`) multiplies these values
        by a weight per sample before averaging; a term whose loss is not a mean over samples
        (relations between samples, a contrastive bank) has no such form and keeps this
        default, which refuses.
        """
        raise CmkdError(f"distillation term {type(self).__name__} has no per-sample form")

    @property
    def has_per_sample(self) -> bool:
        """Whether this term has a per-sample form that matches its `forward`: `per_sample` is
        overridden, and not by a base class of the one defining `forward` (a subclass that
        changes `forward` but inherits `per_sample` would be weighted with the wrong loss)."""

        def owner(name: str) -> type:
            return next(c for c in type(self).__mro__ if name in c.__dict__)

        defines = owner("per_sample")
        return defines is not DistillationTerm and issubclass(defines, owner("forward"))


@dataclass(frozen=True)
class RegisteredLoss:
    cls: type[DistillationTerm]
    description: str


LOSSES: dict[str, RegisteredLoss] = {}


def register(name: str, description: str) -> Callable[[type[DistillationTerm]], type]:
    """Class decorator: `@register("kd", "Hinton et al. 2015 ...")`."""

    def wrap(cls: type[DistillationTerm]) -> type[DistillationTerm]:
        LOSSES[name] = RegisteredLoss(cls, description)
        return cls

    return wrap


def build_term(
    name: str,
    student: nn.Module,
    teacher: nn.Module,
    context: TermContext | None = None,
    **params,
) -> DistillationTerm:
    if name not in LOSSES:
        raise CmkdError(
            f"unknown distillation term '{name}'; registered: {', '.join(sorted(LOSSES))}"
        )
    try:
        return LOSSES[name].cls.from_networks(student, teacher, context or TermContext(), **params)
    except TypeError as err:
        raise CmkdError(f"bad parameters for distillation term '{name}': {err}") from None


def term_spec(term: str | Any) -> dict[str, Any]:
    """A term as the task modules take it, {name, weight, params}, from a registered name, a
    `cmkd.TermConfig` or such a dict (weight 1 and no params unless given)."""
    from dataclasses import asdict, is_dataclass

    if isinstance(term, str):
        return {"name": term, "weight": 1.0, "params": {}}
    if is_dataclass(term) and not isinstance(term, type):
        return asdict(term)
    if isinstance(term, Mapping) and "name" in term:
        unknown = set(term) - {"name", "weight", "params"}
        if unknown:
            raise CmkdError(f"term {term['name']!r}: unknown keys {sorted(unknown)}")
        return {"weight": 1.0, "params": {}, **term}
    raise CmkdError(f"a term is a name, a TermConfig or a dict with a 'name', got {term!r}")
