"""Data sources by name: each returns {modality: Samples}."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cmkd.data.samples import Samples
from cmkd.data.sources.custom import load_folders
from cmkd.data.sources.digits import fsdd_official_test_mask, load_fsdd, load_mnist
from cmkd.data.sources.eurosat import load_eurosat_ms, load_eurosat_paired, load_eurosat_rgb
from cmkd.data.sources.mfeat import load_mfeat
from cmkd.data.sources.npz import load_npz
from cmkd.data.sources.ucmerced import load_ucmerced
from cmkd.errors import CmkdError

Source = Callable[..., dict[str, Samples]]


def _one_modality(modality: str, loader: Callable[..., Samples]) -> Source:
    def source(root: Path, **options) -> dict[str, Samples]:
        return {modality: loader(root, **options)}

    # load_source reads the accepted options from the signature, so expose the loader's.
    source.__signature__ = inspect.signature(loader)  # type: ignore[attr-defined]
    return source


def _folder(root: Path, folders: dict[str, str]) -> dict[str, Samples]:
    return load_folders(folders)


def _npz(root: Path, path: str) -> dict[str, Samples]:
    return load_npz(path)


# Each entry is called as entry(root, **options); its keyword parameters are its options.
SOURCES: dict[str, Source] = {
    "eurosat_paired": load_eurosat_paired,
    "eurosat_ms": _one_modality("ms", load_eurosat_ms),
    "eurosat_rgb": _one_modality("rgb", load_eurosat_rgb),
    "fsdd": _one_modality("audio", load_fsdd),
    "mnist": _one_modality("image", load_mnist),
    "mfeat": load_mfeat,
    "ucmerced": _one_modality("rgb", load_ucmerced),
    "folder": _folder,
    "npz": _npz,
}


def source_options(name: str) -> dict[str, inspect.Parameter]:
    """The options source `name` accepts (an unknown name is a CmkdError)."""
    if name not in SOURCES:
        raise CmkdError(f"unknown data source {name!r}; known: {sorted(SOURCES)}")
    params = inspect.signature(SOURCES[name]).parameters
    return {k: p for k, p in params.items() if k != "root"}


def load_source(name: str, root: Path, **options) -> dict[str, Samples]:
    """Load source `name` from data root `root`; returns {modality: Samples}."""
    valid = source_options(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise CmkdError(
            f"unknown option {unknown[0]!r} for data source {name!r}; valid: {list(valid)}"
        )
    missing = [k for k, p in valid.items() if p.default is p.empty and k not in options]
    if missing:
        raise CmkdError(f"data source {name!r} needs option {missing[0]!r}")
    samples = SOURCES[name](Path(root), **options)
    for modality, s in samples.items():
        _check_values(name, modality, s)
    return samples


def _check_values(name: str, modality: str, samples: Samples) -> None:
    """Features must be finite numbers: a NaN or Inf would train into NaN weights silently."""
    x = samples.x
    if x.dtype.kind not in "biuf":
        raise CmkdError(f"data source {name!r} ({modality}) gives {x.dtype} features, not numbers")
    if x.dtype.kind == "f" and len(x):
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            first = samples.ids[int(np.flatnonzero(~finite)[0])]
            raise CmkdError(
                f"data source {name!r} ({modality}) has NaN or Inf values in "
                f"{int((~finite).sum())} samples (first: {first}); fill or drop them"
            )


# Sources whose publishers define a test set, as a function of the sample ids.
OFFICIAL_TEST = {"fsdd": fsdd_official_test_mask}


def official_test_mask(name: str, ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Boolean mask of the rows in source `name`'s official test set."""
    if name not in OFFICIAL_TEST:
        raise CmkdError(
            f"data source {name!r} has no official test split: sources with one are "
            f"{', '.join(sorted(OFFICIAL_TEST))} and an npz file that carries its own "
            "(x_<modality>_test + y_test, or a split array); use data.split stratified or auto"
        )
    return OFFICIAL_TEST[name](ids)


__all__ = ["OFFICIAL_TEST", "SOURCES", "load_source", "official_test_mask", "source_options"]
