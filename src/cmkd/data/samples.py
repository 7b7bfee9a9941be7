"""The in-memory record every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmkd.errors import CmkdError


@dataclass
class Samples:
    """Decoded samples of one modality.

    x: N x C x H x W for images and spectrograms, N x D for vectors (float32 or the raw
       integer dtype of the file; normalisation happens later, from training statistics).
    y: N int64 class indices into `classes`.
    ids: N unique sample ids (str); two modalities of one paired source share ids.
    classes: the class names, index = label.
    split: the split the data carries itself (train, val or test per row: an npz with test
       arrays or a `split` array), or None; `data.split: official` (or auto) uses it.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    classes: list[str]
    split: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        counts = [len(self.y), len(self.ids)] + ([] if self.split is None else [len(self.split)])
        if any(count != n for count in counts):
            raise CmkdError(
                f"inconsistent sample counts: x {n}, y {len(self.y)}, ids {len(self.ids)}"
                + ("" if self.split is None else f", split {len(self.split)}")
            )
        self.y = np.asarray(self.y, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=str)
        if n and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise CmkdError(f"label outside the class list {self.classes}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> Samples:
        split = None if self.split is None else self.split[index]
        return Samples(self.x[index], self.y[index], self.ids[index], list(self.classes), split)
