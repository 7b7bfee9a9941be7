"""The user's data handed in from Python: numpy arrays or tensors, or a torch `Dataset`, as the
same in-memory `Samples` every built-in source returns (read once; the training loop then
indexes tensors, as for any source).

Sample ids name samples across data modules: one id is one sample, whichever modality shows it
(the `paired` pairing matches by id, and a teacher whose training samples share ids with the
student's validation or test samples is refused). Without ids, a call numbers its rows as
`<modalities>:<row>`, so the modalities of one call are paired row by row and two separate
calls never share ids by accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cmkd.data.samples import Samples
from cmkd.data.splits import stratified_split
from cmkd.errors import CmkdError

ArrayLike = np.ndarray | torch.Tensor | Sequence
# Keys of a dict-valued Dataset item that are not modalities.
LABEL, ID = "label", "id"


def _numpy(a: Any, what: str) -> np.ndarray:
    if torch.is_tensor(a):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as err:
        raise CmkdError(f"{what} is not an array: {err}") from None


def samples_from_arrays(
    x: ArrayLike | Mapping[str, ArrayLike],
    y: ArrayLike,
    *,
    modality: str = "x",
    ids: ArrayLike | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Samples]:
    """{modality: Samples}: one array (named `modality`) or a mapping {modality: array}, rows
    aligned with the integer labels `y` (0..K-1; `classes` names them, default "0".."K-1")."""
    xs = dict(x) if isinstance(x, Mapping) else {modality: x}
    if not xs:
        raise CmkdError("no input arrays given")
    labels = _numpy(y, "y")
    if labels.ndim != 1 or not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
    ):
        raise CmkdError(
            f"y must be a 1-D array of integer labels, got {labels.dtype} {labels.shape}"
        )
    n = len(labels)
    if ids is None:
        ids = [f"{'+'.join(sorted(xs))}:{i}" for i in range(n)]
    names = np.asarray(_numpy(ids, "ids"), dtype=str)
    if len(set(names.tolist())) != len(names):
        raise CmkdError("sample ids must be unique")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max(initial=-1)) + 1)]
    out = {}
    for name, arr in xs.items():
        values = _numpy(arr, f"x[{name!r}]")
        if values.ndim < 2:
            raise CmkdError(
                f"inputs of {name!r} must be N x D or N x C x H x W, got {values.shape}"
            )
        out[name] = Samples(values, labels, names, [str(c) for c in classes])
    return out


def _items(dataset: Any) -> Iterable[Any]:
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return (dataset[i] for i in range(len(dataset)))
    return iter(dataset)


def columns_of_dataset(
    dataset: Any, modality: str = "x"
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """Every item of a torch Dataset, stacked: ({modality: x}, y, ids or None). Items are
    (x, y) tuples (x named `modality`) or dicts {modality: x, ..., "label": y, "id": id}."""
    xs: dict[str, list[np.ndarray]] = {}
    ys: list[int] = []
    ids: list[str] = []
    for i, item in enumerate(_items(dataset)):
        if isinstance(item, Mapping):
            if LABEL not in item:
                raise CmkdError(f"dataset item {i} is a dict without a {LABEL!r} key: {list(item)}")
            views = {k: v for k, v in item.items() if k not in (LABEL, ID, "index")}
            label = item[LABEL]
            if ID in item:
                ids.append(str(item[ID]))
        elif isinstance(item, tuple | list) and len(item) >= 2:
            views, label = {modality: item[0]}, item[1]
        else:
            raise CmkdError(
                f"dataset item {i} is a {type(item).__name__}; give (x, y) tuples or dicts "
                f"{{modality: x, {LABEL!r}: y}}"
            )
        if xs and set(views) != set(xs):
            raise CmkdError(f"dataset item {i} has modalities {sorted(views)}, not {sorted(xs)}")
        for name, value in views.items():
            xs.setdefault(name, []).append(_numpy(value, f"item {i} {name!r}"))
        ys.append(int(label))
    if not ys:
        raise CmkdError("the dataset is empty")
    if ids and len(ids) != len(ys):
        raise CmkdError(f"some dataset items have an {ID!r} and some do not")
    try:
        stacked = {name: np.stack(values) for name, values in xs.items()}
    except ValueError as err:
        raise CmkdError(f"dataset items differ in shape: {err}") from None
    return stacked, np.asarray(ys, dtype=np.int64), np.asarray(ids) if ids else None


def columns_of_datasets(
    datasets: Mapping[str, Any],
    modality: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """{"train": Dataset, "val": Dataset or None, "test": Dataset or None}, read and
    concatenated: (inputs per modality, labels, ids or None, rows of each split). A split given
    no Dataset is drawn from train's rows, stratified by `seed` with its fraction."""
    parts = {name: columns_of_dataset(d, modality) for name, d in datasets.items() if d is not None}
    if "train" not in parts:
        raise CmkdError("no training dataset given")
    first = parts["train"][0]
    for name, (xs, _, _) in parts.items():
        if set(xs) != set(first):
            raise CmkdError(
                f"the {name} dataset has modalities {sorted(xs)}, train {sorted(first)}"
            )
    has_ids = [part[2] is not None for part in parts.values()]
    if any(has_ids) and not all(has_ids):
        raise CmkdError(f"give an {ID!r} in the items of every dataset or of none")
    drawn = stratified_split(
        parts["train"][1],
        0.0 if "val" in parts else val_fraction,
        0.0 if "test" in parts else test_fraction,
        seed,
    )
    rows, start = {"train": drawn["train"]}, 0
    for name, (_, y, _) in parts.items():  # train, then val and test where given
        if name != "train":
            rows[name] = np.arange(start, start + len(y))
        start += len(y)
    rows.update({name: drawn[name] for name in ("val", "test") if name not in parts})
    xs = {m: np.concatenate([part[0][m] for part in parts.values()]) for m in first}
    y = np.concatenate([part[1] for part in parts.values()])
    ids = np.concatenate([part[2] for part in parts.values()]) if all(has_ids) else None
    return xs, y, ids, rows


def explicit_split(n: int, splits: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Row indices of train, val and test given by the user: checked to be disjoint and in
    range (rows in no split are not used)."""
    unknown = set(splits) - {"train", "val", "test"}
    if unknown or "train" not in splits:
        raise CmkdError(f"splits needs 'train' (and 'val', 'test'), got {sorted(splits)}")
    out = {}
    for name in ("train", "val", "test"):
        rows = np.asarray(_numpy(splits.get(name, []), f"splits[{name!r}]"), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise CmkdError(f"splits[{name!r}] has rows outside 0..{n - 1}")
        out[name] = np.sort(rows)
    together = np.concatenate(list(out.values()))
    if len(np.unique(together)) != len(together):
        raise CmkdError("splits overlap: a row may be in one split only")
    if not len(out["train"]):
        raise CmkdError("the train split is empty")
    return out
