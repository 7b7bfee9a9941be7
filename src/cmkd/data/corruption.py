"""Deterministic corruption of a known fraction of the teacher-modality inputs.

The robustness scenario of soft-constrained CMKD: the teacher is trained on clean data, then a
seeded fraction of its *training* inputs is degraded at distillation time (when a bad teacher
sample teaches its student something wrong), and the rows that were corrupted are recorded, so
one can check whether quality weights single out exactly those samples.

Kinds (raw input units, before the network's standardisation; a uint8 input stays uint8):
- `noise`: additive Gaussian noise, std = severity x the channel's std over all the inputs;
- `blank`: a dead sensor: for multi-channel inputs (EuroSAT bands) round(severity x C) random
  channels, at least one, are set to the channel's minimum over the inputs; for one-channel
  inputs (spectrograms, grey images) a random contiguous block of round(severity x H) rows
  (mel bands, image rows) is;
- `clip`: saturation: each channel of a corrupted sample is clipped at its own
  (1 - severity) quantile, so a `severity` share of its values saturate. On FSDD the teacher's
  input is a log-mel spectrogram, so this clips loudness in the spectral domain: a proxy for
  waveform clipping (whose harmonics it does not reproduce), not the same thing.
"""

from __future__ import annotations

import numpy as np
import torch

from cmkd.errors import CmkdError

KINDS = ("none", "noise", "blank", "clip")
DEFAULT_SEVERITY = {"noise": 1.0, "blank": 0.5, "clip": 0.5}


def corrupt_inputs(
    x: torch.Tensor,
    kind: str,
    fraction: float,
    severity: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """A corrupted copy of `x` (N x C x ... raw inputs; never modified in place) and the boolean
    mask of the corrupted rows: exactly round(fraction x N) rows, chosen by `seed`."""
    if kind not in KINDS:
        raise CmkdError(f"corruption kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0.0 <= fraction <= 1.0:
        raise CmkdError(f"corruption fraction must be in [0, 1], got {fraction}")
    n = len(x)
    mask = np.zeros(n, dtype=bool)
    if kind == "none" or fraction == 0.0 or n == 0:
        return x, mask
    severity = DEFAULT_SEVERITY[kind] if severity is None else float(severity)
    if severity <= 0 or (kind in ("blank", "clip") and severity > 1):
        raise CmkdError(f"corruption severity for '{kind}' must be in (0, 1], got {severity}")
    if x.ndim < 2:
        raise CmkdError(f"corruption needs N x C x ... inputs, got shape {tuple(x.shape)}")
    rng = np.random.default_rng([int(seed), 0xC0])
    rows = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    mask[rows] = True
    xf = x.float()
    bad = xf[torch.from_numpy(rows)].clone()
    channel_axes = [0, *range(2, x.ndim)]
    if kind == "noise":
        std = xf.std(dim=channel_axes, keepdim=True)
        noise = torch.from_numpy(rng.standard_normal(bad.shape).astype(np.float32))
        bad = bad + severity * std * noise
    elif kind == "blank":
        low = xf.amin(dim=channel_axes, keepdim=True)[0]  # C x 1 x ...
        c = x.shape[1]
        for i in range(len(bad)):
            if c > 1:
                k = max(1, int(round(severity * c)))
                for ch in rng.choice(c, size=k, replace=False):
                    bad[i, ch] = low[ch]
            else:
                if x.ndim < 3:
                    raise CmkdError("blank needs several channels or rows to blank")
                h = x.shape[2]
                k = max(1, int(round(severity * h)))
                start = int(rng.integers(0, h - k + 1))
                bad[i, :, start : start + k] = low[0]
    else:  # clip
        flat = bad.flatten(2) if bad.ndim > 2 else bad[:, :, None]
        top = torch.quantile(flat, 1.0 - severity, dim=2, keepdim=True)
        bad = torch.minimum(flat, top).reshape(bad.shape)
    if x.dtype == torch.uint8:
        bad = bad.round().clamp(0, 255)
    out = x.clone()
    out[torch.from_numpy(rows)] = bad.to(x.dtype)
    return out, mask


def corrupt_teacher_inputs(x: torch.Tensor, cfg) -> tuple[torch.Tensor, np.ndarray | None]:
    """The distillation-time hook: `x` corrupted as `cfg` (a CorruptionConfig) says, and the
    mask of corrupted rows (None when the config corrupts nothing)."""
    if cfg.kind == "none" or cfg.fraction == 0:
        return x, None
    return corrupt_inputs(x, cfg.kind, cfg.fraction, cfg.severity, cfg.seed)
