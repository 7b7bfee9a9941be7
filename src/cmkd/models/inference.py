"""Batched inference without gradients: the one loop every offline pass goes through (the
teacher cache, DynM's logit galleries, quality scores, matching, evaluation, reports)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from cmkd.models.outputs import ModelOutput

FIELDS = ("logits", "embedding", "feature_map")


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch as a tensor: uint8 and float32 arrays are kept as they are (standardisation
    happens inside the network), anything else becomes float32."""
    if torch.is_tensor(x):
        return x
    if x.dtype not in (np.uint8, np.float32):
        x = x.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], Any],
    x: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Iterable[tuple[slice, Any]]:
    """Yields (rows, fn(batch)) over `x` in chunks of `batch_size`, each chunk moved to
    `device` (default: where fn's parameters live, else the CPU). Converting chunk by chunk
    keeps the memory of a large uint8 set small."""
    if device is None:
        params = getattr(fn, "parameters", None)
        first = next(params(), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        yield rows, fn(as_tensor(x[rows]).to(device, non_blocking=True))


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], ModelOutput],
    x: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    fields: Iterable[str] = FIELDS,
    to_cpu: bool = True,
) -> ModelOutput:
    """A model's outputs over every row of `x`, concatenated; outputs not in `fields` (or
    that the model does not give) are None. The model is used as it is: put it in eval mode
    first where that matters."""
    keep = set(fields)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in FIELDS}
    for _, out in batched(model, x, batch_size, device):
        for name in FIELDS:
            value = getattr(out, name)
            if name in keep and value is not None:
                parts[name].append(value.cpu() if to_cpu else value)
    cat = {name: torch.cat(v) if v else None for name, v in parts.items()}
    if cat["logits"] is None:
        cat["logits"] = torch.zeros(0, 0)
    return ModelOutput(cat["logits"], cat["embedding"], cat["feature_map"])
