"""Feature-matching terms: FitNet hints and attention transfer.

Across modalities the two feature maps differ in channels and in spatial size, so every map
comparison goes through `resize`: adaptive average pooling when shrinking (it averages whole
cells instead of aliasing), bilinear interpolation when a map must grow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.models.outputs import ModelOutput

ON_CHOICES = ("feature_map", "embedding")


def check_on(term: str, on: str) -> str:
    if on not in ON_CHOICES:
        raise CmkdError(f"'{term}' option on must be 'feature_map' or 'embedding', got {on!r}")
    return on


def require_feature_maps(term: str, student: nn.Module, teacher: nn.Module, instead: str) -> None:
    """Build-time check: vector models (MLPs) have no feature map to compare."""
    for role, net in (("student", student), ("teacher", teacher)):
        if getattr(net, "feature_channels", None) is None:
            name = getattr(net, "name", type(net).__name__)
            raise CmkdError(
                f"'{term}' compares feature maps but the {role} '{name}' has none; use {instead}"
            )


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x C x H x W to B x C x size: adaptive average pooling when no side grows, else
    bilinear interpolation."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def feature(out: ModelOutput, on: str) -> torch.Tensor:
    value = out.feature_map if on == "feature_map" else out.embedding
    if value is None:
        raise CmkdError(f"this term reads the {on}, but the network output has none")
    return value


# --- FitNet ---------------------------------------------------------------------------------


def fitnet_loss(regressed_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hint loss: mean squared error between the regressed student and the teacher features."""
    return F.mse_loss(regressed_student, teacher)


@register(
    "fitnet",
    "FitNet hints: MSE from a learnt student-to-teacher regressor to teacher features "
    "(Romero et al. 2015)",
)
class FitNet(DistillationTerm):
    """on='feature_map': 1x1 conv + BN regressor, student map resized to the teacher's size
    first (see `resize`); on='embedding': a Linear regressor."""

    def __init__(self, student_dim: int, teacher_dim: int, on: str = "feature_map") -> None:
        super().__init__()
        self.on = check_on("fitnet", on)
        self.needs = frozenset({on})
        if on == "feature_map":
            self.regressor: nn.Module = nn.Sequential(
                nn.Conv2d(student_dim, teacher_dim, 1, bias=False), nn.BatchNorm2d(teacher_dim)
            )
        else:
            self.regressor = nn.Linear(student_dim, teacher_dim)

    @classmethod
    def from_networks(cls, student, teacher, context, on: str = "feature_map") -> FitNet:
        check_on("fitnet", on)
        if on == "feature_map":
            require_feature_maps("fitnet", student, teacher, "fitnet with on: embedding")
            return cls(student.feature_channels, teacher.feature_channels, on)
        return cls(student.embedding_dim, teacher.embedding_dim, on)

    def forward(self, student, teacher, batch):
        s, t = feature(student, self.on), feature(teacher, self.on).detach()
        if self.on == "feature_map":
            s = resize(s, t.shape[-2:])
        return fitnet_loss(self.regressor(s), t)

    def per_sample(self, student, teacher, batch):
        s, t = feature(student, self.on), feature(teacher, self.on).detach()
        if self.on == "feature_map":
            s = resize(s, t.shape[-2:])
        return (self.regressor(s) - t).pow(2).flatten(1).mean(dim=1)


# --- Attention transfer ---------------------------------------------------------------------


def attention_map(
    f: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """mean_c |f|^p, flattened and L2-normalised per sample; the feature map is first pooled to
    `size` (see `resize`) if given, before the channel mean, as in the reference code.

    The channel mean makes it width-free; normalising makes it scale-free. |f|^p equals the
    reference's f.pow(p) for even p (and for any p on non-negative, post-ReLU features).
    """
    if size is not None:
        f = resize(f, size)
    a = f.abs().pow(p).mean(dim=1)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0, beta: float = 1000.0
) -> torch.Tensor:
    """beta * mean over batch and positions of (Q_S - Q_T)^2, Q = `attention_map`.

    This is the authors' code for one stage (szagoruyko/attention-transfer `utils.at_loss`
    times `--beta 1e+3`; RepDistiller's `Attention` with `-b 1000`; mdistiller's
    `single_stage_at_loss` times FEAT_WEIGHT 1000), not the paper's beta/2 * ||.||_2 form.
    When the sizes differ, the larger feature map is adaptive-average pooled to the smaller
    height and width before its attention map is taken, as mdistiller and RepDistiller do
    (they pool to a square of the smaller height; here each side to the smaller of the two).
    """
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    diff = attention_map(f_s, p, size) - attention_map(f_t, p, size)
    return beta * diff.pow(2).mean()


@register(
    "at",
    "Attention transfer: match channel-pooled spatial attention maps (Zagoruyko & Komodakis 2017)",
)
class AT(DistillationTerm):
    """`at_loss` on the last-stage feature maps: at the defaults (p 2, beta 1000) the authors'
    loss for one stage. They sum it over several stages; cmkd networks expose one."""

    needs = frozenset({"feature_map"})

    def __init__(self, p: float = 2.0, beta: float = 1000.0) -> None:
        super().__init__()
        self.p, self.beta = p, beta

    @classmethod
    def from_networks(cls, student, teacher, context, **params) -> AT:
        require_feature_maps("at", student, teacher, "an embedding term such as rkd, pkt or sp")
        return cls(**params)

    def forward(self, student, teacher, batch):
        return at_loss(student.feature_map, teacher.feature_map.detach(), self.p, self.beta)
