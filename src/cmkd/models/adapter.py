"""A user's own `nn.Module` as a cmkd network: the adapter to the output record.

Every cmkd method reads one record from a network, `ModelOutput(logits, embedding,
feature_map)`, and sizes its adapters from the network's `embedding_dim`, `feature_channels`
and `num_classes`. `adapt_network` gives any module that record without changing it, in one of
two ways:

- by naming its parts: `classifier` is the submodule that maps the embedding to the logits (its
  input is the embedding, its output the logits) and `features` the submodule whose output is
  the last-stage feature map (B x C x H x W; leave it out for vector models). The parts are read
  with forward hooks during the module's own forward pass, so its code stays as it is;
- by a function `outputs(module, x)` returning (logits, embedding, feature_map) or a
  `ModelOutput`, for modules whose parts are not single submodules.

Widths the module does not state (a non-Linear classifier, the feature-map channels) are taken
from one forward pass (`probe`), which the task constructors run on two training samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cmkd.errors import CmkdError
from cmkd.models.outputs import ModelOutput

Outputs = Callable[[nn.Module, torch.Tensor], "ModelOutput | tuple[Any, ...]"]


class AdaptedNetwork(nn.Module):
    """`module` seen as a cmkd network (see the module docstring); its weights are the wrapped
    module's, under the prefix `module.`."""

    def __init__(
        self,
        module: nn.Module,
        *,
        classifier: str | None = None,
        features: str | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise CmkdError(f"adapt_network takes a torch nn.Module, got {type(module).__name__}")
        if outputs is None and classifier is None:
            raise CmkdError(
                "adapt_network needs classifier='name of the submodule that gives the logits' "
                "(and features='name of the one that gives the feature map'), or outputs=fn"
            )
        if outputs is not None and features is not None:
            raise CmkdError(
                "adapt_network: outputs=fn returns the feature map itself; drop features"
            )
        self.module = module
        self.name = type(module).__name__
        self.classifier_name, self.features_name, self.outputs = classifier, features, outputs
        for part in (classifier, features):
            if part is not None:
                self._part(part)  # a wrong name fails here, not in the first training step
        head = self._part(classifier) if classifier is not None else None
        linear = isinstance(head, nn.Linear)
        self.embedding_dim: int | None = head.in_features if linear else None
        self.num_classes: int | None = head.out_features if linear else None
        self.feature_channels: int | None = None
        self.probed = False

    def _part(self, name: str) -> nn.Module:
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in self.module.named_children()]
            raise CmkdError(
                f"{self.name} has no submodule {name!r}; its submodules are {names} "
                "(nested ones as 'block.0.conv')"
            ) from None

    @property
    def classifier(self) -> nn.Module | None:
        """The classifier submodule (terms such as soft_classifier use the teacher's)."""
        return self._part(self.classifier_name) if self.classifier_name is not None else None

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.outputs is not None:
            return _as_record(self.outputs(self.module, x), self.name)
        seen: dict[str, torch.Tensor] = {}

        def take_embedding(_module: nn.Module, args: tuple) -> None:
            seen["embedding"] = args[0]

        def take(key: str) -> Callable:
            def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
                seen[key] = out

            return hook

        head = self._part(self.classifier_name)
        handles = [
            head.register_forward_pre_hook(take_embedding),
            head.register_forward_hook(take("logits")),
        ]
        if self.features_name is not None:
            handles.append(self._part(self.features_name).register_forward_hook(take("map")))
        try:
            self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        if "logits" not in seen:
            raise CmkdError(f"{self.name}'s forward never called {self.classifier_name!r}")
        return ModelOutput(seen["logits"], seen["embedding"].flatten(1), seen.get("map"))

    @torch.no_grad()
    def probe(self, x: torch.Tensor) -> ModelOutput:
        """One forward pass in eval mode (no BatchNorm statistics moved): checks the record's
        shapes and records the widths the module does not state."""
        was = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was)
        if out.logits.ndim != 2 or out.embedding is None or out.embedding.ndim != 2:
            raise CmkdError(
                f"{self.name} must give B x K logits and a B x D embedding, got logits "
                f"{tuple(out.logits.shape)} and embedding "
                f"{None if out.embedding is None else tuple(out.embedding.shape)}"
            )
        if out.feature_map is not None and out.feature_map.ndim != 4:
            raise CmkdError(
                f"{self.name}'s feature map must be B x C x H x W, got "
                f"{tuple(out.feature_map.shape)}; name a convolutional stage as features"
            )
        self.num_classes = int(out.logits.shape[1])
        self.embedding_dim = int(out.embedding.shape[1])
        self.feature_channels = None if out.feature_map is None else int(out.feature_map.shape[1])
        self.probed = True
        return out

    def extra_repr(self) -> str:
        parts = f"classifier={self.classifier_name!r}, features={self.features_name!r}"
        return parts if self.outputs is None else f"outputs={self.outputs!r}"


def _as_record(out: Any, name: str) -> ModelOutput:
    if isinstance(out, ModelOutput):
        return out
    if isinstance(out, tuple | list) and len(out) in (2, 3):
        return ModelOutput(*out)
    raise CmkdError(
        f"the outputs function of {name} must return (logits, embedding, feature_map or None) "
        f"or a ModelOutput, got {type(out).__name__}"
    )


def adapt_network(
    module: nn.Module,
    *,
    classifier: str | None = None,
    features: str | None = None,
    outputs: Outputs | None = None,
) -> AdaptedNetwork:
    """Your `module` as a cmkd network returning `ModelOutput(logits, embedding, feature_map)`.

    Args:
        module: Any torch module mapping a batch of inputs to class scores.
        classifier: Name of the submodule giving the logits (e.g. "fc", "head.linear"); its
            input is the embedding.
        features: Name of the submodule giving the last-stage feature map (B x C x H x W), for
            terms that read feature maps (fitnet, at, ska); None for vector models.
        outputs: Instead of names, `outputs(module, x)` returning (logits, embedding,
            feature_map or None) or a ModelOutput.
    """
    return AdaptedNetwork(module, classifier=classifier, features=features, outputs=outputs)


def as_network(module: nn.Module, example: torch.Tensor, num_classes: int) -> nn.Module:
    """`module` ready to be a task's network for `num_classes` classes: an `AdaptedNetwork`
    probed on `example` (inputs as the task feeds them), or a module that already returns a
    `ModelOutput` and states its widths (a cmkd `Network`). Anything else is a CmkdError."""
    if isinstance(module, AdaptedNetwork):
        if not module.probed:
            module.probe(example)
        return _check_classes(module, num_classes)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(example)
    finally:
        module.train(was)
    if not isinstance(out, ModelOutput):
        raise CmkdError(
            f"{type(module).__name__} returns {type(out).__name__}, not a cmkd ModelOutput: wrap "
            "it with cmkd.adapt_network(module, classifier=..., features=...)"
        )
    missing = [a for a in ("embedding_dim", "feature_channels") if not hasattr(module, a)]
    if missing:
        raise CmkdError(
            f"{type(module).__name__} returns a ModelOutput but has no {missing[0]}: wrap it "
            "with cmkd.adapt_network(module, outputs=lambda m, x: m(x)) to have it measured"
        )
    return _check_classes(module, num_classes, int(out.logits.shape[1]))


def _check_classes(module: nn.Module, num_classes: int, given: int | None = None) -> nn.Module:
    given = given if given is not None else module.num_classes
    if given != num_classes:
        name = getattr(module, "name", type(module).__name__)
        raise CmkdError(
            f"{name} gives {given} class scores, but the data has {num_classes} classes"
        )
    return module
