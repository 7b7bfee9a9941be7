"""Logit-based distillation terms.

Each method is a pure function on logit tensors (easy to test against hand values) plus a small
registered term. Every term here detaches the teacher's logits (they may come from a cache and
must never receive a gradient) and takes `standardize`: the LSKD z-score (Sun et al. 2024)
applied to both sides before the loss, a modifier rather than a loss of its own (in MLKD, as
in the LSKD authors' code, before its instance-level part only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmkd.losses.base import DistillationTerm, register
from cmkd.models.outputs import ModelOutput


def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """LSKD logit standardisation: per sample, subtract the mean over classes and divide by the
    standard deviation, so the student matches the teacher's logit relations, not their scale.

    As in the authors' code the std is the unbiased one (divisor K - 1) and eps is added to it.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


class LogitTerm(DistillationTerm):
    """Base of the logit terms: detaches the teacher and applies the optional z-score."""

    def __init__(self, standardize: bool = False) -> None:
        super().__init__()
        self.standardize = standardize

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        zs, zt = student.logits, teacher.logits.detach()
        if self.standardize:
            zs, zt = zscore(zs), zscore(zt)
        return zs, zt


# --- KD and LSKD -------------------------------------------------------------------------------


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 4.0,
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_T / T) || softmax(z_S / T)), averaged over the batch.

    The T^2 factor keeps the gradient scale independent of T (Hinton 2015); SemBridge's code
    omits it, so it is a switch. T may be a tensor (CTKD learns it).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2 if scale_by_t2 else kl


@register(
    "kd", "Hinton KD: T^2 KL between softened teacher and student logits (Hinton et al. 2015)"
)
class KD(LogitTerm):
    def __init__(
        self, temperature: float = 4.0, scale_by_t2: bool = True, standardize: bool = False
    ) -> None:
        super().__init__(standardize)
        self.temperature, self.scale_by_t2 = temperature, scale_by_t2

    def forward(self, student, teacher, batch):
        zs, zt = self.prepare(student, teacher)
        return kd_loss(zs, zt, self.temperature, self.scale_by_t2)

    def per_sample(self, student, teacher, batch):
        zs, zt = self.prepare(student, teacher)
        log_p_s = F.log_softmax(zs / self.temperature, dim=1)
        log_p_t = F.log_softmax(zt / self.temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
        return kl * self.temperature**2 if self.scale_by_t2 else kl


@register(
    "lskd",
    "KD with logit standardisation (z-scored logits, base T 2); `standardize: true` applies "
    "it to any logit loss (Sun et al. 2024)",
)
class LSKD(KD):
    """KD on z-scored logits. The default T = 2 is the authors' base temperature (their KD
    recipe also raises the KD weight to 9; weights are set in the config)."""

    def __init__(
        self, temperature: float = 2.0, scale_by_t2: bool = True, standardize: bool = True
    ) -> None:
        super().__init__(temperature, scale_by_t2, standardize)


# --- Logit matching -----------------------------------------------------------------------------


def logits_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits, averaged over batch and classes."""
    return F.mse_loss(student_logits, teacher_logits)


@register("logits", "Logit matching: MSE between student and teacher logits (Ba & Caruana 2014)")
class Logits(LogitTerm):
    def forward(self, student, teacher, batch):
        return logits_mse(*self.prepare(student, teacher))

    def per_sample(self, student, teacher, batch):
        zs, zt = self.prepare(student, teacher)
        return (zs - zt).pow(2).mean(dim=1)


# --- DKD ----------------------------------------------------------------------------------------


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Decoupled KD, each T^2-scaled and averaged over the batch.

    TCKD: KL between the binary (target, all others) distributions of teacher and student.
    NCKD: KL between the distributions over the non-target classes only. The reference code
    masks the target logit with -1000; dropping the column is the same value, exactly.
    """
    b, k = student_logits.shape
    gt = F.one_hot(target, k).bool()
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)

    def binary(log_p: torch.Tensor) -> torch.Tensor:
        # log of (p_target, 1 - p_target), computed in log space for stability.
        rest = log_p.masked_fill(gt, float("-inf")).logsumexp(dim=1, keepdim=True)
        return torch.cat([log_p.gather(1, target[:, None]), rest], dim=1)

    tckd = F.kl_div(binary(log_p_s), binary(log_p_t), reduction="batchmean", log_target=True)
    others_s = student_logits[~gt].view(b, k - 1)
    others_t = teacher_logits[~gt].view(b, k - 1)
    nckd = kd_loss(others_s, others_t, temperature, scale_by_t2=False)
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (Zhao et al. 2022)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up factor for a 0-based epoch: min((epoch + 1) / warmup, 1).

    The reference multiplies by min(epoch / warmup, 1) with epochs counted from 1, so its first
    epoch already has weight 1 / warmup; counting from 0 here, epoch + 1 gives the same ramp.
    """
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


@register(
    "dkd",
    "Decoupled KD: alpha TCKD + beta NCKD with weight warm-up, needs labels (Zhao et al. 2022)",
)
class DKD(LogitTerm):
    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        standardize: bool = False,
    ) -> None:
        super().__init__(standardize)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup_epochs = warmup_epochs
        self.warmup = dkd_warmup(0, warmup_epochs)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.warmup = dkd_warmup(epoch, self.warmup_epochs)

    def forward(self, student, teacher, batch):
        zs, zt = self.prepare(student, teacher)
        loss = dkd_loss(zs, zt, batch["label"], self.alpha, self.beta, self.temperature)
        return self.warmup * loss


# --- CTKD ---------------------------------------------------------------------------------------


class _GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -lambda (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    return _GradReverse.apply(x, lambda_)


def ctkd_lambda(
    epoch: int, ramp_epochs: int = 10, lambda_min: float = 0.0, lambda_max: float = 1.0
) -> float:
    """Cosine ramp of the reversal strength over a 0-based epoch.

    lambda = min + (max - min) * (1 - cos(pi * n / ramp)) / 2 with n = min(epoch + 1, ramp):
    the reference evaluates its cosine schedule at 1-based epochs, so the first epoch is
    already slightly above lambda_min and lambda_max is reached at the ramp's last epoch.
    """
    if ramp_epochs <= 0:
        return lambda_max
    n = min(epoch + 1, ramp_epochs)
    return lambda_min + (lambda_max - lambda_min) * (1 - math.cos(math.pi * n / ramp_epochs)) / 2


@register(
    "ctkd",
    "Curriculum temperature KD: KD with a learnable temperature trained adversarially through "
    "gradient reversal (Li et al. 2023)",
)
class CTKD(LogitTerm):
    """T = t_min + (t_max - t_min) * sigmoid(t), with t a global learnable scalar (initialised at
    1 as in the reference, so T starts near 15.6) fed through a gradient reversal layer: the
    optimiser that minimises the loss for the student maximises it for T, and the reversal
    strength follows `ctkd_lambda`. The reference's T^2 factor uses the learnable T too."""

    def __init__(
        self,
        t_min: float = 1.0,
        t_max: float = 21.0,
        lambda_min: float = 0.0,
        lambda_max: float = 1.0,
        ramp_epochs: int = 10,
        standardize: bool = False,
    ) -> None:
        super().__init__(standardize)
        self.t_min, self.t_max = t_min, t_max
        self.lambda_min, self.lambda_max, self.ramp_epochs = lambda_min, lambda_max, ramp_epochs
        self.t = nn.Parameter(torch.ones(()))
        self.reversal = ctkd_lambda(0, ramp_epochs, lambda_min, lambda_max)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.reversal = ctkd_lambda(epoch, self.ramp_epochs, self.lambda_min, self.lambda_max)

    def _temperature(self, t: torch.Tensor) -> torch.Tensor:
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(t)

    @property
    def temperature(self) -> float:
        """The current temperature, for logging."""
        return float(self._temperature(self.t.detach()))

    def diagnostics(self) -> dict[str, torch.Tensor]:
        # A tensor, not a float: no host sync in every training step.
        return {"temperature": self._temperature(self.t.detach())}

    def forward(self, student, teacher, batch):
        zs, zt = self.prepare(student, teacher)
        return kd_loss(zs, zt, self._temperature(grad_reverse(self.t, self.reversal)))


# --- MLKD ---------------------------------------------------------------------------------------


def gram_alignment(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, dim: int
) -> torch.Tensor:
    """Squared difference of the Gram matrices of softened predictions, as in the reference:
    dim=0 -> batch level (B x B, p p^T, sum / B); dim=1 -> class level (K x K, p^T p, sum / K)."""
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    if dim == 1:
        p_s, p_t = p_s.T, p_t.T
    diff = p_t @ p_t.T - p_s @ p_s.T
    return diff.pow(2).sum() / p_s.shape[0]


def mlkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    standardize: bool = False,
) -> dict[str, torch.Tensor]:
    """Instance (T^2 KD), batch and class alignment, each averaged over the temperatures.

    standardize: z-score the logits of the instance part only, as the LSKD authors' MLKD does
    (their `kd_loss(..., logit_stand=True)`); the batch and class parts always see raw logits.
    """
    n = len(temperatures)
    zs, zt = student_logits, teacher_logits
    if standardize:
        zs, zt = zscore(zs), zscore(zt)
    return {
        "instance": sum(kd_loss(zs, zt, t) for t in temperatures) / n,
        "batch": sum(gram_alignment(student_logits, teacher_logits, t, 0) for t in temperatures)
        / n,
        "class": sum(gram_alignment(student_logits, teacher_logits, t, 1) for t in temperatures)
        / n,
    }


@register(
    "mlkd",
    "Multi-level logit distillation: instance, batch and class alignment over several "
    "temperatures (Jin et al. 2023)",
)
class MLKD(LogitTerm):
    """Returns {"instance", "batch", "class"}, each the mean over the temperatures.

    `standardize: true` z-scores the logits for the instance part only: the LSKD authors'
    MLKD (github sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py) passes
    `logit_stand` to its instance-level `kd_loss` and never to `bc_loss` / `cc_loss`.

    The reference code (Jin et al.'s, which the LSKD authors extend) differs in ways cmkd leaves
    out on purpose:
    - It sums (not averages) over the temperatures, so its parts are 5x larger at the default
      five (use a weight of 5 to match), all times its KD weight (0.9 in Jin et al.'s config, 9
      in the LSKD recipe).
    - Its temperatures are (T, 3, 5, 2, 6) with T the config's KD temperature: 4 in Jin et
      al.'s code, which is cmkd's default set 2..6, but 2 in the LSKD code (its default and its
      `--base-temp 2`), so the LSKD authors' MLKD, with or without standardisation, runs at
      (2, 3, 5, 2, 6): T = 2 twice, no T = 4 (`temperatures: [2, 3, 5, 2, 6]` reproduces it).
    - It runs every part on a weak and a strong augmentation of each image; cmkd's trainer
      feeds one view (the teacher's inputs are cached and never augmented), i.e. no strong
      augmentation.
    - It multiplies the weak-view parts by a teacher-confidence mask (samples, and classes,
      whose teacher confidence is at or below the median) after reducing them to a scalar, so
      the mask only scales a part by the kept fraction f (about 1/2); cmkd applies no mask.
      With one view fed to both of its branches the reference's parts would be
      instance (1 + f) * sum_T KD_T (a masked weak and an unmasked strong copy), batch
      f * sum_T batch_T and class f_class * sum_T class_T (the strong-view batch and class
      parts are computed but not used): about 3 : 1 : 1, where cmkd's parts stand 1 : 1 : 1.
    """

    def __init__(
        self,
        temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
        standardize: bool = False,
    ) -> None:
        super().__init__(standardize)
        self.temperatures = tuple(float(t) for t in temperatures)

    def forward(self, student, teacher, batch):
        zs, zt = student.logits, teacher.logits.detach()
        return mlkd_parts(zs, zt, self.temperatures, self.standardize)


# --- DIST ---------------------------------------------------------------------------------------


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation (the reference's centred cosine with eps)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) of DIST, each tau^2-scaled: 1 - Pearson over classes per sample (mean over
    the batch), and 1 - Pearson over the batch per class (mean over classes)."""
    p_s = F.softmax(student_logits / tau, dim=1)
    p_t = F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - pearson(p_s, p_t).mean()
    intra = 1 - pearson(p_s.T, p_t.T).mean()
    return tau**2 * inter, tau**2 * intra


@register(
    "dist",
    "DIST: inter- and intra-class Pearson relations of softened predictions (Huang et al. 2022)",
)
class DIST(LogitTerm):
    """Returns {"inter": beta * inter, "intra": gamma * intra}."""

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0, standardize: bool = False
    ) -> None:
        super().__init__(standardize)
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, student, teacher, batch):
        inter, intra = dist_parts(*self.prepare(student, teacher), self.tau)
        return {"inter": self.beta * inter, "intra": self.gamma * intra}
