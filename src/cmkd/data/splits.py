"""Deterministic train/val/test splits: stratified by class and fixed by the seed, or the
split a data file carries itself (an npz with test arrays or a `split` array)."""

from __future__ import annotations

import numpy as np

from cmkd.errors import CmkdError

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(
    y: np.ndarray,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_mask: np.ndarray | None = None,
    classes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Row indices of train/val/test, the same for every run with the same seed.

    Each class is shuffled with its own seeded generator and cut by the fractions (rounded per
    class), so every split holds every class in proportion. With `test_mask` (an official test
    split such as FSDD's takes 0-4) the test rows are fixed and only val is drawn from the rest.
    `classes` names the classes in errors.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CmkdError(
            f"split fractions val={val_fraction}, test={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        name = classes[label] if classes is not None else label
        if test_mask is not None:
            parts["test"].append(rows[test_mask[rows]])
            rows = rows[~test_mask[rows]]
            n_test = 0
            n_val = (
                round(len(rows) * val_fraction / (1 - test_fraction)) if test_fraction < 1 else 0
            )
            if not len(rows):
                raise CmkdError(
                    f"class {name!r} has no training sample: all its samples are in the test "
                    "split the data carries (or the source's official one)"
                )
        else:
            n_test = round(len(rows) * test_fraction)
            n_val = round(len(rows) * val_fraction)
        rows = rng.permutation(rows)
        if len(rows) - n_val - n_test < 1:
            raise CmkdError(
                f"class {name} has {len(rows)} samples: too few to split "
                f"(val_fraction {val_fraction} and test_fraction {test_fraction} leave none to "
                "train on)"
            )
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def carried_split(
    y: np.ndarray,
    assignment: np.ndarray,
    val_fraction: float,
    seed: int,
    classes: list[str],
) -> dict[str, np.ndarray]:
    """The split a data file carries: `assignment` holds train, val or test per row. Without
    val rows, `val_fraction` of each class's train rows (seeded) become validation, as for an
    official test split."""
    assignment = np.asarray(assignment, dtype=str)
    if not (assignment == "val").any():
        return stratified_split(
            y, val_fraction, 0.0, seed, test_mask=assignment == "test", classes=classes
        )
    return {name: np.flatnonzero(assignment == name) for name in SPLIT_NAMES}
