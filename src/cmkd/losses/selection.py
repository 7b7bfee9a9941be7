"""Sample-selective distillation: C2KD's on-the-fly selection (Huo et al., CVPR 2024).

Across modalities the teacher is often confidently wrong for the student's input (the modality
gap), and distilling those samples hurts. C2KD measures, per sample, how well the teacher's and
the student's class rankings agree (Kendall's tau over the K logits) and distils only on the
samples where they agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.losses.base import DistillationTerm, register
from cmkd.losses.logits import zscore
from cmkd.models.outputs import ModelOutput

_CHUNK_ELEMENTS = 1 << 24
"""Largest B x K x K sign tensor built at once (64 MiB in float32); bigger batches are chunked."""


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b between the rows of `a` and `b` (both B x K), vectorised over the batch.

    tau_b = sum_{i<j} sgn(a_i - a_j) sgn(b_i - b_j) / sqrt((n0 - n1)(n0 - n2)), with n1, n2 the
    pairs tied in a, in b; n0 - n1 is the number of pairs not tied in a, i.e. half the sum of
    |sgn(a_i - a_j)| over all ordered pairs, so tau_b is the ratio of full-matrix sums (the
    halves cancel). Equals scipy.stats.kendalltau (its default tau-b); NaN where a row is
    constant, as in scipy. Builds B x K x K sign tensors, chunked over the batch so at most
    ~2^24 elements exist at once: O(B K^2) time, fine for K up to a few hundred classes.
    Not differentiable (signs), and computed without autograd, in float32 (sums up to K^2 must
    be exact; under mixed precision the logits may be half).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"kendall_tau expects two B x K tensors, got {a.shape} and {b.shape}")
    batch, k = a.shape
    a, b = a.detach().float(), b.detach().float()
    step = max(1, _CHUNK_ELEMENTS // max(1, k * k))
    out = []
    with torch.no_grad():
        for a_rows, b_rows in zip(a.split(step), b.split(step), strict=True):
            sa = torch.sign(a_rows.unsqueeze(2) - a_rows.unsqueeze(1))
            sb = torch.sign(b_rows.unsqueeze(2) - b_rows.unsqueeze(1))
            concordance = (sa * sb).sum(dim=(1, 2))
            untied_a = sa.abs().sum(dim=(1, 2))
            untied_b = sb.abs().sum(dim=(1, 2))
            out.append(concordance / torch.sqrt(untied_a * untied_b))
    return torch.cat(out) if out else a.new_zeros(batch)


def select_by_tau(
    tau: torch.Tensor, threshold: float = 0.0, keep_ratio: float | None = None
) -> torch.Tensor:
    """Boolean mask of the samples to distil.

    Default (the C2KD reference code, `mask = kendall > args.krc`, krc = 0): tau > threshold,
    strictly. With `keep_ratio` r (a cmkd option, not in the paper): the top ceil(r B) taus,
    i.e. tau >= the ceil(r B)-th largest, so ties at the cut-off are all kept. NaN taus
    (a constant logit row carries no ranking) are never kept by the threshold rule and rank
    last under the ratio rule.
    """
    tau = torch.nan_to_num(tau, nan=-math.inf)
    if keep_ratio is None:
        return tau > threshold
    if tau.numel() == 0:
        return torch.zeros_like(tau, dtype=torch.bool)
    k = min(tau.numel(), max(1, math.ceil(keep_ratio * tau.numel())))
    return tau >= tau.topk(k).values[-1]


@register(
    "c2kd",
    "KD only on samples whose teacher and student logit rankings agree by Kendall tau "
    "(Huo et al. 2024, C2KD)",
)
class C2KD(DistillationTerm):
    """C2KD's on-the-fly selection with student-side KD.

    Per sample: tau = Kendall tau-b between teacher and student logits (detached; z-scoring
    does not change ranks); keep the samples `select_by_tau` selects; loss = KD (T^2-scaled by
    default, as the "kd" term) averaged over the kept samples, 0 when none is kept. The kept
    fraction of the last call is `last_kept_fraction` (a detached 0-d tensor, so no host sync
    per step); it is not returned, because the trainer sums every returned value into the loss.

    Differences from the paper and its reference code (github.com/huofushuo/C2KD), on purpose:
    - Unidirectional. C2KD also trains the teacher from the student, through proxy heads on
      both networks and bidirectional KL; cmkd's teacher is frozen (and its outputs cached),
      so only the selection and the teacher-to-student KD are kept, and tau is computed on the
      networks' own logits rather than on the proxies'.
    - The reference code distils a non-target KL (ground-truth logit zeroed) at T = 1 without
      T^2 and divides the masked sum by the whole batch; here it is standard KD (temperature,
      scale_by_t2, as the "kd" term) averaged over the kept samples, so the loss scale does not
      shrink with the kept fraction.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        scale_by_t2: bool = True,
        threshold: float = 0.0,
        keep_ratio: float | None = None,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
            raise CmkdError(f"c2kd: keep_ratio must be in (0, 1], got {keep_ratio}")
        if not -1.0 <= threshold < 1.0:
            raise CmkdError(f"c2kd: threshold must be in [-1, 1) (tau's range), got {threshold}")
        self.temperature, self.scale_by_t2 = temperature, scale_by_t2
        self.threshold, self.keep_ratio, self.standardize = threshold, keep_ratio, standardize
        self.last_kept_fraction: torch.Tensor | None = None

    def diagnostics(self) -> dict[str, torch.Tensor]:
        kept = self.last_kept_fraction
        return {} if kept is None else {"kept_fraction": kept}

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: dict) -> torch.Tensor:
        zs, zt = student.logits, teacher.logits.detach()
        keep = select_by_tau(kendall_tau(zt, zs), self.threshold, self.keep_ratio).to(zs.dtype)
        self.last_kept_fraction = keep.mean().detach()
        if self.standardize:
            zs, zt = zscore(zs), zscore(zt)
        # Masked mean rather than boolean indexing: no host sync, and 0 (still attached to the
        # student's graph) when nothing is kept.
        t = self.temperature
        log_p_s, log_p_t = F.log_softmax(zs / t, dim=1), F.log_softmax(zt / t, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
        loss = (keep * kl).sum() / keep.sum().clamp(min=1.0)
        return loss * t**2 if self.scale_by_t2 else loss
