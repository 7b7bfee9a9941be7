"""Pseudo-views: a sample of the teacher modality A turned into something shaped like modality B.

SSM (SemBridge's self-supervised matcher) trains on pairs (A sample, its pseudo-B view), so it
needs no twins and no labels. A pseudo-view has to be *calibrated*: a raw pseudo-RGB made of
Sentinel-2 reflectances is off-distribution for anything that has seen real RGB (an RGB teacher
scored 44 % on it; matching through it cost 9.5 points, see docs/findings.md). The calibration is
a per-band affine map fitted so each band's mean and std equal those of the real B training set:
only unpaired statistics, never twins.

`get_pseudo_view(name)` returns a fresh, unfitted transform: a fitted one holds statistics of one
training set, so the registry holds factories rather than shared instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cmkd.data.sources.eurosat import EUROSAT_BANDS
from cmkd.errors import CmkdError


class PseudoView:
    """A fit-then-apply transform from modality `source` to modality `target`."""

    source: str = ""
    target: str = ""

    def fit(self, a_train: np.ndarray, b_train: np.ndarray) -> PseudoView:
        """Learns whatever the transform needs from *unpaired* training sets of A and B."""
        raise NotImplementedError

    def __call__(self, a_x: np.ndarray) -> np.ndarray:
        """N x C_A x H x W -> N x C_B x H x W float32."""
        raise NotImplementedError


class BandSelectView(PseudoView):
    """Picks named bands of A (in the order of B's channels) and, if `calibrate`, maps each band
    affinely so its mean and std over the A training set equal those of the matching B channel.

    The bands are chosen by name, never by position: SemBridge's code takes bands 1-3
    (B01, B02, B03) as "RGB", which is coastal aerosol, blue and green. `calibrate=False` keeps
    the raw selected bands (as float32): the uncalibrated ablation.
    """

    def __init__(
        self,
        bands: Sequence[str],
        source_bands: Sequence[str],
        source: str,
        target: str,
        calibrate: bool = True,
    ) -> None:
        unknown = [b for b in bands if b not in source_bands]
        if unknown:
            raise CmkdError(
                f"pseudo-view band {unknown[0]!r} is not a source band; "
                f"source bands: {list(source_bands)}"
            )
        self.bands = tuple(bands)
        self.source_bands = tuple(source_bands)
        self.index = [self.source_bands.index(b) for b in self.bands]
        self.source = source
        self.target = target
        self.calibrate = calibrate
        self.scale: np.ndarray | None = None
        self.shift: np.ndarray | None = None

    def _select(self, a_x: np.ndarray) -> np.ndarray:
        if a_x.ndim != 4 or a_x.shape[1] != len(self.source_bands):
            raise CmkdError(
                f"{self.source} -> {self.target} pseudo-view expects N x {len(self.source_bands)}"
                f" x H x W ({', '.join(self.source_bands)}), got shape {tuple(a_x.shape)}"
            )
        return a_x[:, self.index].astype(np.float64)

    def fit(self, a_train: np.ndarray, b_train: np.ndarray) -> BandSelectView:
        """Per-band affine map: scale = std_B / std_A, shift = mean_B - scale * mean_A. A and B
        are separate (unpaired) training sets; nothing here needs sample-to-sample links."""
        if b_train.ndim != 4 or b_train.shape[1] != len(self.bands):
            raise CmkdError(
                f"{self.target} training set must be N x {len(self.bands)} x H x W, "
                f"got shape {tuple(b_train.shape)}"
            )
        a = self._select(a_train)
        b = b_train.astype(np.float64)
        a_mean, a_std = a.mean(axis=(0, 2, 3)), a.std(axis=(0, 2, 3))
        b_mean, b_std = b.mean(axis=(0, 2, 3)), b.std(axis=(0, 2, 3))
        # A constant band has no spread to rescale: it is only shifted.
        self.scale = np.where(a_std > 1e-12, b_std / np.maximum(a_std, 1e-12), 1.0)
        self.shift = b_mean - self.scale * a_mean
        return self

    def __call__(self, a_x: np.ndarray) -> np.ndarray:
        x = self._select(a_x)
        if not self.calibrate:
            return x.astype(np.float32)
        if self.scale is None or self.shift is None:
            raise CmkdError(
                f"{self.source} -> {self.target} pseudo-view is not fitted: call "
                ".fit(a_train, b_train) first (or use calibrate=False)"
            )
        out = x * self.scale[None, :, None, None] + self.shift[None, :, None, None]
        return out.astype(np.float32)


def _eurosat_ms_to_rgb(calibrate: bool = True) -> PseudoView:
    return BandSelectView(
        ("B04", "B03", "B02"), EUROSAT_BANDS, "eurosat_ms", "eurosat_rgb", calibrate
    )


RGB_CHANNELS = ("red", "green", "blue")


def _rgb_to_rgb(calibrate: bool = True) -> PseudoView:
    """RGB of one sensor as RGB of another (EuroSAT's Sentinel-2 and UC Merced's aerial
    camera): the same channels, each calibrated to the other set's mean and std."""
    return BandSelectView(RGB_CHANNELS, RGB_CHANNELS, "rgb", "rgb", calibrate)


PSEUDO_VIEWS: dict[str, Callable[..., PseudoView]] = {
    "eurosat_ms_to_rgb": _eurosat_ms_to_rgb,
    "rgb_to_rgb": _rgb_to_rgb,
}

# Directions that cannot be derived, with the reason, so a request gets an explanation.
_NOT_DERIVABLE = {
    "eurosat_rgb_to_ms": (
        "RGB holds 3 of the 13 Sentinel-2 bands; the other 10 (B01, B05-B12, B8A) cannot be "
        "derived from it"
    ),
}


def available_pseudo_views() -> list[str]:
    return sorted(PSEUDO_VIEWS)


def get_pseudo_view(name: str, **options: object) -> PseudoView:
    """A fresh, unfitted pseudo-view; `options` go to its factory (e.g. calibrate=False)."""
    factory = PSEUDO_VIEWS.get(name)
    if factory is None:
        reason = _NOT_DERIVABLE.get(name)
        why = f"no pseudo-view {name!r}: {reason}" if reason else f"unknown pseudo-view {name!r}"
        raise CmkdError(
            f"{why}; available: {', '.join(available_pseudo_views())}. Where no pseudo-view "
            "exists, pair samples another way (teacher embeddings, prototypes, random same-class)"
        )
    return factory(**options)
