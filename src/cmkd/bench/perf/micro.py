"""Micro-benchmarks, each against a baseline timed in the same process: (b) DynM's chunked
min-KL matcher against per-sample loops (the authors' and a tight one), and the 60,000 x
70,000 x 10 case with its peak memory; (c) CORAL through b x b Gram matrices against d x d
covariances; (d) Adam's step, torch's loop against its fused kernel.

Every timing is one call through torch.utils.benchmark.Timer (after its two untimed warm-up
calls), repeated and interleaved across the variants; medians are reported.
"""

from __future__ import annotations

from statistics import median
from typing import Any

import torch
import torch.nn.functional as F

from cmkd.bench.machine import peak_memory
from cmkd.bench.perf.timing import ratios, seconds


def _logits(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    logits = torch.randn(n, k, generator=g) * 2 + 4 * F.one_hot(labels, k)
    return logits, labels


def min_kl_loop(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_labels: torch.Tensor,
    temperature: float = 3.0,
) -> torch.Tensor:
    """A tight per-sample loop: one student sample at a time against its class gallery (the
    softened teacher outputs of that class, gathered once), KL to each, argmin."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    galleries = {}
    for c in teacher_labels.unique().tolist():
        rows = torch.nonzero(teacher_labels == c)[:, 0]
        galleries[c] = (rows, log_pt[rows].exp(), log_pt[rows])
    out = torch.empty(len(student_logits), dtype=torch.long)
    for i, c in enumerate(student_labels.tolist()):
        rows, pt_c, log_pt_c = galleries[c]
        kl = (pt_c * (log_pt_c - log_ps[i])).sum(dim=1)
        out[i] = rows[kl.argmin()]
    return out


def min_kl_authors(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_labels: torch.Tensor,
    teacher_labels: torch.Tensor,
    temperature: float = 3.0,
) -> torch.Tensor:
    """The authors' matcher (ACKD utils/dataset_transfer.py, find_matches), given the logits:
    the gallery is a list of 1 x K teacher logits per class; per student sample it is
    concatenated, the student's logits expanded to it, nn.KLDivLoss(reduction='none') of the
    softened pair summed per teacher, and topk(1, largest=False) taken. Their per-sample
    student forward pass and their second, largest-KL topk are left out."""
    kl_div = torch.nn.KLDivLoss(reduction="none")
    gallery: dict[int, tuple[list[torch.Tensor], list[int]]] = {}
    for j, c in enumerate(teacher_labels.tolist()):
        logits, rows = gallery.setdefault(c, ([], []))
        logits.append(teacher_logits[j : j + 1])
        rows.append(j)
    out = torch.empty(len(student_logits), dtype=torch.long)
    for i, c in enumerate(student_labels.tolist()):
        logits, rows = gallery[c]
        teacher = torch.cat(logits)
        student = student_logits[i : i + 1].expand(teacher.size(0), -1)
        score = kl_div(
            F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1)
        ).sum(dim=1)
        _, index = torch.topk(score, 1, largest=False)
        out[i] = rows[int(index[0])]
    return out


def dynm_speed(
    loop_students: int = 6_000,
    loop_teachers: int = 7_000,
    big_students: int = 60_000,
    big_teachers: int = 70_000,
    classes: int = 10,
    repeats: int = 3,
    chunk_size: int = 4096,
    big_chunks: tuple[int, ...] = (512, 4096),
) -> dict[str, Any]:
    """Chunked min-KL (cmkd.matching.dynamic.min_kl_match) against the per-sample loop at a
    size the loop manages (interleaved repeats, medians), then the chunked matcher alone at
    `big_students` x `big_teachers`, with its peak memory."""
    from cmkd.pairing.dynamic import min_kl_match

    zs, ys = _logits(loop_students, classes, 1)
    zt, yt = _logits(loop_teachers, classes, 2)
    variants = {
        "chunked": lambda a, b, c, d: min_kl_match(a, b, c, d, chunk_size=chunk_size),
        "loop": min_kl_loop,
        "authors": min_kl_authors,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(
                seconds(lambda name=name, fn=fn: results.update({name: fn(zs, zt, ys, yt)}))
            )
    agree = {
        name: float((results["chunked"] == results[name]).float().mean())
        for name in ("loop", "authors")
    }
    zs, ys = _logits(big_students, classes, 3)
    zt, yt = _logits(big_teachers, classes, 4)
    big: dict[int, dict[str, list]] = {c: {"seconds": [], "peak_mb": []} for c in big_chunks}
    for _ in range(repeats):
        for c in big_chunks:
            with peak_memory() as memory:
                took = seconds(lambda c=c: min_kl_match(zs, zt, ys, yt, chunk_size=c))
            big[c]["seconds"].append(took)
            if memory["added_mib"] is not None:
                big[c]["peak_mb"].append(memory["added_mib"])
    med = {k: median(v) for k, v in times.items()}
    return {
        "loop_size": [loop_students, loop_teachers, classes],
        "seconds": times,
        "median_s": med,
        "speedup": med["authors"] / med["chunked"],
        "speedup_vs_tight_loop": med["loop"] / med["chunked"],
        "same_pairs_fraction": agree,
        "big_size": [big_students, big_teachers, classes],
        "big": {
            str(c): {
                **v,
                "median_s": median(v["seconds"]),
                # The first run's rise is the honest peak: later runs may reuse memory the
                # allocator kept from earlier ones.
                "peak_mb_max": max(v["peak_mb"]) if v["peak_mb"] else None,
            }
            for c, v in big.items()
        },
    }


# --- (c) CORAL ------------------------------------------------------------------------------


def coral_cost(d: int = 8192, b: int = 256, repeats: int = 3) -> dict[str, Any]:
    """One forward and backward of the CORAL scatter gap through b x b Gram matrices against
    d x d covariances: median seconds and peak memory each, and the two values' agreement."""
    from cmkd.losses.ska import scatter_gap

    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 1.1

    def step(gram: bool) -> float:
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        gap = scatter_gap(x - x.mean(0), y - y.mean(0), gram=gram)
        gap.backward()
        return float(gap.detach())

    times: dict[str, list[float]] = {"gram": [], "direct": []}
    peaks: dict[str, list[float]] = {"gram": [], "direct": []}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for name in ("gram", "direct"):
            with peak_memory() as memory:
                took = seconds(lambda name=name: values.update({name: step(name == "gram")}))
            times[name].append(took)
            if memory["added_mib"] is not None:
                peaks[name].append(memory["added_mib"])
    med = {k: median(v) for k, v in times.items()}
    peak = {k: (max(v) if v else None) for k, v in peaks.items()}
    return {
        "d": d,
        "b": b,
        "seconds": times,
        "median_s": med,
        "speedup": med["direct"] / med["gram"],
        "peak_mb": peak,
        "memory_ratio": peak["direct"] / peak["gram"] if peak["gram"] and peak["direct"] else None,
        "relative_difference": abs(values["gram"] - values["direct"]) / abs(values["direct"]),
    }


# --- (d) The optimiser step ---------------------------------------------------------------


def optimizer_steps(backbone: str = "resnet18", repeats: int = 3, steps: int = 5) -> dict[str, Any]:
    """Adam's step over `backbone`'s parameters (fixed gradients) with torch's default loop
    (elementwise operations, tensor by tensor) and with its fused kernel
    (`run.fused_optimizer`), with the weights in the standard and in the channels-last layout
    (cmkd's default for convolutional networks): median ms per step over interleaved repeats;
    and how far `steps` fused steps move the weights from `steps` of the loop (max |difference|)."""
    from cmkd.models.backbones import create_network

    def adam(channels_last: bool, fused: bool) -> torch.optim.Adam:
        torch.manual_seed(0)
        net = create_network(backbone, in_chans=3, num_classes=10)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():  # gradients in their parameter's layout, as autograd gives
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        return torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused or None)

    def weights(optimiser: torch.optim.Optimizer) -> list[torch.Tensor]:
        return optimiser.param_groups[0]["params"]

    layouts = {"standard": False, "channels-last": True}
    kinds = ("loop", "fused")
    optimisers = {(lay, k): adam(cl, k == "fused") for lay, cl in layouts.items() for k in kinds}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in optimisers}
    keys = list(optimisers)
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(1e3 * seconds(optimisers[key].step))
    loop, fused = adam(False, False), adam(False, True)
    for _ in range(steps):
        loop.step()
        fused.step()
    pairs = zip(weights(fused), weights(loop), strict=True)
    return {
        "backbone": backbone,
        "parameters": sum(p.numel() for p in weights(loop)),
        "layouts": {
            layout: {
                "loop_ms": median(times[(layout, "loop")]),
                "fused_ms": median(times[(layout, "fused")]),
                "speedup": ratios(times[(layout, "loop")], times[(layout, "fused")]),
            }
            for layout in layouts
        },
        "steps_compared": steps,
        "max_difference": max((a - b).abs().max().item() for a, b in pairs),
    }
