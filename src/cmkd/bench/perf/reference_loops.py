"""cmkd's distillation epoch against a plain per-batch loop written the way the reference codes
are (issue 19), in the same process, on the same data, networks and loss terms.

The reference loop does what the SemBridge authors' training loop and mdistiller's do every
step: the frozen teacher's forward pass on the batch's teacher samples (no cache), then the
student's forward, the loss, backward and an Adam step, in float32, with a DataLoader over
the student's training set. The two codes differ in one costly way, and each loop keeps it:
- mdistiller runs the teacher under `torch.no_grad()`.
- The SemBridge authors' `train.py` (weirl-922/ACKD at 21a20f8) calls `self.teacher(msi_img)`
  with autograd on: the teacher is put in eval mode but its parameters keep `requires_grad`,
  and its logits and features enter the KD and SKA losses undetached, so every
  `loss.backward()` runs back through the whole teacher (its gradients are computed and never
  used: the teacher is not in the optimiser). cmkd's terms detach the teacher's outputs, so
  the reference joins them to its loss with weight 0: the same backward pass, and the student's
  gradients unchanged. The authors' loop also computes SKA on every step.
cmkd runs each method as it ships (SemBridge's SKA on one step in k, `overhead.SHIPPED_SKA`,
as configs/eurosat_asym/sembridge_*.yaml; benchmarks/ska-every.md for its accuracy) through its
Trainer with its defaults (teacher outputs cached once per run; the run's precision, layout,
weight-gradient kernels and fused Adam step, as cmkd's fit applies them:
`training.use_fast_paths`, `run.fused_optimizer`; the training
split standardised once, as cmkd's fit serves it on a CPU, in bf16 where the run is and that
changes no bit: `served.standardized_once`). Both use
cmkd's own terms, so SKA's arithmetic is the same on both sides.

Scenario (the issue's): RGB teacher -> MS student on the 221 EuroSAT MS training patches,
matched (here class-random, fixed) pairs, batch 64, one thread; a small CNN, resnet18, and
resnet34 (the issue's pair and the paper's R/R); SemBridge = 0.3 CE + 0.4 KD
(T 3, no T^2) + 0.003 SKA (dim 256); plain KD = 0.5 CE + 0.5 KD (T 4). Both loops keep the
data in memory (the authors' decode every image from disk each epoch). Per-epoch wall time,
mean over the epochs after the first (the cache is filled before the first epoch and its
one-off cost is reported on its own; as many epochs as hold whole cycles of SKA's every-k
steps, `timing.timed_epochs`), median over interleaved repeats; once on the machine as found and
once with busy-looping processes added (other users' load). Two floors say what cmkd could
reach: the student's own step in the reference loop (no teacher and no term), as the
reference codes run it (fp32) and at cmkd's defaults.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from statistics import fmean, median
from typing import Any

import torch
import torch.nn.functional as F

from cmkd.bench.perf.overhead import SHIPPED_SKA
from cmkd.bench.perf.tables_distill import FLOOR_AT_DEFAULTS_KEY, FLOOR_FP32_KEY
from cmkd.bench.perf.timing import EpochClock, busy_processes, load, timed_epochs


def _sembridge(ska: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "kd", "weight": 0.4, "params": {"temperature": 3.0, "scale_by_t2": False}},
        {"name": "ska", "weight": 0.003, "params": ska},
    ]


CHANNELS_LAST, MATMUL_WEIGHT_GRAD, FUSED = "channels-last", "matmul-weight-grad", "fused-adam"
"""How a variant names cmkd's fast paths (after its precision); FUSED: `run.fused_optimizer`."""
PLAIN_KD = [{"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}]
ALONE = "student alone"
"""The reference loop's variant without teacher or term: the student's own fp32 step."""
ALONE_AT_DEFAULTS = "student alone at cmkd's defaults"
"""The same loop on the student readied as cmkd's defaults ready it (layout, weight-gradient
kernels, bf16 autocast where the precision is bf16-mixed, the training split standardised
once): about the epoch cmkd's would take with no teacher and no term, whatever cmkd does about
the teacher."""


@dataclass(frozen=True)
class Method:
    """One method on both sides: cmkd's terms as shipped, the reference loop's terms, and
    whether the reference code runs backward through the teacher."""

    ce_weight: float
    cmkd_terms: list[dict[str, Any]]
    reference_terms: list[dict[str, Any]]
    teacher_backward: bool


METHODS = {
    "SemBridge (KD + SKA)": Method(0.3, _sembridge(SHIPPED_SKA), _sembridge({"dim": 256}), True),
    "plain KD": Method(0.5, PLAIN_KD, PLAIN_KD, False),
}


def _setup(backbone: str, seed: int, batch_size: int, method: str, side: str):
    """A fresh DistillModule (student, terms, teacher) and its data, as cmkd builds them, with
    the terms of `side` ('cmkd' or 'reference')."""
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
    spec = METHODS[method]
    task = DistillModule.for_data(
        student,
        teacher,
        bank,
        terms=spec.cmkd_terms if side == "cmkd" else spec.reference_terms,
        pairing=FixedPairing(table),
        model=backbone,
        ce_weight=spec.ce_weight,
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


def reference_epochs(
    task, data, table: torch.Tensor, epochs: int, teacher_backward: bool, alone: bool = False,
    bf16: bool = False, fused: bool = False,
) -> list[float]:  # fmt: skip
    """The reference loop on `task`'s own networks and terms: teacher forward every step (with
    autograd and a backward through it where `teacher_backward`), fp32, Adam; returns each
    epoch's wall seconds. `alone`: the student's step by itself (cross-entropy only, no teacher
    and no term, on the batches `data` serves: raw, or standardised once inside
    `standardized_once`), the floor no teacher cache can go below in this loop; `bf16`: that
    step's forward and loss in bf16 autocast, as Lightning's bf16-mixed runs them; `fused`:
    Adam's fused kernel, as `run.fused_optimizer` gives it (the reference codes use torch's
    default loop)."""
    student, teacher = task.model, task.teacher
    terms, weights = task.terms, task.weights
    params = [p for p in task.parameters() if p.requires_grad]  # the teacher's are not among them
    optimiser = torch.optim.Adam(params, lr=1e-3, fused=fused or None)
    teacher.requires_grad_(teacher_backward)
    loader = data.train_dataloader()  # shuffled per epoch, as the reference codes' loaders
    bank = task.teacher_inputs
    student.train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            if alone:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = task.training_output(batch).logits
                    loss = F.cross_entropy(logits, batch["label"])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                continue
            with torch.set_grad_enabled(teacher_backward):
                t_out = teacher(bank[table[batch["index"]]])
            s_out = student(batch[data.modality])
            loss = task.hparams.ce_weight * F.cross_entropy(s_out.logits, batch["label"])
            if teacher_backward:  # weight 0: the authors' backward pass, not their gradients
                loss = loss + 0.0 * sum(t.sum() for t in _outputs(t_out))
            for name, term in terms.items():
                value = term(s_out, t_out, batch)
                value = sum(value.values()) if isinstance(value, dict) else value
                loss = loss + weights[name] * value
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        times.append(time.perf_counter() - start)
    return times


def _outputs(out) -> list[torch.Tensor]:
    """The tensors a ModelOutput holds (the authors' losses read all three)."""
    return [t for t in (out.logits, out.embedding, out.feature_map) if t is not None]


def cmkd_epochs(task, data, epochs: int, variant: str) -> tuple[list[float], float]:
    """cmkd's Trainer on the same task at `variant` (a Lightning precision, then the names of
    the fast paths used, as `default_variant` writes them): each epoch's wall seconds, and the
    one-off seconds of filling the teacher cache."""
    import lightning as L

    from cmkd.served import standardized_once

    precision = ready(task, variant)
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
    with standardized_once(task, data, "cpu", precision=precision):  # as cmkd's fit does
        trainer.fit(task, datamodule=data)
    return timer.epoch_seconds, task.teacher_seconds


def ready(task, variant: str) -> str:
    """`task` readied at `variant` (a Lightning precision, then the names of the fast paths
    used, as `default_variant` writes them) as cmkd's fit readies it; returns the precision."""
    from cmkd.config import RunConfig
    from cmkd.training import use_fast_paths

    precision, *paths = variant.split(" ")
    task.fused_optimizer = FUSED in paths
    run = RunConfig(
        precision=precision,
        channels_last=CHANNELS_LAST in paths,
        matmul_weight_grad=MATMUL_WEIGHT_GRAD in paths,
    )
    use_fast_paths(task, run)
    return precision


def default_variant(task) -> str:
    """What cmkd's defaults (RunConfig) run `task` at here: its precision, then the
    fast paths they choose (CHANNELS_LAST, MATMUL_WEIGHT_GRAD, FUSED), as cmkd's fit resolves
    them."""
    from cmkd.config import RunConfig
    from cmkd.optim import fused_step
    from cmkd.training import fast_paths

    defaults = RunConfig(accelerator="cpu")
    precision, channels_last, matmul_weight_grad = fast_paths(task, defaults)
    trainable = [p for p in task.parameters() if p.requires_grad]
    fused = bool(fused_step(defaults.fused_optimizer, trainable))
    paths = [CHANNELS_LAST] * channels_last + [MATMUL_WEIGHT_GRAD] * matmul_weight_grad
    paths += [FUSED] * fused
    return " ".join([precision, *paths])


def _compare(
    backbones: tuple[str, ...], epochs: int, repeats: int, precisions: tuple[str, ...],
    seed: int, batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """Per backbone and method: the reference loop's epoch seconds over cmkd's at each
    precision and at cmkd's defaults, medians over interleaved repeats."""
    from cmkd.served import standardized_once

    rows: dict[str, Any] = {}
    for backbone in backbones:
        for method in METHODS:
            default = default_variant(_setup(backbone, seed, batch_size, method, "cmkd")[0])
            measured = list(dict.fromkeys([default, *precisions]))
            # The floors are the same for every method: timed once per backbone, with plain KD.
            floors = [ALONE, ALONE_AT_DEFAULTS] if method == "plain KD" else []
            loops_here = ["reference", *floors]
            seconds: dict[str, list[float]] = {"reference": []}
            cache: list[float] = []
            for r in range(repeats):
                variants = [*loops_here, *measured]
                for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                    side = "cmkd" if variant in measured else "reference"
                    task, data, table = _setup(backbone, seed, batch_size, method, side)
                    if variant == ALONE_AT_DEFAULTS:
                        precision = ready(task, default)
                        bf16, fused = precision == "bf16-mixed", FUSED in default.split(" ")
                        with standardized_once(task, data, "cpu", precision=precision):
                            times = reference_epochs(task, data, table, epochs, False, True,
                                                     bf16, fused)  # fmt: skip
                    elif variant in loops_here:
                        backward = METHODS[method].teacher_backward
                        times = reference_epochs(task, data, table, epochs, backward,
                                                 alone=variant == ALONE)  # fmt: skip
                    else:
                        times, fill = cmkd_epochs(task, data, epochs, variant)
                        cache.append(fill)
                    seconds.setdefault(variant, []).append(fmean(times[1:]))
            ref = median(seconds["reference"])
            rows[f"{backbone} {method}"] = {
                "backbone": backbone,
                "method": method,
                "terms": asdict(METHODS[method]),
                "default_variant": default,
                "reference_epoch_s": ref,
                "cmkd_epoch_s": {p: median(seconds[p]) for p in measured},
                "speedup": {p: ref / median(seconds[p]) for p in measured},
                "cache_fill_s": median(cache) if cache else None,
                **{
                    key: median(seconds[floor]) if floor in seconds else None
                    for key, floor in (
                        (FLOOR_FP32_KEY, ALONE),
                        (FLOOR_AT_DEFAULTS_KEY, ALONE_AT_DEFAULTS),
                    )
                },
                "spread": {k: [min(v), max(v)] for k, v in seconds.items()},
            }
    return rows


def loops(
    backbones: tuple[str, ...] = ("small_cnn", "resnet18", "resnet34"),
    epochs: int = 4,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("32-true",),
    seed: int = 0,
    batch_size: int = 64,
    busy: int | None = None,
) -> dict[str, Any]:
    """Per backbone and method: the reference loop's epoch seconds over cmkd's, for cmkd at its
    defaults (precision and layout as cmkd picks them for that network here) and at each of
    `precisions` (ratios > 1: cmkd is faster), per run the mean epoch after the first (at least
    `epochs` epochs, `timed_epochs`), medians over interleaved repeats; on the machine
    as found, then with `busy` busy-looping processes added (default: one per core; 0: none)."""
    from cmkd.precision import resolve_precision

    auto = resolve_precision("auto", "cpu")
    busy = (os.cpu_count() or 1) if busy is None else busy
    samples = len(_setup(backbones[0], seed, batch_size, "plain KD", "cmkd")[1].sets["train"].y)
    epochs = timed_epochs(epochs, samples, batch_size, SHIPPED_SKA["every"], untimed=1)
    out: dict[str, Any] = {
        "epochs": epochs, "repeats": repeats, "batch_size": batch_size, "epoch_statistic": "mean",
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
