"""SSM: SemBridge's self-supervised semantic matcher (Wei et al., AAAI 2026).

Asymmetric CMKD has no twins, so each student (B) sample needs a teacher (A) sample to learn
from. SSM trains a two-encoder, CLIP-style model on pairs that need neither labels nor real B
data: an A sample and its pseudo-B view (cmkd.pairing.pseudo_views). Afterwards every real B
sample is paired with the same-class A sample of highest cosine similarity.

Differences from the authors' code (weirl-922/ACKD @ 21a20f8), on purpose:
- the pseudo-RGB uses B04, B03, B02, not bands 1-3, and is calibrated (pseudo_views.py);
- the loss takes the raw LayerNorm outputs (norm ~ sqrt(256)), as the authors' code does:
  with tau = 1 that is a sharp temperature. L2-normalising them (`normalize=True`) bounds the
  logits to [-1, 1] and the matcher barely learns: on the 369 EuroSAT twins (small_cnn, 30
  epochs) true-twin top-1 within class was 4.8 % normalised vs ~69 % raw (chance 2.7 %).
  Matching itself always uses cosine similarity;
- inputs are standardised per channel with statistics of the matcher's training arrays, kept
  inside the matcher as `Standardize` buffers so matching sees the same statistics;
- matching is one matrix product per class instead of a per-sample loop.

Training goes through the Lightning Trainer like every cmkd model (`SSMTask`): one loss, no
validation, no checkpoints; accelerator, precision and progress bar follow the run settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cmkd.config import RunConfig
from cmkd.data.normalize import Standardize
from cmkd.data.samples import Samples
from cmkd.errors import CmkdError
from cmkd.models.backbones import create_network
from cmkd.models.inference import batched
from cmkd.pairing.pairs import PairList


class ProjectionHead(nn.Module):
    """The paper's head: Linear(D -> dim), GELU, Linear(dim -> dim), Dropout, residual, LayerNorm.

    The residual adds the first projection (dim wide) to the block's output, so it works for any
    backbone width D: the input is projected to `dim` before the residual block (as in the
    authors' CLIP head), not added raw.
    """

    def __init__(self, in_dim: int, dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, dim)
        self.block = nn.Sequential(nn.GELU(), nn.Linear(dim, dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.norm(projected + self.block(projected))


class SSMMatcher(nn.Module):
    """One encoder + projection head per modality; `embed_a` / `embed_b` take *raw* inputs.

    The backbones come from `create_network` (default resnet34, 512-d pooled, as in the paper);
    their classifiers are dropped (replaced by Identity): the matcher has no labels.
    """

    def __init__(
        self,
        a_chans: int,
        b_chans: int,
        backbone: str = "resnet34",
        proj_dim: int = 256,
        dropout: float = 0.1,
        a_norm: Standardize | None = None,
        b_norm: Standardize | None = None,
        **backbone_options: object,
    ) -> None:
        super().__init__()
        self.a_norm = a_norm if a_norm is not None else Standardize.identity(a_chans)
        self.b_norm = b_norm if b_norm is not None else Standardize.identity(b_chans)
        self.a_encoder = create_network(backbone, a_chans, 2, **backbone_options)
        self.b_encoder = create_network(backbone, b_chans, 2, **backbone_options)
        for encoder in (self.a_encoder, self.b_encoder):
            encoder.classifier = nn.Identity()
        self.a_head = ProjectionHead(self.a_encoder.embedding_dim, proj_dim, dropout)
        self.b_head = ProjectionHead(self.b_encoder.embedding_dim, proj_dim, dropout)

    def embed_a(self, x: torch.Tensor) -> torch.Tensor:
        return self.a_head(self.a_encoder(self.a_norm(x)).embedding)

    def embed_b(self, x: torch.Tensor) -> torch.Tensor:
        return self.b_head(self.b_encoder(self.b_norm(x)).embedding)

    def forward(self, a_x: torch.Tensor, b_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_a(a_x), self.embed_b(b_x)


def ssm_loss(
    e_a: torch.Tensor, e_b: torch.Tensor, tau: float = 1.0, normalize: bool = False
) -> torch.Tensor:
    """CLIP-style loss with soft targets from the in-modality similarities.

    logits = e_B e_A^T / tau; targets = softmax((e_A e_A^T + e_B e_B^T) / 2 * tau, rows);
    loss = mean over samples of (CE(logits, targets) + CE(logits^T, targets^T)) / 2.
    Soft targets let two near-duplicate A samples share credit instead of being pushed apart.
    The targets keep their gradient, as in the reference code. `normalize=True` L2-normalises
    the embeddings first (cosine logits); see the module docstring for why it is off by default.
    """
    if normalize:
        e_a, e_b = F.normalize(e_a, dim=-1), F.normalize(e_b, dim=-1)
    logits = e_b @ e_a.T / tau
    targets = F.softmax((e_a @ e_a.T + e_b @ e_b.T) / 2 * tau, dim=-1)
    b_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=1)
    a_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(dim=1)
    return ((a_loss + b_loss) / 2).mean()


class SSMTask(L.LightningModule):
    """Trains an `SSMMatcher` with `ssm_loss` (AdamW) through the same Lightning Trainer as
    every other cmkd model: accelerator, precision and progress bar come from the run settings.
    """

    def __init__(
        self, matcher: SSMMatcher, lr: float, weight_decay: float, tau: float, normalize: bool
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.lr, self.weight_decay, self.tau, self.normalize = lr, weight_decay, tau, normalize

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        a, b = batch
        if len(a) < 2:  # a batch of one has no negatives (and upsets BatchNorm)
            return None
        loss = ssm_loss(*self.matcher(a, b), tau=self.tau, normalize=self.normalize)
        self.log("ssm/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(a))
        return loss

    def configure_optimizers(self):
        from cmkd.config import OptimConfig
        from cmkd.optim import lightning_optimizers

        optim = OptimConfig("adamw", lr=self.lr, weight_decay=self.weight_decay)
        return lightning_optimizers(self.matcher.parameters(), optim)


def train_matcher(
    a_train_x: np.ndarray,
    pseudo_view: Callable[[np.ndarray], np.ndarray],
    *,
    backbone: str = "resnet34",
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    tau: float = 1.0,
    normalize: bool = False,
    seed: int = 0,
    run: RunConfig | None = None,
    **backbone_options: object,
) -> SSMMatcher:
    """Trains an `SSMMatcher` on (A sample, pseudo_view(A sample)) pairs; returns it in eval mode.

    No labels and no real B sample are used. `pseudo_view` must already be fitted (its
    calibration uses unpaired B statistics). Both input standardisations are fitted here, on
    `a_train_x` and on its pseudo-views. Defaults are the paper's (AdamW 1e-3, wd 1e-3,
    batch 64, 100 epochs, tau 1). `run` gives accelerator, precision and progress bar.
    """
    from cmkd.data.datamodule import SeededShuffle
    from cmkd.seeding import seed_for, seeded
    from cmkd.training import plain_trainer

    if len(a_train_x) < 2:
        raise CmkdError(f"SSM needs at least 2 training samples, got {len(a_train_x)}")
    if epochs < 1 or batch_size < 2:
        raise CmkdError(f"need epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    a = torch.from_numpy(np.asarray(a_train_x, dtype=np.float32))
    b = torch.from_numpy(np.asarray(pseudo_view(a_train_x), dtype=np.float32))
    if len(b) != len(a):
        raise CmkdError(f"pseudo-view returned {len(b)} samples for {len(a)}")
    with seeded(seed, "matcher"):
        matcher = SSMMatcher(
            a.shape[1],
            b.shape[1],
            backbone=backbone,
            a_norm=Standardize.fit(a),
            b_norm=Standardize.fit(b),
            **backbone_options,
        )
    task = SSMTask(matcher, lr, weight_decay, tau, normalize)
    loader = DataLoader(
        TensorDataset(a, b), batch_size, sampler=SeededShuffle(len(a), seed_for(seed, "matcher"))
    )
    L.seed_everything(seed_for(seed, "matcher-fit"), verbose=False)
    plain_trainer(run, task, max_epochs=epochs).fit(task, train_dataloaders=loader)
    return matcher.cpu().eval()


@torch.no_grad()
def embed(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """L2-normalised embeddings of raw inputs, in batches (converted batch by batch to keep the
    memory of large uint8 sets small). Returned on the CPU."""
    out = [F.normalize(e).cpu() for _, e in batched(fn, x, batch_size, device)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def match_top1(
    matcher: SSMMatcher,
    a_x: np.ndarray,
    a_y: np.ndarray,
    b_x: np.ndarray,
    b_y: np.ndarray,
    classes: Sequence[str],
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """For every B (student) sample, the same-class A (teacher) sample of highest cosine
    similarity in the matcher's space; an A sample may serve many B samples.

    Returns (table, scores): table[i] is the row in A matched to row i of B, scores[i] the
    cosine similarity. `a_y` and `b_y` index the same `classes` list. A B class without any A
    sample is a CmkdError: there is nothing to distil from.
    """
    a_y, b_y = np.asarray(a_y, dtype=np.int64), np.asarray(b_y, dtype=np.int64)
    if len(a_y) != len(a_x) or len(b_y) != len(b_x):
        raise CmkdError(
            f"sample/label counts differ: A {len(a_x)}/{len(a_y)}, B {len(b_x)}/{len(b_y)}"
        )
    missing = sorted(set(b_y.tolist()) - set(a_y.tolist()))
    if missing:
        names = [classes[c] if 0 <= c < len(classes) else str(c) for c in missing]
        raise CmkdError(
            f"no teacher (A) sample of class {', '.join(repr(n) for n in names)}, which the "
            "student (B) set has: SSM can only match within a class"
        )
    param = next(matcher.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = matcher.training
    matcher.eval()
    try:
        e_a = embed(matcher.embed_a, a_x, batch_size, device)
        e_b = embed(matcher.embed_b, b_x, batch_size, device)
    finally:
        matcher.train(was_training)
    table = np.full(len(b_y), -1, dtype=np.int64)
    scores = np.zeros(len(b_y), dtype=np.float32)
    for c in np.unique(b_y):
        a_rows = np.flatnonzero(a_y == c)
        b_rows = np.flatnonzero(b_y == c)
        best, index = (e_b[b_rows] @ e_a[a_rows].T).max(dim=1)
        table[b_rows] = a_rows[index.numpy()]
        scores[b_rows] = best.numpy()
    return table, scores


def ssm_pairs(
    matcher: SSMMatcher,
    teacher: Samples,
    student: Samples,
    batch_size: int = 256,
    method: str = "ssm",
) -> PairList:
    """`match_top1` over two sample sets, as a `PairList` (scores = cosine). Any module with
    `embed_a` / `embed_b` serves as the matcher; `method` names it in the list."""
    if teacher.classes != student.classes:
        raise CmkdError(
            f"student and teacher class lists differ: {student.classes} vs {teacher.classes}"
        )
    table, scores = match_top1(
        matcher, teacher.x, teacher.y, student.x, student.y, student.classes, batch_size
    )
    return PairList.from_table(table, student, teacher, method, scores)
