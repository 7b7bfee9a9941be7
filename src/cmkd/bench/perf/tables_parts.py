"""The perf page's sections on single parts, rendered from the store: convolution weight
gradients (`weight_grad`), Adam's fused step (`optimizer`), DynM's matcher (`dynm`), CORAL's
Gram path (`coral`), data loading (`data`), 2 DDP processes against 1 (`ddp`). Each returns
the section's body (method and tables) as Markdown lines."""

from __future__ import annotations

from statistics import median
from typing import Any

from cmkd.bench.perf.markdown import loads, num, table
from cmkd.stats import mean_ci, mean_std


def dynm_lines(b: dict[str, Any]) -> list[str]:
    s, t, k = b["loop_size"]
    bs, bt, bk = b["big_size"]
    lines = [
        f"{s:,} students x {t:,} teachers x {k} classes (random logits), the matching "
        "alone (the student's logits given), interleaved repeats, medians:",
        "",
        "| matcher | s | chunked is faster by | same pairs as chunked |",
        "|---|---|---|---|",
        f"| authors' loop (their find_matches: per sample, cat the class gallery, "
        f"KLDivLoss, topk) | {num(b['median_s']['authors'], 3)} | "
        f"**x{num(b['speedup'], 0)}** | {100 * b['same_pairs_fraction']['authors']:.2f} % |",
        f"| tight per-sample loop (galleries gathered once) | "
        f"{num(b['median_s']['loop'], 3)} | x{num(b['speedup_vs_tight_loop'], 1)} | "
        f"{100 * b['same_pairs_fraction']['loop']:.2f} % |",
        f"| chunked matrix KL (`min_kl_match`) | {num(b['median_s']['chunked'], 4)} | | |",
        "",
        f"{bs:,} x {bt:,} x {bk} with the chunked matcher (the loop would take about "
        f"{num(b['median_s']['authors'] * (bs / s) * (bt / t) / 60, 0)} min by linear "
        "scaling, not run):",
        "",
        "| chunk (students) | median s | runs (s) | peak memory added (MB) |",
        "|---|---|---|---|",
    ]
    for chunk, v in b["big"].items():
        lines.append(
            f"| {chunk} | **{num(v['median_s'])}** | "
            f"{', '.join(num(x) for x in v['seconds'])} | {num(v['peak_mb_max'], 0)} |"
        )
    return [
        *lines,
        "",
        "Peak memory is the rise of the process's resident high-water mark during the call "
        "(the largest over repeats; later calls may reuse memory the allocator kept).",
        "",
    ]


def coral_lines(c: dict[str, Any]) -> list[str]:
    return [
        f"d = {c['d']}, b = {c['b']}, one forward + backward of the scatter gap, "
        "interleaved repeats:",
        "",
        "| path | median s | peak memory added (MB) |",
        "|---|---|---|",
        f"| Gram | {num(c['median_s']['gram'], 3)} | {num(c['peak_mb']['gram'], 0)} |",
        f"| direct | {num(c['median_s']['direct'], 3)} | {num(c['peak_mb']['direct'], 0)} |",
        "",
        f"Time ratio direct / Gram **x{num(c['speedup'], 1)}**, memory ratio "
        f"**x{num(c['memory_ratio'], 1)}**; relative difference of the two values "
        f"{c['relative_difference']:.1e}.",
        "",
    ]


def optimizer_lines(o: dict[str, Any]) -> list[str]:
    lines = [
        f"Adam's step over {o['backbone']}'s {o['parameters']:,} parameters (fixed gradients), "
        "torch's default loop against its fused kernel (`run.fused_optimizer: auto`), with "
        "the weights in the standard layout and channels-last (cmkd's default for "
        "convolutional networks), ms per step, medians of interleaved repeats; *faster by*: "
        "the median (range) of the per-repeat ratios.",
        "",
        "| weights | loop ms | fused ms | fused is faster by |",
        "|---|---|---|---|",
    ]
    for layout, v in o["layouts"].items():
        lines.append(
            f"| {layout} | {num(v['loop_ms'], 1)} | {num(v['fused_ms'], 1)} | "
            f"**x{num(v['speedup']['median'], 2)}** ({num(v['speedup']['min'], 2)}-"
            f"{num(v['speedup']['max'], 2)}) |"
        )
    return [
        *lines,
        "",
        f"After {o['steps_compared']} steps from the same weights and gradients, the two "
        f"differ by at most {o['max_difference']:.1e} in any weight (float rounding).",
        "",
    ]


def data_lines(d: dict[str, Any], overhead: dict[str, Any] | None) -> list[str]:
    lines = [
        "One epoch through a DataLoader (batch 32, shuffled, main process) over the "
        "EuroSAT paired files; *cache file read* is what a run pays once at its start to get "
        "the arrays from the cache (listing and stat-ing the source files for the cache key, "
        "then np.load), per sample returned: for RGB it lists all 27,000 RGB files to find "
        "the 369 twins. Medians of interleaved repeats.",
        "",
        "| modality | samples | from cache (samples/s) | decoding files (samples/s) | "
        "cache / decode | cache file read (samples/s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, e in d.items():
        rate = e["median_samples_per_s"]
        lines.append(
            f"| {key} | {e['samples']} | {num(rate['cache'], 0)} | {num(rate['decode'], 0)} | "
            f"x{num(e['cache_over_decode'], 1)} | {num(rate['cache_file'], 0)} |"
        )
    if overhead:
        lines += [
            "",
            f"Beside the training step (distillation overhead, small CNN): RGB student "
            f"{num(overhead['train_samples'] / overhead['methods']['no KD']['step_s'], 0)} "
            f"samples/s, MS teacher {num(overhead['teacher_step_samples_per_s'], 0)} samples/s.",
        ]
    return [*lines, ""]


def ddp_lines(e: dict[str, Any]) -> list[str]:
    one, two = e["runs"]["1 process"], e["runs"]["2 DDP processes"]
    lines = [
        f"`cmkd distill --config {e['config']}` (KD, EuroSAT paired MS -> RGB, small CNNs, "
        f"{e['epochs']} epochs) per seed, once in one process and once as two DDP processes "
        f"(gloo on the CPU, `--run.devices 2 --run.strategy ddp`), same split, same global "
        f"batch ({e['batch_size']} = 2 x {e['batch_size'] // 2}); Δ: the paired difference "
        "(2 processes minus 1) with its 95 % t interval. Seeds: "
        f"{[r['seed'] for r in one]}.",
        "",
        "| run | test acc %, best on val | test acc %, last epoch | wall s (median) |",
        "|---|---|---|---|",
    ]
    for label, rs in e["runs"].items():
        lines.append(
            f"| {label} | {mean_std([r['best'] for r in rs])} | "
            f"{mean_std([r['last'] for r in rs])} | {num(median([r['wall_s'] for r in rs]), 1)} |"
        )
    for key, title in (("best", "best on val"), ("last", "last epoch")):
        diff = [b[key] - a[key] for a, b in zip(one, two, strict=True)]
        lines.append(f"| Δ, {title} | {mean_ci(diff)} | | |")
    return [
        *lines,
        "",
        "Every rank holding the same pairs after SSM and after each DynM re-match is checked by "
        "`tests/test_ddp.py`. Several GPUs: `--run.accelerator gpu --run.devices 4`; several "
        "nodes: `--run.num_nodes N` under torchrun or SLURM (README, Scale out).",
        "",
    ]


def weight_grad_lines(w: dict[str, Any]) -> list[str]:
    backbones = list(w["totals"])
    c, h, wd = w["input"]

    def cell(entry: dict[str, Any], variant: str) -> str:
        taken = entry["rule_takes_product"] == (variant == "product_ms")
        text = num(entry[variant], 1)
        return f"**{text}**" if taken else text

    rows = [
        [" x ".join(map(str, r["input"])),
         f"{r['kernel'][0]} x {r['kernel'][1]}, stride {r['stride'][0]}, {r['out_channels']}",
         " / ".join(str(r["count"].get(b, 0)) for b in backbones),
         *(cell(r[d], v) for d in ("fp32", "bf16") for v in ("native_ms", "product_ms"))]
        for r in w["shapes"].values()
    ]  # fmt: skip
    totals = [
        [b, *(f"{num(t[d]['native_ms'], 0)} / {num(t[d]['rule_ms'], 0)} "
              f"(**x{num(t[d]['native_ms'] / t[d]['rule_ms'], 2)}**)" for d in ("fp32", "bf16"))]
        for b, t in w["totals"].items()
    ]  # fmt: skip
    differences = [
        [b, *(f"{v:.1e}" for v in d.values())] for b, d in w["gradient_difference"].items()
    ]
    kinds = list(next(iter(w["gradient_difference"].values())))
    return [
        f"Every convolution shape of {' and '.join(backbones)} on EuroSAT MS input "
        f"({c} x {h} x {wd}, batch {w['batch']}, channels-last): one backward pass (input and "
        "weight gradients from a kept graph; the first layer's input needs none) with torch's "
        "own kernel (oneDNN) and with the weight gradient as one matrix product "
        "(`cmkd.models.matmul_weight_grad`), in ms, medians of "
        f"{w['repeats']} interleaved repeats, {w['threads']} thread(s); load "
        f"{loads(w['load'])}. In bold: what cmkd takes (`run.matmul_weight_grad: auto`, "
        "its rule MAX_POSITIONS / MIN_PATCH).",
        "",
        *table(
            [
                "input (C x H x W)",
                "kernel, stride, out channels",
                "layers in " + " / ".join(backbones),
                "fp32 torch",
                "fp32 product",
                "bf16 torch",
                "bf16 product",
            ],
            rows,
        ),  # fmt: skip
        "",
        "All convolutions of a network, backward ms, torch's kernel alone / with cmkd's rule:",
        "",
        *table(["network", "fp32", "bf16"], totals),
        "",
        "How far the product moves the gradients of a whole training step (all parameters, the "
        "same weights and batch, relative L2 difference), beside how far bf16 itself moves "
        "them from fp32:",
        "",
        *table(["network", *kinds], differences),
        "",
    ]
