"""cmkd's distillation epoch against a plain per-batch loop written the way the reference codes
are (issue 19), in the same process, on the same data, networks and loss terms.

The reference loop does what the SemBridge authors' training loop and mdistiller's do every
step: the frozen teacher's forward pass on the batch's teacher samples (no cache), then the
student's forward, the loss, backward and an Adam step, in float32, with a DataLoader over
the student's training set. cmkd runs the same method through its Trainer with its defaults
(teacher outputs cached once per run, the run's precision). Both use cmkd's own terms (so SKA's
arithmetic is the same on both sides): what differs is the loop, the cache and the precision.

Scenario (the issue's): RGB teacher -> MS student on the 221 EuroSAT MS training patches,
matched (here class-random, fixed) pairs, batch 64, one thread; SemBridge = 0.3 CE + 0.4 KD
(T 3, no T^2) + 0.003 SKA (dim 256); plain KD = 0.5 CE + 0.5 KD (T 4). Per-epoch wall time,
median over the epochs after the first (the cache is filled before the first epoch and its
one-off cost is reported on its own), interleaved repeats; once on the machine as found and
once with busy-looping processes added (other users' load).
"""

from __future__ import annotations

import os
import time
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F

from cmkd.bench.perf.timing import EpochClock, busy_processes, load

SEMBRIDGE = [
    {"name": "kd", "weight": 0.4, "params": {"temperature": 3.0, "scale_by_t2": False}},
    {"name": "ska", "weight": 0.003, "params": {"dim": 256}},
]
PLAIN_KD = [{"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}]
METHODS = {"SemBridge (KD + SKA)": (0.3, SEMBRIDGE), "plain KD": (0.5, PLAIN_KD)}


def _setup(backbone: str, seed: int, batch_size: int, method: str):
    """A fresh DistillModule (student, terms, teacher) and its data, as cmkd builds them."""
    from cmkd.data.datamodule import ModalityDataModule
    from cmkd.methods.distill import DistillModule
    from cmkd.pairing.strategies import ClassRandomPairing, FixedPairing

    student = ModalityDataModule.from_source("eurosat_ms", "ms", batch_size=batch_size, seed=seed)
    bank = ModalityDataModule.from_source(
        "eurosat_rgb", "rgb", options={"subset": "unpaired", "per_class_limit": 30}, seed=seed
    )
    s_train, t_train = student.sets["train"], bank.sets["train"]
    table = ClassRandomPairing(s_train.y.numpy(), t_train.y.numpy(), seed).table_for(0)
    teacher = _network(backbone, 3, seed + 1)
    ce_weight, terms = METHODS[method]
    task = DistillModule.for_data(
        student,
        teacher,
        bank,
        terms=terms,
        pairing=FixedPairing(table),
        model=backbone,
        ce_weight=ce_weight,
        seed=seed,
    )
    return task, student, torch.as_tensor(table)


def _network(backbone: str, in_chans: int, seed: int):
    from cmkd.data.normalize import Standardize
    from cmkd.models.backbones import create_network
    from cmkd.models.model import StandardizedNetwork
    from cmkd.seeding import seeded

    with seeded(seed, "perf-teacher"):
        net = create_network(backbone, in_chans=in_chans, num_classes=10)
    return StandardizedNetwork(net, Standardize.identity(in_chans)).eval()


def reference_epochs(task, data, table: torch.Tensor, epochs: int) -> list[float]:
    """The reference loop on `task`'s own networks and terms: teacher forward every step, fp32,
    Adam; returns each epoch's wall seconds."""
    student, teacher = task.model, task.teacher
    terms, weights = task.terms, task.weights
    params = [p for p in task.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=1e-3)
    loader = torch.utils.data.DataLoader(data.sets["train"], data.batch_size, shuffle=True)
    bank = task.teacher_inputs
    student.train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            with torch.no_grad():
                t_out = teacher(bank[table[batch["index"]]])
            s_out = student(batch[data.modality])
            loss = task.hparams.ce_weight * F.cross_entropy(s_out.logits, batch["label"])
            for name, term in terms.items():
                value = term(s_out, t_out, batch)
                value = sum(value.values()) if isinstance(value, dict) else value
                loss = loss + weights[name] * value
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        times.append(time.perf_counter() - start)
    return times


def cmkd_epochs(task, data, epochs: int, variant: str) -> tuple[list[float], float]:
    """cmkd's Trainer on the same task at `variant` (a Lightning precision, optionally followed
    by " channels-last"): each epoch's wall seconds, and the one-off seconds of filling the
    teacher cache."""
    import lightning as L

    precision, _, layout = variant.partition(" ")
    if layout:
        task.to(memory_format=torch.channels_last)  # as cmkd's fit does
    timer = EpochClock()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(task, datamodule=data)
    return timer.epoch_seconds, task.teacher_seconds


def default_variant(task) -> str:
    """What cmkd's defaults (RunConfig) run `task` at here: its precision, then " channels-last"
    where the layout is chosen (as cmkd's fit resolves them)."""
    from cmkd.config import RunConfig
    from cmkd.precision import resolve_channels_last, resolve_precision

    defaults = RunConfig()
    variant = resolve_precision(defaults.precision, "cpu", task)
    if resolve_channels_last(defaults.channels_last, task):
        variant += " channels-last"
    return variant


def _compare(
    backbones: tuple[str, ...], epochs: int, repeats: int, precisions: tuple[str, ...],
    seed: int, batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """Per backbone and method: the reference loop's epoch seconds over cmkd's at each
    precision and at cmkd's defaults, medians over interleaved repeats."""
    rows: dict[str, Any] = {}
    for backbone in backbones:
        for method in METHODS:
            default = default_variant(_setup(backbone, seed, batch_size, method)[0])
            measured = list(dict.fromkeys([default, *precisions]))
            seconds: dict[str, list[float]] = {"reference": []}
            cache: list[float] = []
            for r in range(repeats):
                variants = ["reference", *measured]
                for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                    task, data, table = _setup(backbone, seed, batch_size, method)
                    if variant == "reference":
                        times = reference_epochs(task, data, table, epochs)
                    else:
                        times, fill = cmkd_epochs(task, data, epochs, variant)
                        cache.append(fill)
                    seconds.setdefault(variant, []).append(median(times[1:]))
            ref = median(seconds["reference"])
            rows[f"{backbone} {method}"] = {
                "backbone": backbone,
                "method": method,
                "default_variant": default,
                "reference_epoch_s": ref,
                "cmkd_epoch_s": {p: median(seconds[p]) for p in measured},
                "speedup": {p: ref / median(seconds[p]) for p in measured},
                "cache_fill_s": median(cache) if cache else None,
                "spread": {k: [min(v), max(v)] for k, v in seconds.items()},
            }
    return rows


def loops(
    backbones: tuple[str, ...] = ("small_cnn", "resnet18"),
    epochs: int = 4,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("32-true",),
    seed: int = 0,
    batch_size: int = 64,
    busy: int | None = None,
) -> dict[str, Any]:
    """Per backbone and method: the reference loop's epoch seconds over cmkd's, for cmkd at its
    defaults (precision and layout as cmkd picks them for that network here) and at each of
    `precisions` (ratios > 1: cmkd is faster), medians over interleaved repeats; on the machine
    as found, then with `busy` busy-looping processes added (default: one per core; 0: none)."""
    from cmkd.precision import resolve_precision

    auto = resolve_precision("auto", "cpu")
    busy = (os.cpu_count() or 1) if busy is None else busy
    out: dict[str, Any] = {
        "epochs": epochs, "repeats": repeats, "batch_size": batch_size,
        "auto_precision": auto, "conditions": {},
    }  # fmt: skip
    for extra in (0, busy) if busy else (0,):
        with busy_processes(extra):
            before = load()
            rows = _compare(backbones, epochs, repeats, precisions, seed, batch_size)
            out["conditions"][f"+{extra} busy"] = {
                "busy": extra,
                "load": [before, load()],
                "rows": rows,
            }
    return out
