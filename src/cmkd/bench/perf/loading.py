"""(d) Data: samples/s from the decoded cache against decoding the TIFF/JPEG files every epoch,
and what reading the cache file costs at the start of a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch


class _DecodingDataset(torch.utils.data.Dataset):
    """Decodes its file on every access: what a loader without the cache does every epoch."""

    def __init__(self, paths: list[Path], read: Callable, labels: np.ndarray, key: str) -> None:
        self.paths, self.read, self.labels, self.key = paths, read, labels, key

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        x = self.read(self.paths[i])
        x = x.astype(np.float32) if x.dtype not in (np.uint8, np.float32) else x.copy()
        return {self.key: torch.from_numpy(x), "label": int(self.labels[i]), "index": i}


def _epoch_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def data_rates(
    root: str | None = None, batch_size: int = 32, repeats: int = 3, limit: int | None = None
) -> dict[str, Any]:
    """Samples/s of one epoch from the decoded arrays (what a run holds after reading the
    cache) against decoding every TIFF (MS) / JPEG (RGB) file per sample, plus the cost of
    reading the cache file itself at the start of a run. EuroSAT paired files (`limit`: the
    first files only)."""
    from torch.utils.data import DataLoader

    from cmkd.data.datamodule import ModalityDataset
    from cmkd.data.root import resolve_data_root
    from cmkd.data.sources._files import class_files, read_pil, read_tif, sample_id
    from cmkd.data.sources.eurosat import load_eurosat_ms, load_eurosat_rgb

    root_path = resolve_data_root(root)
    out: dict[str, Any] = {}
    for key, ext, read, load in (
        ("ms", (".tif", ".tiff"), read_tif, lambda: load_eurosat_ms(root_path)),
        ("rgb", (".jpg", ".jpeg"), read_pil, lambda: load_eurosat_rgb(root_path, "paired")),
    ):
        samples = load()  # fills the cache if it is cold
        folder = root_path / "eurosat" / key
        by_id = {sample_id(c, p): p for c, group in class_files(folder, ext).items() for p in group}
        n = min(len(samples), limit or len(samples))
        paths = [by_id[i] for i in samples.ids[:n]]
        cached = ModalityDataset(samples.subset(np.arange(n)), key)
        decoding = _DecodingDataset(paths, read, samples.y[:n], key)
        rates: dict[str, list[float]] = {"cache": [], "decode": [], "cache_file": []}
        _epoch_rate(DataLoader(cached, batch_size))  # warm-up, untimed
        for _ in range(repeats):
            rates["cache"].append(_epoch_rate(DataLoader(cached, batch_size, shuffle=True)))
            rates["decode"].append(_epoch_rate(DataLoader(decoding, batch_size, shuffle=True)))
            start = time.perf_counter()
            whole = len(load())
            rates["cache_file"].append(whole / (time.perf_counter() - start))
        med = {k: median(v) for k, v in rates.items()}
        out[key] = {
            "samples": n,
            "samples_per_s": rates,
            "median_samples_per_s": med,
            "cache_over_decode": med["cache"] / med["decode"],
        }
    return out
