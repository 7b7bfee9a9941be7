"""SemBridge's own overhead at small scale (issue #19): one training step of plain KD against
the same step with SKA added, as a ratio timed in one process.

Both arms train their own copy of one RGB student (same initial weights) with Adam on CE + KD
(the SemBridge grid's weights: 0.3 CE + 0.4 KD at T = 3 without T^2), the SKA arm adding SKA
at the paper's weight (0.3 x 0.01) with its parameters in the optimiser. The teacher (the same
backbone on 13-band MS) runs once: its outputs are fixed tensors, as cmkd's teacher cache
gives them. Steps alternate between the arms (KD, KD + SKA, KD, ...) so both see the same
machine load; per repeat the median step of each arm and their ratio; over repeats the median
ratio and its range. The load average is recorded before and after, since the machine may be
shared: read absolute times against it, ratios less so.

`ska_alone` times SKA's forward + backward by itself, the part the ratio is about, and
`compile_cost` what `torch.compile` of the SKA module costs and saves.

Run `python -m cmkd.bench.perf_ska` for the markdown lines on stdout.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

SCENARIOS: tuple[tuple[str, int, dict[str, Any]], ...] = (
    ("small_cnn", 32, {"dim": 256}),
    ("small_cnn", 64, {"dim": 256}),
    ("small_cnn", 32, {}),
    ("small_cnn", 64, {}),
    ("resnet18", 32, {"dim": 256}),
)
"""(backbone, batch, SKA options): the grid's setting ({"dim": 256}) and SKA's defaults."""

CE_WEIGHT, KD_WEIGHT, SKA_WEIGHT, TEMPERATURE = 0.3, 0.4, 0.3 * 0.01, 3.0


def load_average() -> list[float]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [round(x, 2) for x in load]


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


def _ska(student, teacher, options: dict[str, Any], seed: int):
    from cmkd.losses import build_term

    torch.manual_seed(seed)
    return build_term("ska", student.network, teacher.network, **options)


def _stepper(student, ska, cached, x, y):
    """One training step: forward, CE + KD (+ SKA), backward, Adam; returns its seconds."""
    params = list(student.parameters()) + ([] if ska is None else list(ska.parameters()))
    optimiser = torch.optim.Adam(params, lr=1e-3)
    soft_teacher = F.softmax(cached.logits / TEMPERATURE, dim=1)

    def step() -> float:
        start = time.perf_counter()
        out = student(x)
        loss = CE_WEIGHT * F.cross_entropy(out.logits, y) + KD_WEIGHT * F.kl_div(
            F.log_softmax(out.logits / TEMPERATURE, dim=1), soft_teacher, reduction="batchmean"
        )
        if ska is not None:
            loss = loss + SKA_WEIGHT * sum(ska(out, cached, {}).values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start

    return step


def step_overhead(
    backbone: str = "small_cnn",
    batch: int = 32,
    options: dict[str, Any] | None = None,
    repeats: int = 5,
    steps: int = 10,
    seed: int = 0,
    compile_ska: bool = False,
) -> dict[str, Any]:
    """KD + SKA step / KD step (see the module docstring). compile_ska: SKA through
    torch.compile (its first, compiling step is left out here; see compile_cost)."""
    options = dict(options or {})
    student, teacher, cached, x, y = _networks(backbone, batch, seed)
    ska = _ska(student, teacher, options, seed)
    if compile_ska:
        ska = torch.compile(ska)
    arms = {
        "kd": _stepper(copy.deepcopy(student), None, cached, x, y),
        "kd+ska": _stepper(copy.deepcopy(student), ska, cached, x, y),
    }
    for step in arms.values():  # warm-up, untimed
        step(), step()
    load_before = load_average()
    per_repeat: list[dict[str, float]] = []
    for _ in range(repeats):
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(steps):
            for name, step in arms.items():
                times[name].append(step())
        per_repeat.append({name: statistics.median(v) for name, v in times.items()})
    ratios = [r["kd+ska"] / r["kd"] for r in per_repeat]
    return {
        "backbone": backbone,
        "batch": batch,
        "options": options,
        "feature_map": list(cached.feature_map.shape[1:]),
        "compiled": compile_ska,
        "repeats": repeats,
        "steps": steps,
        "median_s": {n: statistics.median(r[n] for r in per_repeat) for n in arms},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "load_before": load_before,
        "load_after": load_average(),
    }


def ska_alone(
    backbone: str = "small_cnn",
    batch: int = 32,
    options: dict[str, Any] | None = None,
    steps: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """SKA's forward + backward by itself on the networks' real feature maps and embeddings
    (student side requiring grad, teacher side fixed): median ms over `steps`."""
    from cmkd.models.outputs import ModelOutput

    student, teacher, cached, x, _ = _networks(backbone, batch, seed)
    ska = _ska(student, teacher, dict(options or {}), seed)
    with torch.no_grad():
        out = student(x)
    s = ModelOutput(out.logits, out.embedding.requires_grad_(), out.feature_map.requires_grad_())

    def once() -> float:
        start = time.perf_counter()
        sum(ska(s, cached, {}).values()).backward()
        return time.perf_counter() - start

    once(), once()
    times = [once() for _ in range(steps)]
    return {
        "backbone": backbone,
        "batch": batch,
        "options": dict(options or {}),
        "median_ms": 1000 * statistics.median(times),
        "load": load_average(),
    }


def compile_cost(
    backbone: str = "small_cnn", batch: int = 32, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Seconds of the first KD + SKA step with SKA under torch.compile (tracing and code
    generation) against an eager step, and the steady ratio after it."""
    student, teacher, cached, x, y = _networks(backbone, batch, 0)
    ska = torch.compile(_ska(student, teacher, dict(options or {}), 0))
    step = _stepper(copy.deepcopy(student), ska, cached, x, y)
    first = step()
    eager = _stepper(copy.deepcopy(student), _ska(student, teacher, dict(options or {}), 0),
                     cached, x, y)  # fmt: skip
    eager(), eager()
    return {"first_step_s": first, "eager_step_s": eager(), "load": load_average()}


def measure(repeats: int = 5, steps: int = 10) -> dict[str, Any]:
    """Every scenario's step ratio and SKA-alone time."""
    torch.set_num_threads(1)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "steps": [step_overhead(b, n, o, repeats=repeats, steps=steps) for b, n, o in SCENARIOS],
        "ska_alone": [ska_alone(b, n, o) for b, n, o in SCENARIOS],
    }


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items()) or "defaults (dim 512)"


def render_ska(report: dict[str, Any]) -> list[str]:
    """Markdown lines for a `measure` report."""
    alone = {(r["backbone"], r["batch"], _options(r["options"])): r for r in report["ska_alone"]}
    lines = [
        "## SemBridge's own overhead: one training step, KD + SKA against KD",
        "",
        f"torch {report['torch']}, {report['threads']} intra-op thread(s) on "
        f"{report['cpus']} CPUs. One training step (forward, 0.3 CE + 0.4 KD at T = 3, "
        "+ 0.003 SKA, backward, Adam) of an RGB student; the teacher (same backbone, 13-band "
        "MS) run once, its outputs fixed as the teacher cache gives them; 64 x 64 inputs. "
        "Steps alternate between the arms; per repeat the median step of each, then the "
        "median over repeats; *range*: the lowest and highest per-repeat ratio. *SKA alone*: "
        "SKA's forward + backward on the same feature maps by itself.",
        "",
        "| backbone | batch | SKA options | feature map | KD step (ms) | KD + SKA step (ms) "
        "| ratio | range | SKA alone (ms) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["steps"]:
        key = (r["backbone"], r["batch"], _options(r["options"]))
        ska_ms = alone[key]["median_ms"] if key in alone else float("nan")
        lines.append(
            f"| {r['backbone']} | {r['batch']} | {key[2]} | "
            f"{' x '.join(map(str, r['feature_map']))} | {1000 * r['median_s']['kd']:.1f} | "
            f"{1000 * r['median_s']['kd+ska']:.1f} | **x{r['ratio']:.3f}** | "
            f"{r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f} | {ska_ms:.2f} | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |"
        )
    return lines


def main() -> None:
    print("\n".join(render_ska(measure())))


if __name__ == "__main__":
    main()
