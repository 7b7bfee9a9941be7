"""Quality-based adaptive weights for the distillation terms (soft-constrained CMKD).

Zhao et al. (arXiv 2507.16296) weight each sample's distillation term by a quantified data
quality, so that noisy, low-quality teacher samples teach less. Their quality measure is not
published. **Reconstruction** (methods.md section 2), every source a property of the *teacher*
sample, since it is the teacher-modality input that may be degraded:

- `confidence`: the frozen teacher's softmax probability of the true class;
- `norm`: the norm of the teacher's embedding (MagFace / AdaFace read it as image quality),
  standardised within the batch (z), clipped to [-clip, clip] and mapped linearly to
  1 + strength * z / clip, a positive weight in [1 - strength, 1 + strength];
- `dropout`: stability under dropout (SER-FIQ, Terhorst et al. 2020): K passes of the teacher's
  embedding through seeded dropout (rate p) and the teacher's classifier; the quality is
  2 * sigmoid(-d), d the mean pairwise Euclidean distance of the L2-normalised logit vectors.
  SER-FIQ applies dropout inside the network; cmkd applies it to the embedding only, so one
  backbone pass serves all K samples.

The teacher is frozen and its inputs are fixed, so the raw quality of every teacher training
sample is computed once when training starts (beside the teacher cache). Each step, the
qualities of the batch's teacher samples become weights with mean 1 in the batch (`q^power`
first for confidence and dropout); they are detached, so no gradient flows into the weighting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.models.inference import batched

SOURCES = ("none", "confidence", "norm", "dropout")


@torch.no_grad()
def teacher_quality(
    teacher: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    dropout_p: float = 0.5,
    dropout_passes: int = 10,
    seed: int = 0,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """Every quality source (and whether the teacher is right) for each teacher sample.

    `teacher` is a frozen StandardizedNetwork (raw input -> ModelOutput) whose `.network` has
    the linear `classifier`. Returns CPU float tensors of length N: confidence, norm, dropout,
    correct. All sources are cheap given one forward pass, and having all three lets a user
    compare them on the same run.
    """
    if not 0.0 < dropout_p < 1.0:
        raise CmkdError(f"quality dropout_p must be in (0, 1), got {dropout_p}")
    if dropout_passes < 2:
        raise CmkdError(f"quality dropout_passes must be >= 2, got {dropout_passes}")
    classifier = getattr(getattr(teacher, "network", teacher), "classifier", None)
    if not isinstance(classifier, torch.nn.Linear):
        raise CmkdError("quality weights need a teacher network with a linear classifier")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("confidence", "norm", "dropout", "correct")
    }
    for rows, out in batched(teacher, inputs, chunk, device):
        y = labels[rows].to(out.logits.device)
        prob = out.logits.softmax(dim=1)
        parts["confidence"].append(prob.gather(1, y[:, None])[:, 0].cpu())
        parts["correct"].append((out.logits.argmax(dim=1) == y).float().cpu())
        parts["norm"].append(out.embedding.flatten(1).norm(dim=1).cpu())
        e = out.embedding.flatten(1)
        keep = torch.bernoulli(
            torch.full((dropout_passes, *e.shape), 1.0 - dropout_p), generator=gen
        ).to(e.device)
        z = F.normalize(classifier(keep * e / (1.0 - dropout_p)), dim=-1)  # K x B x classes
        d = torch.cdist(z.transpose(0, 1), z.transpose(0, 1))  # B x K x K
        k = dropout_passes
        mean_d = d.sum(dim=(1, 2)) / (k * (k - 1))
        parts["dropout"].append((2.0 * torch.sigmoid(-mean_d)).cpu())
    return {k: torch.cat(v).float() for k, v in parts.items()}


def batch_weights(
    quality: torch.Tensor,
    source: str,
    power: float = 1.0,
    norm_clip: float = 2.0,
    norm_strength: float = 0.5,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample weights with mean 1 in the batch, detached, from the raw qualities of the
    batch's teacher samples (see the module docstring for each source)."""
    q = quality.detach().float()
    if source == "norm":
        if not 0.0 <= norm_strength < 1.0 or norm_clip <= 0:
            raise CmkdError(
                f"quality norm_strength must be in [0, 1) and norm_clip > 0, got "
                f"{norm_strength}, {norm_clip}"
            )
        std = q.std(unbiased=False) if len(q) > 1 else q.new_zeros(())
        z = ((q - q.mean()) / (std + eps)).clamp(-norm_clip, norm_clip)
        q = 1.0 + norm_strength * z / norm_clip
    elif source in ("confidence", "dropout"):
        q = q.clamp_min(eps) ** power
    else:
        raise CmkdError(f"quality source must be one of {', '.join(SOURCES[1:])}, got {source!r}")
    return q / q.mean()


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for telling `positive` rows from the others (the
    Mann-Whitney U statistic, ties counted half); nan when one group is empty."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def save_teacher_quality(
    run_dir: Path, module, teacher_ids: np.ndarray, corrupted: np.ndarray | None
) -> None:
    """After training: quality.npz (every quality source, the teacher's correctness and the
    mean weight per teacher training sample, with its id and whether it was corrupted) when
    quality weights were on, and corruption.json (the corrupted ids) when inputs were
    corrupted; both written atomically in the run folder."""
    from cmkd.io import save_npz, write_json
    from cmkd.training import is_global_zero

    if not is_global_zero():  # every DDP rank holds the same teacher table: write it once
        return
    run_dir = Path(run_dir)
    if corrupted is not None:
        ids = [str(i) for i in np.asarray(teacher_ids)[corrupted]]
        write_json(run_dir / "corruption.json", {"n": len(corrupted), "corrupted_ids": ids})
    record = module.quality_record()
    if record:
        mask = np.zeros(len(teacher_ids), bool) if corrupted is None else corrupted
        save_npz(
            run_dir / "quality.npz",
            ids=np.asarray(teacher_ids).astype(str),
            corrupted=mask,
            source=np.array(module.quality["source"]),
            **record,
        )
