"""SemBridge's own overhead at small scale (issue #19): a training step of plain KD against the
same step with SKA added, as ratios timed in one process.

Every arm trains its own copy of one RGB student (same initial weights) with Adam on CE + KD
(the SemBridge grid's weights: 0.3 CE + 0.4 KD at T = 3 without T^2); an SKA arm adds SKA at
the paper's weight (0.3 x 0.01), its parameters in the optimiser. A scenario runs its steps in
fp32, or at cmkd's defaults as its fit runs them here (bf16 autocast, channels-last and the
fused Adam step where they apply), as the trainer's epochs run. The teacher (the same backbone
on 13-band MS) runs once: its outputs are fixed tensors, as cmkd's teacher cache gives them.
Steps alternate between the arms (KD, KD + SKA, KD, ...) so all see the same machine load. Per
repeat each arm's mean step over `steps` consecutive steps (a multiple of every SKA
`every`, so computed and skipped steps count in their proportion) and its ratio to KD's; over
repeats the median ratio and its range. Each step is timed twice: wall clock, and the CPU time
of the calling thread (`time.thread_time`; with one intra-op thread the whole step runs
there), which a shared machine's other jobs disturb much less. The load average is recorded.

`attention_products` times the matrix products that SKA's attention cannot avoid (the q, k maps
forward and backward on both sides): the floor under any exact implementation.
`compile_cost` measures torch.compile of the SKA module; `epoch_overhead` the epoch time
through cmkd's own trainer (`cmkd.recipes.distill_student`); `measure` runs them all (the `ska`
section of `cmkd bench perf`).
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cmkd.bench.perf.overhead import SHIPPED_SKA
from cmkd.bench.perf.timing import EpochClock, cpu_ms, load, ratios, timed_epochs

GRID = {"dim": 256}
"""SKA's options in the SemBridge grid (`cmkd.bench.grid.sembridge_plugin`)."""

EVERY = {**GRID, "every": SHIPPED_SKA["every"]}
"""The grid's setting with SKA on every k-th step only, as cmkd's SemBridge configs run it
(the approximation checked for accuracy)."""
EVERY_LABEL = f"grid, every {EVERY['every']}"

SCENARIOS: tuple[tuple[str, int, dict[str, dict[str, Any]], bool], ...] = (
    ("small_cnn", 32, {"grid": GRID, "default": {}, EVERY_LABEL: EVERY}, False),
    ("small_cnn", 64, {"grid": GRID, "default": {}, EVERY_LABEL: EVERY}, False),
    ("small_cnn", 32, {"grid": GRID, EVERY_LABEL: EVERY}, True),
    ("small_cnn", 64, {"grid": GRID, EVERY_LABEL: EVERY}, True),
    ("resnet18", 32, {"grid": GRID}, True),
)
"""(backbone, batch, {label: SKA options}, at cmkd's defaults): the SKA arms timed against KD
in one loop, each step in fp32 or as cmkd's fit runs it on this machine (`_stepper`)."""

CE_WEIGHT, KD_WEIGHT, SKA_WEIGHT, TEMPERATURE = 0.3, 0.4, 0.3 * 0.01, 3.0


def _networks(backbone: str, batch: int, seed: int):
    """Student (RGB), fixed teacher outputs (MS, no grad), one input batch and labels."""
    from cmkd.models.model import build_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = build_model({"backbone": backbone, "in_chans": 3, "num_classes": 10})
    teacher = build_model({"backbone": backbone, "in_chans": 13, "num_classes": 10}).eval()
    x = torch.randn(batch, 3, 64, 64, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    with torch.no_grad():
        cached = teacher(torch.randn(batch, 13, 64, 64, generator=g))
    return student, teacher, cached, x, y


def _ska(student, teacher, options: dict[str, Any] | Callable, seed: int):
    """The SKA term from its options, or from `options(student, teacher)` when it is a
    callable (another implementation to time against, built on the same seed)."""
    from cmkd.losses import build_term

    torch.manual_seed(seed)
    if callable(options):
        return options(student.network, teacher.network)
    return build_term("ska", student.network, teacher.network, **options)


def _stepper(
    student, ska, cached, x, y, at_defaults: bool = False
) -> tuple[Callable[[], tuple[float, float]], str]:
    """One training step: forward, CE + KD (+ SKA), backward, Adam; returns (wall s, CPU s).
    In fp32 with torch's Adam loop, or `at_defaults` as cmkd's fit runs it here (precision,
    layout, weight-gradient kernels and Adam step as `reference_loops.ready` readies a
    network). Also returns what it runs at (`reference_loops.default_variant`'s words)."""
    from cmkd.bench.perf.reference_loops import CHANNELS_LAST, FUSED, default_variant, ready

    variant = default_variant(student) if at_defaults else "32-true"
    precision = ready(student, variant) if at_defaults else variant
    if CHANNELS_LAST in variant.split(" "):
        x = x.contiguous(memory_format=torch.channels_last)
    params = list(student.parameters()) + ([] if ska is None else list(ska.parameters()))
    fused = True if FUSED in variant.split(" ") else None
    optimiser = torch.optim.Adam(params, lr=1e-3, fused=fused)
    soft_teacher = F.softmax(cached.logits / TEMPERATURE, dim=1)
    bf16 = precision.startswith("bf16")

    def step() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = student(x)
            loss = CE_WEIGHT * F.cross_entropy(out.logits, y) + KD_WEIGHT * F.kl_div(
                F.log_softmax(out.logits / TEMPERATURE, dim=1),
                soft_teacher,
                reduction="batchmean",
            )
            if ska is not None:
                loss = loss + SKA_WEIGHT * sum(ska(out, cached, {}).values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return time.perf_counter() - wall, time.thread_time() - cpu

    return step, variant


def step_overhead(
    backbone: str = "small_cnn",
    batch: int = 32,
    arms: dict[str, dict[str, Any]] | None = None,
    repeats: int = 15,
    steps: int = 12,
    seed: int = 0,
    at_defaults: bool = False,
) -> dict[str, Any]:
    """Each SKA arm's step / the KD step (see the module docstring). arms: {label: SKA
    options, or a callable (student, teacher) -> term}, default the grid's setting;
    `at_defaults`: every step as cmkd's fit runs it here, else fp32 (`_stepper`)."""
    arms = arms if arms is not None else {"grid": GRID}
    student, teacher, cached, x, y = _networks(backbone, batch, seed)
    steppers = {}
    steppers["kd"], variant = _stepper(copy.deepcopy(student), None, cached, x, y, at_defaults)
    for label, options in arms.items():
        ska = _ska(student, teacher, options, seed)
        steppers[label], _ = _stepper(copy.deepcopy(student), ska, cached, x, y, at_defaults)
    for step in steppers.values():  # warm-up, untimed (a multiple of every `every`)
        for _ in range(steps):
            step()
    load_before = load()
    means: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in steppers}
    for _ in range(repeats):
        sums = {k: [0.0, 0.0] for k in steppers}
        for _ in range(steps):
            for name, step in steppers.items():
                wall, cpu = step()
                sums[name][0] += wall
                sums[name][1] += cpu
        for name, (wall, cpu) in sums.items():
            means[name]["wall"].append(wall / steps)
            means[name]["cpu"].append(cpu / steps)
    out: dict[str, Any] = {
        "backbone": backbone,
        "batch": batch,
        "precision": variant,
        "at_defaults": at_defaults,
        "feature_map": list(cached.feature_map.shape[1:]),
        "repeats": repeats,
        "steps": steps,
        "kd_step_ms": {c: 1000 * statistics.median(means["kd"][c]) for c in ("wall", "cpu")},
        "arms": {},
        "load_before": load_before,
        "load_after": load(),
    }
    for label, options in arms.items():
        out["arms"][label] = {
            "options": options if isinstance(options, dict) else {"term": str(options)},
            "step_ms": {c: 1000 * statistics.median(means[label][c]) for c in ("wall", "cpu")},
            "ratio": {c: ratios(means[label][c], means["kd"][c]) for c in ("wall", "cpu")},
        }
    return out


def flop_share(
    backbone: str = "small_cnn", batch: int = 32, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """FLOPs (torch.utils.flop_counter: matrix products and convolutions) of a KD step's
    forward + backward and those SKA adds: the machine-independent part of the ratio."""
    from torch.utils.flop_counter import FlopCounterMode

    student, teacher, cached, x, y = _networks(backbone, batch, 0)
    ska = _ska(student, teacher, dict(GRID if options is None else options), 0)
    counts = []
    for with_ska in (False, True):
        with FlopCounterMode(display=False) as counter:
            out = student(x)
            loss = F.cross_entropy(out.logits, y)
            if with_ska:
                loss = loss + sum(ska(out, cached, {}).values())
            loss.backward()
        counts.append(counter.get_total_flops())
    return {
        "backbone": backbone,
        "batch": batch,
        "options": dict(GRID if options is None else options),
        "kd_gflop": counts[0] / 1e9,
        "ska_gflop": (counts[1] - counts[0]) / 1e9,
        "student_params": sum(p.numel() for p in student.parameters()),
        "ska_params": sum(p.numel() for p in ska.parameters()),
    }


def ska_alone(
    backbone: str = "small_cnn",
    batch: int = 32,
    options: dict[str, Any] | None = None,
    steps: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """SKA's forward + backward by itself on the networks' feature maps and embeddings
    (student side requiring grad, teacher side fixed): median CPU ms over `steps`."""
    from cmkd.models.outputs import ModelOutput

    student, teacher, cached, x, _ = _networks(backbone, batch, seed)
    ska = _ska(student, teacher, dict(options or {}), seed)
    with torch.no_grad():
        out = student(x)
    s = ModelOutput(out.logits, out.embedding.requires_grad_(), out.feature_map.requires_grad_())
    ms = cpu_ms(lambda: sum(ska(s, cached, {}).values()).backward(), steps)
    return {"backbone": backbone, "batch": batch, "options": dict(options or {}), "cpu_ms": ms}


def attention_products(
    batch: int = 32, tokens: int = 16, width: int = 128, dim: int = 256, steps: int = 40
) -> dict[str, Any]:
    """CPU ms of the matrix products SKA's attention needs per step whatever the code around
    them, both sides, `width`-channel tokens (width < dim) folded into dim x dim q and k maps:
    forward the fold [W_q; W_k] P and the projection of the b N tokens; backward the maps'
    gradient, its unfolding through P and (student only) the tokens' gradient. `flop` counts
    them (2 per multiply-add)."""
    if width >= dim:
        raise ValueError(f"attention_products times folded maps: width {width} < dim {dim}")
    b_n = batch * tokens
    x = torch.randn(b_n, width).relu()
    w = torch.randn(2 * dim, dim) / dim**0.5
    p = torch.linalg.qr(torch.randn(dim, width))[0]
    g = torch.randn(b_n, 2 * dim)

    def products() -> None:
        for student_side in (True, False):
            folded = w @ p
            x @ folded.T
            (g.T @ x) @ p.T
            if student_side:
                g @ folded

    per_side = 2 * dim * (2 * dim * width + 2 * b_n * width)  # multiply-adds
    flop = 2 * (2 * per_side + b_n * width * 2 * dim)  # + the student's token gradient
    return {
        "batch": batch,
        "tokens": tokens,
        "width": width,
        "dim": dim,
        "cpu_ms": cpu_ms(products, steps),
        "flop": flop,
    }


def compile_cost(backbone: str = "small_cnn", batch: int = 32) -> dict[str, Any]:
    """Wall seconds of the first KD + SKA step with SKA (grid setting) under torch.compile
    (tracing and code generation), then the steady ratios to KD of eager and compiled SKA,
    interleaved (the compiled arm's warm-up holds its compilation for these shapes)."""
    from cmkd.losses import build_term

    student, teacher, cached, x, y = _networks(backbone, batch, 0)
    ska = torch.compile(_ska(student, teacher, GRID, 0))
    first = _stepper(copy.deepcopy(student), ska, cached, x, y)[0]()[0]

    def compiled(s, t):
        return torch.compile(build_term("ska", s, t, **GRID))

    steady = step_overhead(backbone, batch, {"eager": GRID, "compiled": compiled}, 5, 8)
    return {
        "first_step_s": first,
        "eager_ratio": steady["arms"]["eager"]["ratio"],
        "compiled_ratio": steady["arms"]["compiled"]["ratio"],
        "load": load(),
    }


def epoch_overhead(
    epochs: int = 4,
    repeats: int = 3,
    arms: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    output_dir: str = "runs/bench/perf-ska",
) -> dict[str, Any]:
    """Epoch time of KD + SKA / KD through `cmkd.recipes.distill_student` (the real
    trainer: data, Lightning, logging, validation), EuroSAT paired MS -> RGB, small_cnn on both
    sides, batch 32, the grid's KD weights and SKA weight, teacher cache on; runs interleaved
    over repeats, per run the mean over the epochs after the first (SKA's every-k steps in
    their proportion, over at least `epochs` epochs that hold whole cycles of them:
    `timed_epochs`), then the median over repeats."""
    from dataclasses import replace

    from cmkd import config as cfg
    from cmkd.data.datamodule import prepare_data
    from cmkd.recipes import distill_student, train_classifier

    arms = arms if arms is not None else {"grid": GRID}
    data = cfg.DataConfig(source="eurosat_paired", batch_size=32)
    model = cfg.ModelConfig(backbone="small_cnn")
    run = cfg.RunConfig(
        output_dir=output_dir, progress_bar=False, overwrite=True, accelerator="cpu"
    )
    prepared = prepare_data(data, seed)
    every = math.lcm(*(options.get("every", 1) for options in arms.values()))
    samples = len(prepared.rows("rgb", "train"))
    epochs = timed_epochs(epochs, samples, data.batch_size, every, untimed=1)
    teacher = train_classifier(
        data, model, cfg.OptimConfig(epochs=1), replace(run, name="teacher"), "ms", seed,
        prepared=prepared,
    )["checkpoint"]  # fmt: skip
    kd = cfg.TermConfig("kd", KD_WEIGHT, {"temperature": TEMPERATURE, "scale_by_t2": False})
    configs = {"kd": cfg.DistillConfig(teacher=teacher, ce_weight=CE_WEIGHT, terms=[kd])}
    for label, options in arms.items():
        ska = cfg.TermConfig("ska", SKA_WEIGHT, dict(options))
        configs[label] = replace(configs["kd"], terms=[kd, ska])
    epoch_s: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in configs}
    for r in range(repeats):
        names = list(configs)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            clock = EpochClock()
            distill_student(
                data, model, cfg.OptimConfig(epochs=epochs), replace(run, name=f"r{r}"),
                configs[name], "rgb", seed, callbacks=(clock,), prepared=prepared,
            )  # fmt: skip
            epoch_s[name]["wall"].append(statistics.fmean(clock.epoch_seconds[1:]))
            epoch_s[name]["cpu"].append(statistics.fmean(clock.epoch_cpu_seconds[1:]))
    return {
        "epochs": epochs,
        "epoch_statistic": "mean",
        "repeats": repeats,
        "epoch_s": {k: {c: statistics.median(v[c]) for c in v} for k, v in epoch_s.items()},
        "ratio": {
            label: {c: ratios(epoch_s[label][c], epoch_s["kd"][c]) for c in ("wall", "cpu")}
            for label in arms
        },
        "load": load(),
    }


def measure(
    repeats: int = 15,
    steps: int = 10,
    epochs: int = 8,
    epoch_repeats: int = 5,
    compile_too: bool = False,
    scenarios: tuple[tuple[str, int, dict[str, dict[str, Any]], bool], ...] = SCENARIOS,
    output_dir: str = "runs/bench/perf-ska",
) -> dict[str, Any]:
    """Every scenario's step ratios, SKA alone, FLOPs, the attention's product floor; the
    epoch ratios through the trainer (`epochs` x `epoch_repeats`; none with epochs 0) and with
    compile_too torch.compile's cost (minutes of code generation). One intra-op thread
    throughout (the CPU clock is the calling thread's), the caller's count restored after."""
    from cmkd.threads import training_threads

    exact = [
        (b, n, o)
        for b, n, arms, at_defaults in scenarios
        if not at_defaults
        for o in arms.values()
        if "every" not in o
    ]
    with training_threads(1) as threads:
        report: dict[str, Any] = {
            "torch": torch.__version__,
            "threads": threads,
            "cpus": os.cpu_count(),
            "steps": [
                step_overhead(b, n, arms, repeats, steps, at_defaults=d)
                for b, n, arms, d in scenarios
            ],
            "ska_alone": [ska_alone(b, n, o) for b, n, o in exact],
            "flops": [flop_share(b, n, o) for b, n, o in exact],
            "attention_products": [
                attention_products(b, dim=d) for b in (32, 64) for d in (256, 512)
            ],
        }
        if epochs:
            arms = {"grid": GRID, EVERY_LABEL: EVERY}
            report["epoch"] = epoch_overhead(epochs, epoch_repeats, arms, output_dir=output_dir)
        if compile_too:
            report["compile"] = compile_cost()
    return report
