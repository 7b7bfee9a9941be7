"""The run loop and the command's start-up against plain PyTorch (issue #16), as ratios timed in
one process, variants interleaved over repeats (other work shares the CPU), medians with their
spread and the load average each repeat ran under:

- `fit_vs_plain`: a 1,000-step full-batch fit of a linear model on 200 real 50-d samples
  through `cmkd.recipes.train_classifier` (data preparation, Trainer, fit, test passes,
  results.json), per run-loop setting, against a plain PyTorch loop in the same process (same
  network, data, optimiser and steps); then the same fit as commands, `cmkd train` against a
  plain PyTorch script, each a fresh Python process (start-up and imports included);
- `help_times`: `cmkd --help` and `cmkd train --help` as fresh processes, beside a bare Python
  start-up and `import torch`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmkd.bench.perf.timing import EpochClock, load, quiet, ratios, spread, work_folder
from cmkd.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.threads import training_threads

CONSOLE = "import sys; from cmkd.cli import main; sys.exit(main())"
"""What the `cmkd` console script runs (pyproject's `cmkd = cmkd.cli:main`)."""

PLAIN = "plain PyTorch loop"
PLAIN_SCRIPT = "plain PyTorch script"
CMKD_TRAIN = "cmkd train"

_SCRIPT = """
import sys
import numpy as np, torch, torch.nn.functional as F
path, epochs, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with np.load(path) as d:
    x, y, tx, ty = (torch.from_numpy(d[k]) for k in ("x", "y", "test_x", "test_y"))
x, tx, y, ty = x.float(), tx.float(), y.long(), ty.long()
mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
torch.manual_seed(0)
net = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
for _ in range(epochs):
    loss = F.cross_entropy(net((x - mean) / std), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    print(float((net((tx - mean) / std).argmax(1) == ty).float().mean()))
"""
"""The plain script a user would write for the same fit: standardise, torch.nn.Linear, SGD
with momentum, full batch, then the test accuracy."""


def tiny_npz(where: Path, rows_per_class: int = 30, features: int = 50) -> Path:
    """Real rows of mfeat's Karhunen-Loeve view (the first `rows_per_class` of each digit, the
    first `features` coefficients) as an npz source: with 1/6 each for validation and test,
    200 training rows of 50 features."""
    from cmkd.data.root import resolve_data_root
    from cmkd.data.sources.mfeat import ROWS_PER_CLASS, load_mfeat

    kar = load_mfeat(resolve_data_root(), ["kar"])["kar"]
    rows = np.concatenate([np.arange(c * ROWS_PER_CLASS, c * ROWS_PER_CLASS + rows_per_class)
                           for c in range(10)])  # fmt: skip
    path = where / "mfeat-kar-tiny.npz"
    np.savez(path, x_kar=kar.x[rows, :features], y=kar.y[rows], ids=kar.ids[rows])
    return path


def _plain_fit(x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> float:
    """The baseline: the same network (cmkd's linear model with its input standardisation,
    seeded the same way), full-batch SGD with momentum 0.9 (cmkd's sgd), `epochs` steps."""
    from cmkd.data.normalize import Standardize
    from cmkd.models.model import build_model
    from cmkd.seeding import seeded

    start = time.perf_counter()
    spec = {"backbone": "linear", "in_chans": x.shape[1], "num_classes": int(y.max()) + 1}
    with seeded(0, "network"):
        net = build_model(spec, Standardize.fit(x))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        loss = F.cross_entropy(net(x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _cmkd_fit(data, optim, run: RunConfig) -> dict[str, Any]:
    from cmkd.recipes import train_classifier

    clock = EpochClock()
    start = time.perf_counter()
    result = train_classifier(
        data, ModelConfig(backbone="linear"), optim, run, "kar", 0, callbacks=(clock,)
    )
    return {
        "seconds": time.perf_counter() - start,
        "fit": result["fit_seconds"],
        "steps": sum(clock.step_seconds),
        "validation": clock.validation_seconds,
        "checkpoint": result["run"]["checkpoint_seconds"],
        "blocks": result["run"]["epochs_per_lightning_epoch"],
        "test_acc": result["best"]["test"]["acc"],
    }


def _timed_process(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of a fresh process, and its last line of output."""
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    took = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    return took, lines[-1] if lines else ""


def _commands(folder: Path, data: DataConfig, prepared, optim: OptimConfig) -> dict[str, list]:
    """The same fit as two commands: `cmkd train` (as its console script runs it) and the plain
    script on the rows cmkd's split gives for training and test."""
    train, test = prepared.rows("kar", "train"), prepared.rows("kar", "test")
    split = folder / "plain-split.npz"
    np.savez(split, x=train.x, y=train.y, test_x=test.x, test_y=test.y)
    plain = [sys.executable, "-c", _SCRIPT, str(split), str(optim.epochs), str(optim.lr)]
    cmkd = [
        sys.executable, "-c", CONSOLE, "train", "--modality", "kar", "--seed", "0",
        "--data.source", "npz", "--data.options", json.dumps(data.options),
        "--data.batch_size", str(data.batch_size),
        "--data.val_fraction", str(data.val_fraction),
        "--data.test_fraction", str(data.test_fraction),
        "--model.backbone", "linear", "--optim.optimizer", optim.optimizer,
        "--optim.lr", str(optim.lr), "--optim.epochs", str(optim.epochs),
        "--run.output_dir", str(folder / "commands"), "--run.name", "cmkd-train",
        "--run.accelerator", "cpu", "--run.progress_bar", "false", "--run.overwrite", "true",
    ]  # fmt: skip
    return {PLAIN_SCRIPT: plain, CMKD_TRAIN: cmkd}


def _summary(runs: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, Any]:
    base = [r["seconds"] for r in runs[baseline]]
    out: dict[str, Any] = {}
    for name, records in runs.items():
        seconds = [r["seconds"] for r in records]
        entry = {"seconds": spread(seconds), "ratio": ratios(seconds, base)}
        entry["load"] = [r["load"] for r in records]
        for part in ("fit", "steps", "validation", "checkpoint"):
            if part in records[0]:
                entry[part] = statistics.median(r[part] for r in records)
        if "blocks" in records[0]:
            entry["epochs_per_lightning_epoch"] = records[0]["blocks"]
        if "test_acc" in records[0]:
            entry["test_acc"] = records[0]["test_acc"]
        out[name] = entry
    return out


def fit_vs_plain(
    repeats: int = 5, epochs: int = 1000, output_dir: str | Path | None = None
) -> dict[str, Any]:
    """Wall time of `train_classifier` for a full-batch linear model, per run-loop setting,
    against the plain loop in the same process; then `cmkd train` against the plain script,
    each a fresh process. The variants' order rotates every repeat."""
    from cmkd.data.datamodule import prepare_data

    quiet()
    optim = OptimConfig(optimizer="sgd", lr=0.01, epochs=epochs)
    in_process: dict[str, list[dict[str, Any]]] = {PLAIN: []}
    commands: dict[str, list[dict[str, Any]]] = {PLAIN_SCRIPT: [], CMKD_TRAIN: []}
    with work_folder(output_dir) as folder:
        path = tiny_npz(folder)
        data = DataConfig(source="npz", options={"path": str(path)}, batch_size=200,
                          val_fraction=1 / 6, test_fraction=1 / 6)  # fmt: skip
        prepared = prepare_data(data, 0)
        train = prepared.rows("kar", "train")
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        base = replace(RunConfig(str(folder / "runs"), accelerator="cpu", progress_bar=False),
                       overwrite=True)  # fmt: skip
        variants = {
            "cmkd (defaults)": base,
            "cmkd, validate and checkpoint every 20 epochs": replace(base, val_every=20),
            "cmkd, validate and checkpoint every 50 epochs": replace(base, val_every=50),
            "cmkd, one Lightning epoch per data epoch": replace(base, epoch_blocks=False),
            "cmkd, validate and checkpoint every epoch (fsync)": replace(
                base, epoch_blocks=False, val_every=1, checkpoint_every=1, durable_checkpoints=True
            ),
        }
        names = list(variants)
        cmds = _commands(folder, data, prepared, optim)
        # Both sides with the threads a cmkd run takes here (run.threads: auto); the commands
        # each choose their own, as a user's would.
        with training_threads("auto") as threads:
            for rep in range(repeats):
                for name in [PLAIN, *names[rep % len(names) :], *names[: rep % len(names)]]:
                    at = load()
                    if name == PLAIN:
                        record = {"seconds": _plain_fit(x, y, epochs, optim.lr)}
                    else:
                        run = replace(variants[name], name=f"v{names.index(name)}")
                        record = _cmkd_fit(data, optim, run)
                    in_process.setdefault(name, []).append({**record, "load": at})
                for name in list(cmds) if rep % 2 == 0 else list(reversed(cmds)):
                    at = load()
                    took, last = _timed_process(cmds[name])
                    record = {"seconds": took, "load": at}
                    if name == PLAIN_SCRIPT:
                        record["test_acc"] = float(last)
                    else:
                        results = folder / "commands" / "cmkd-train" / "seed0" / "results.json"
                        record["test_acc"] = json.loads(results.read_text())["best"]["test"]["acc"]
                    commands[name].append(record)
    return {
        "epochs": epochs, "train_rows": len(train), "features": int(x.shape[1]),
        "repeats": repeats, "threads": threads,
        "in_process": _summary(in_process, PLAIN), "commands": _summary(commands, PLAIN_SCRIPT),
    }  # fmt: skip


def help_times(repeats: int = 5) -> dict[str, Any]:
    """Wall seconds of `cmkd --help` and `cmkd train --help`, each a fresh process as the
    console script runs it, beside a bare Python start-up and `import torch`, interleaved over
    repeats; and whether the help imported torch (it should not: it answers from the
    signatures alone)."""
    probe = (
        "import sys; from cmkd.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    probe += "print('torch' in sys.modules)"
    commands = {
        "python (bare start-up)": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "cmkd --help": [sys.executable, "-c", CONSOLE, "--help"],
        "cmkd train --help": [sys.executable, "-c", CONSOLE, "train", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    loads = []
    for _ in range(repeats):
        loads.append(load())
        for name, cmd in commands.items():
            times[name].append(_timed_process(cmd)[0])
    imports_torch = {
        name: _timed_process([sys.executable, "-c", probe, *cmd[3:]])[1] == "True"
        for name, cmd in commands.items()
        if name.startswith("cmkd")
    }
    return {
        "repeats": repeats,
        "seconds": {name: spread(v) for name, v in times.items()},
        "imports_torch": imports_torch,
        "load": loads,
    }
