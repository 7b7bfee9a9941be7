"""(e) Scale out: KD in one process against two DDP processes (gloo on the CPU), per seed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cmkd.config import DataConfig, ModelConfig, OptimConfig, RunConfig

DDP_CONFIG = "configs/eurosat_paired/losses/kd.yaml"


def ddp_accuracy(
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    epochs: int = 20,
    batch_size: int = 32,
    output_dir: str = "runs/bench/perf/ddp",
) -> dict[str, Any]:
    """KD (EuroSAT paired MS -> RGB, `DDP_CONFIG`) in one process against two DDP processes
    (gloo on the CPU), same seed and split, same global batch (two ranks of batch / 2), per
    seed; each run is `cmkd distill` in a fresh process, as a user launches it (Lightning
    starts the second rank). Returns each run's test accuracies and wall time."""
    from cmkd.recipes import train_classifier

    out: dict[str, Any] = {"config": DDP_CONFIG, "epochs": epochs, "batch_size": batch_size}
    runs: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 DDP processes": []}
    data = DataConfig(source="eurosat_paired", batch_size=batch_size)
    run = RunConfig(output_dir=output_dir, progress_bar=False, overwrite=True, accelerator="cpu")
    for seed in seeds:
        teacher = train_classifier(
            data, model=ModelConfig(backbone="small_cnn"), optim=OptimConfig(epochs=epochs),
            run=replace(run, name="teacher"), modality="ms", seed=seed,
        )  # fmt: skip
        for devices, label in ((1, "1 process"), (2, "2 DDP processes")):
            name = f"kd-{devices}proc"
            cmd = [
                sys.executable, "-m", "cmkd.cli", "distill", "--config", DDP_CONFIG,
                "--seed", str(seed), "--distill.teacher", teacher["checkpoint"],
                "--optim.epochs", str(epochs), "--data.batch_size", str(batch_size // devices),
                "--run.output_dir", output_dir, "--run.name", name, "--run.accelerator", "cpu",
                "--run.devices", str(devices), "--run.strategy", "ddp" if devices > 1 else "auto",
                "--run.progress_bar", "false", "--run.overwrite", "true",
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            found = sorted(Path(output_dir, name).glob(f"**/seed{seed}/results.json"))
            if not found:
                raise FileNotFoundError(f"no results.json for {name}, seed {seed}")
            r = json.loads(found[-1].read_text())
            runs[label].append(
                {
                    "seed": seed,
                    "best": r["best"]["test"]["acc"],
                    "last": r["last"]["test"]["acc"],
                    "wall_s": wall,
                }
            )
    out["runs"] = runs
    return out
