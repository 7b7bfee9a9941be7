"""The two controls that tell cross-modal knowledge from mere regularisation (a grid's
`control: ...` rows, `distill.teacher_target`), as targets indexed by the *student's* labels,
so they carry nothing about the paired teacher sample:

- class_mean: the teacher's outputs averaged over its training samples of each class
  (class-level knowledge only);
- teacher_free: logits log p with p = a on the true class and (1 - a) / (K - 1) elsewhere
  (teacher-free KD, Yuan et al. 2020): no teacher information at all.
"""

from __future__ import annotations

import torch

from cmkd.models.outputs import ModelOutput


def class_means(outputs: ModelOutput, labels: torch.Tensor, k: int) -> ModelOutput:
    """Per class 0..k-1, the mean of every output over the rows of that class (a class with no
    row gets zeros)."""
    labels = labels.to(outputs.logits.device).long()

    def mean(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        flat = t.reshape(len(t), -1)
        sums = torch.zeros(k, flat.shape[1], dtype=flat.dtype, device=flat.device)
        sums.index_add_(0, labels, flat)
        counts = torch.bincount(labels, minlength=k).clamp(min=1).unsqueeze(1)
        return (sums / counts).reshape(k, *t.shape[1:])

    return ModelOutput(mean(outputs.logits), mean(outputs.embedding), mean(outputs.feature_map))


def teacher_free_logits(labels: torch.Tensor, k: int, confidence: float) -> ModelOutput:
    """Log-probabilities of the hand-made soft label: `confidence` on the true class, the rest
    spread evenly over the other k - 1."""
    p = torch.full((len(labels), k), (1 - confidence) / (k - 1), device=labels.device)
    p.scatter_(1, labels.long().unsqueeze(1), confidence)
    return ModelOutput(p.log(), None, None)
