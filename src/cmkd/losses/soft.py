"""Soft constraints for distillation between widely differing modalities.

Zhao et al., "Cross-Modal Distillation For Widely Differing Modalities" (arXiv 2507.16296, 2025),
extending Jin et al. (AAAI 2023, face -> speaker), argue that a hard constraint (an L2 loss
forcing the student's features to equal the teacher's) makes the student copy modality-specific
detail it cannot reproduce, and replace it by soft constraints at two levels.

**Reconstruction.** Neither paper publishes equations or code. What follows is cmkd's
reconstruction of the stated ideas (docs: methods.md section 2); every choice is a parameter:

- feature level (`soft_feature`): L_i = max(0, D(g(f_T^i), f_S^i) - m), g a trainable
  teacher-side projection (linear by default), D the cosine distance (1 - cos) or the mean
  squared difference ("l2"); margin m = 0.2 by default. With m = 0 and D = l2 the term is
  exactly the hard L2 constraint (MSE between g(f_T) and f_S), kept as the ablation.
- classifier level (`soft_classifier`): the student's embedding, through a trainable adapter
  (linear by default; none when the widths agree and `adapter: none`), is classified by the
  teacher's *frozen* classifier with an additive-margin softmax on the label
  (AM-Softmax, Wang et al. 2018: CE over s * (cos theta_j - m [j = y])), plus a margin-tolerant
  logit term mean_j max(0, |z_j - z_T,j| - tolerance)^2 between the logits the teacher's
  classifier gives the student's embedding and the teacher's own logits. With am_weight 0 and
  tolerance 0 it is exact logit matching (MSE), the hard ablation.

Both terms have a per-sample form, so quality weights (`cmkd.methods.quality`) can scale them
per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.models.outputs import ModelOutput

DISTANCES = ("cosine", "l2")
PROJECTIONS = ("linear", "mlp", "none")


def feature_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-sample distance between B x D rows: 1 - cos (in [0, 2]) or the mean squared
    difference over dimensions ('l2', so that its batch mean is `F.mse_loss`)."""
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
    if distance == "l2":
        return (a - b).pow(2).mean(dim=1)
    raise CmkdError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def margin_loss(distance: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, d - m) per sample: zero (and no gradient) once the student is within the margin;
    outside it the gradient is exactly the distance's."""
    return F.relu(distance - margin)


def _projection(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim)
        )
    if kind == "none":
        if in_dim != out_dim:
            raise CmkdError(
                f"projection 'none' needs equal widths, got {in_dim} and {out_dim}; use 'linear'"
            )
        return nn.Identity()
    raise CmkdError(f"projection must be one of {', '.join(PROJECTIONS)}, got {kind!r}")


@register(
    "soft_feature",
    "Soft feature constraint: margin loss max(0, D(g(f_T), f_S) - m) with a trainable "
    "teacher-side projection g; m = 0 with l2 is the hard L2 ablation (reconstruction of "
    "Zhao et al. 2025)",
)
class SoftFeature(DistillationTerm):
    """Margin loss on pooled embeddings. The projection g maps the teacher's embedding into the
    student's width; it is trained with the student (it bridges the modality gap instead of
    forcing the student into the teacher's space)."""

    needs = frozenset({"embedding"})

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        margin: float = 0.2,
        distance: str = "cosine",
        projection: str = "linear",
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise CmkdError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if margin < 0:
            raise CmkdError(f"soft_feature margin must be >= 0, got {margin}")
        self.margin, self.distance = float(margin), distance
        self.projection = _projection(projection, teacher_dim, student_dim)
        self._inside: torch.Tensor | None = None

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> SoftFeature:
        return cls(student.embedding_dim, teacher.embedding_dim, **params)

    def per_sample(self, student: ModelOutput, teacher: ModelOutput, batch: dict) -> torch.Tensor:
        d = feature_distance(self.projection(teacher.embedding.detach()), student.embedding,
                             self.distance)  # fmt: skip
        self._inside = (d.detach() <= self.margin).float().mean()
        return margin_loss(d, self.margin)

    def forward(self, student, teacher, batch):
        return self.per_sample(student, teacher, batch).mean()

    def diagnostics(self) -> dict[str, torch.Tensor]:
        # The share of samples already inside the margin (their loss and gradient are zero).
        return {} if self._inside is None else {"inside_margin": self._inside}


def am_softmax(
    embedding: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    scale: float = 16.0,
    margin: float = 0.2,
) -> torch.Tensor:
    """Per-sample additive-margin softmax loss: CE over s * (cos theta_j - m [j = y]), theta_j
    the angle between the embedding and class j's weight vector (Wang et al. 2018)."""
    cos = F.normalize(embedding, dim=1) @ F.normalize(weight, dim=1).T
    logits = scale * (cos - margin * F.one_hot(target, weight.shape[0]).to(cos.dtype))
    return F.cross_entropy(logits, target, reduction="none")


def tolerant_logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tolerance: float = 1.0
) -> torch.Tensor:
    """Per-sample mean over classes of max(0, |z_S - z_T| - tolerance)^2: logits within the
    tolerance of the teacher's cost nothing; tolerance 0 is the squared error."""
    return F.relu((student_logits - teacher_logits).abs() - tolerance).pow(2).mean(dim=1)


@register(
    "soft_classifier",
    "Soft classifier constraint: the student's embedding through the teacher's frozen classifier "
    "with an additive-margin softmax plus a margin-tolerant logit term; am_weight 0 and "
    "tolerance 0 is exact logit matching (reconstruction of Zhao et al. 2025)",
)
class SoftClassifier(DistillationTerm):
    """The teacher's classifier (weight and bias) is copied into buffers at build time: frozen,
    never in the optimiser, and saved with the student's checkpoint. The adapter from the
    student's embedding width to the teacher's is trainable."""

    needs = frozenset({"logits"})

    def __init__(
        self,
        teacher_weight: torch.Tensor,
        teacher_bias: torch.Tensor | None,
        student_dim: int,
        scale: float = 16.0,
        margin: float = 0.2,
        tolerance: float = 1.0,
        am_weight: float = 1.0,
        logit_weight: float = 1.0,
        adapter: str = "linear",
    ) -> None:
        super().__init__()
        if margin < 0 or tolerance < 0:
            raise CmkdError(
                f"soft_classifier margin and tolerance must be >= 0, got {margin}, {tolerance}"
            )
        self.register_buffer("weight", teacher_weight.detach().clone())
        bias = torch.zeros(len(teacher_weight)) if teacher_bias is None else teacher_bias
        self.register_buffer("bias", bias.detach().clone())
        self.scale, self.margin, self.tolerance = float(scale), float(margin), float(tolerance)
        self.am_weight, self.logit_weight = float(am_weight), float(logit_weight)
        self.adapter = _projection(adapter, student_dim, teacher_weight.shape[1])

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> SoftClassifier:
        head = getattr(teacher, "classifier", None)
        if not isinstance(head, nn.Linear):
            raise CmkdError(
                "soft_classifier needs a teacher network with a linear `classifier` "
                f"(a cmkd Network), got {type(teacher).__name__}"
            )
        return cls(head.weight, head.bias, student.embedding_dim, **params)

    def student_logits(self, student: ModelOutput) -> torch.Tensor:
        """The logits the teacher's frozen classifier gives the adapted student embedding."""
        return F.linear(self.adapter(student.embedding), self.weight, self.bias)

    def per_sample(self, student: ModelOutput, teacher: ModelOutput, batch: dict) -> torch.Tensor:
        h = self.adapter(student.embedding)
        loss = torch.zeros(len(h), device=h.device, dtype=h.dtype)
        if self.am_weight:
            loss = loss + self.am_weight * am_softmax(
                h, self.weight, batch["label"], self.scale, self.margin
            )
        if self.logit_weight:
            z = F.linear(h, self.weight, self.bias)
            loss = loss + self.logit_weight * tolerant_logit_loss(
                z, teacher.logits.detach(), self.tolerance
            )
        return loss

    def forward(self, student, teacher, batch):
        return self.per_sample(student, teacher, batch).mean()
