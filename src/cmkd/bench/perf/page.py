"""The page of `cmkd bench perf`, rendered from its store (the raw report, the .json beside
the page): the machine, the issues' aims with their verdicts, then every section in `SECTIONS`
order, each with a heading, what it compares with what and the aim it serves, the load it ran
under, and its tables. Sections missing from the store are named, not rendered.

The store may carry `bf16_accuracy` (taken from a grid by `cmkd bench perf --accuracy_grid`,
cmkd.bench.perf.accuracy): {"source": "<grid page>", "seeds": [...], "fp32": [...], "bf16":
[...] (test accuracies, fractions, paired by seed), "models", "pairs", "margin_points" (both
optional)}; it is shown in the `bf16_accuracy` section and judged among the aims.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmkd.bench.perf.aims import aims_lines
from cmkd.bench.perf.markdown import num
from cmkd.bench.perf.tables_distill import loops_lines, overhead_lines, ska_lines
from cmkd.bench.perf.tables_parts import (
    coral_lines,
    data_lines,
    ddp_lines,
    dynm_lines,
    optimizer_lines,
    weight_grad_lines,
)
from cmkd.bench.perf.tables_runloop import (
    bf16_accuracy_lines,
    checkpoints_lines,
    help_lines,
    precision_lines,
    runloop_lines,
    ska_every_lines,
    threads_lines,
)

Body = Callable[[dict[str, Any], dict[str, Any]], list[str]]
"""A section's tables: (its entry in the store, the whole store) -> Markdown lines."""

SECTIONS: dict[str, tuple[str, str, Body]] = {
    "help": (
        "Start-up: `cmkd --help`",
        "The time to the first answer: `cmkd --help` and `cmkd train --help` as fresh "
        "processes, beside a bare Python start-up and `import torch`. Aim (issue #16): under "
        "2 s each.",
        lambda e, r: help_lines(e),
    ),
    "runloop": (
        "A tiny fit: cmkd against a plain PyTorch loop",
        "A 1,000-step full-batch fit of a linear model through cmkd's run layer (with its "
        "defaults and with other validation and checkpoint settings) against the same fit as a "
        "plain PyTorch loop, in one process; then `cmkd train` against a plain PyTorch script, "
        "each a fresh process. Aim (issue #16): cmkd within 3x the plain loop, start-up "
        "included.",
        lambda e, r: runloop_lines(e),
    ),
    "loops": (
        "A distillation epoch: cmkd against the reference codes' loop",
        "cmkd's epoch (SemBridge = KD + SKA, and plain KD) against a per-batch loop written "
        "the way the SemBridge authors' and mdistiller's code are (the teacher's forward every "
        "step, fp32), at a small CNN, resnet18 and resnet34 (the issue's and the paper's "
        "pair), cmkd at its defaults and at fp32. Aim (issue #19): "
        "with cmkd's defaults, a SemBridge epoch at least 3x faster than the authors' loop and "
        "a plain-KD epoch at least 1.3x faster than mdistiller's, on the machine as found and "
        "under load.",
        lambda e, r: loops_lines(e),
    ),
    "overhead": (
        "Distillation overhead per epoch (small CNN)",
        "Each method's epoch through cmkd's trainer against the no-KD student's, and "
        "SemBridge (KD + SKA + DynM; the section says how often SKA ran) against plain KD. "
        "Aims: KD with the teacher cache within "
        "1.10x no KD (issue #8); SemBridge within 1.10x plain KD at the small CNN (issue #19).",
        lambda e, r: overhead_lines(e),
    ),
    "overhead_large": (
        "Distillation overhead per epoch (larger backbone)",
        "The same with a larger student and teacher, where SKA's nearly fixed cost is a "
        "smaller share of the step. Aim (issue #19): SemBridge within 1.05x plain KD at "
        "resnet18.",
        lambda e, r: overhead_lines(e),
    ),
    "ska": (
        "SemBridge's own overhead: a training step, KD + SKA against KD",
        "Where SemBridge's extra time comes from: a KD + SKA training step against the KD "
        "step at a small CNN and at resnet18, SKA by itself, its FLOPs, the matrix products "
        "no exact implementation can avoid, SKA on every k-th step, the epoch ratio through "
        "the trainer. It explains the SemBridge / KD aims (issue #19: <= 1.10x at the small "
        "CNN, <= 1.05x at resnet18).",
        lambda e, r: ska_lines(e),
    ),
    "precision": (
        "Precision and memory layout",
        "A distillation step and epoch in fp32 against bf16 (autocast, what `precision: auto` "
        "picks on CPUs with AVX512-BF16 or AMX) and against channels-last (issue #19). No aim "
        "of its own: it says what bf16 buys where it is the default.",
        lambda e, r: precision_lines(e),
    ),
    "weight_grad": (
        "Convolution weight gradients: oneDNN against one matrix product",
        "Why `run.matmul_weight_grad: auto` is on for CPUs, and where its rule takes the "
        "product: each convolution of the resnets, backward pass with torch's kernel and with "
        "the weight gradient as one matrix product, in fp32 and bf16 (issue #19). No aim of its "
        "own: the precision section and the distillation epoch include it.",
        lambda e, r: weight_grad_lines(e),
    ),
    "optimizer": (
        "The optimiser step: torch's loop against its fused kernel",
        "Why `run.fused_optimizer: auto` is on: Adam's step over resnet18's parameters "
        "with torch's default loop and with its fused kernel (issue #19). No aim of its own: "
        "the distillation epoch includes it.",
        lambda e, r: optimizer_lines(e),
    ),
    "bf16_accuracy": (
        "Accuracy: bf16 against fp32",
        "The test accuracy of the same runs at bf16-mixed and at 32-true, paired by seed, "
        "from a grid (`--accuracy_grid`; `cmkd bench perf` does not train to convergence). "
        "Aim (issue #19): bf16 costs no accuracy (the paired interval lies within +-1 point).",
        lambda e, r: bf16_accuracy_lines(e),
    ),
    "ska_every_accuracy": (
        "Accuracy: SKA on every k-th step against every step",
        "SemBridge with SKA computed on every k-th training step only (times k there) against "
        "SKA on every step, paired by seed, from a grid (`--every_grid`; `cmkd bench perf` "
        "does not train to convergence). Aim (issue #19): the cheaper schedule keeps "
        "SemBridge's accuracy (the paired interval lies within +-1 point).",
        lambda e, r: ska_every_lines(e),
    ),
    "threads": (
        "Threads on shared cores",
        "A training step with 1, 2 and `auto` threads, with and without busy processes "
        "beside it, under OpenMP's default and passive waiting: the measurement behind cmkd's "
        "defaults (`run.threads: auto`, passive waiting set by `cmkd`; issues #16, #19). No aim "
        "of its own.",
        lambda e, r: threads_lines(e),
    ),
    "checkpoints": (
        "Checkpoint costs",
        "The checkpoint time per epoch on the training thread as cmkd writes checkpoints now "
        "(and with async checkpoints) against what cmkd 0.1 wrote, with the file sizes "
        "(issue #19). No aim of its own.",
        lambda e, r: checkpoints_lines(e),
    ),
    "dynm": (
        "DynM matching: chunked matrix KL against per-sample loops",
        "DynM's re-match through chunked matrix KL against the authors' per-sample loop and "
        "a tight one, and at 60,000 x 70,000 with its memory. Aims (issue #8): >= 50x the "
        "authors' loop; 60,000 x 70,000 x 10 within 30 s.",
        lambda e, r: dynm_lines(e),
    ),
    "coral": (
        "CORAL: Gram (b x b) against direct covariance (d x d)",
        "CORAL's scatter gap through b x b Gram matrices against d x d covariances: time, "
        "memory, agreement (issue #8). No aim of its own.",
        lambda e, r: coral_lines(e),
    ),
    "data": (
        "Data: decoded cache against decoding the files every epoch",
        "Samples/s from the decoded cache against decoding the image files every epoch, and "
        "reading the cache file. Aim (issue #8): the loader faster than the training step.",
        lambda e, r: data_lines(e, r.get("overhead")),
    ),
    "ddp": (
        "Scale out: 2 DDP processes against 1",
        "The accuracy of KD in two DDP processes against one process, same seeds and global "
        "batch (issue #8): the paired difference should hold 0. No speed aim on a CPU.",
        lambda e, r: ddp_lines(e),
    ),
}
"""Section key in the store -> (heading, what it compares and its aim, its tables), in page
order (`cmkd bench perf` runs them in the order its --sections gives)."""


def _ran(ran: dict[str, Any] | None) -> list[str]:
    if not ran:
        return []
    start, end = ran["load"]
    kept = (
        f" Measured by an earlier run: `{ran['command']}` ({ran['finished']})."
        if ran.get("command")
        else ""
    )
    return [
        f"*Ran {num(ran['minutes'], 1)} min; load average (1 min) {num(start)} at its start, "
        f"{num(end)} at its end.{kept}*",
        "",
    ]


def render(report: dict[str, Any], page: Path | None = None) -> str:
    """The page of a perf store (the report as `perf` wrote it)."""
    m = report["machine"]
    bf16 = ", ".join(m.get("bf16_flags", [])) or "none"
    lines = [
        "# Performance (issues #8, #16, #19)",
        "",
        f"Produced by `{report['command']}` ({report['finished']}, {report['minutes']:.1f} min).",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}; bf16 flags: {bf16}), torch {m['torch']} "
        f"({m['torch_threads']} intra-op thread(s)), Python {m['python']}, {m['platform']}. "
        f"Load average at start {m['load_average']}, at end {report['load_average_end']}. "
        "The machine may be shared with other jobs, so absolute times are noisy: every ratio "
        "compares runs interleaved in one process (or its children), medians are taken, and "
        "each section gives the load it ran under.",
        "",
    ]
    missing = [key for key in SECTIONS if not report.get(key)]
    if missing:
        lines += [f"Sections not in this store: {', '.join(missing)}.", ""]
    lines += aims_lines(report)
    for key, (title, intro, body) in SECTIONS.items():
        entry = report.get(key)
        if not entry:
            continue
        lines += [f"## {title}", "", intro, "", *_ran(report.get("ran", {}).get(key))]
        lines += body(entry, report)
    lines += ["Raw numbers: the .json beside this page.", ""]
    return "\n".join(lines)
