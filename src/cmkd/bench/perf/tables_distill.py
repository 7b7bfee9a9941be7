"""The perf page's distillation sections, rendered from the store: cmkd's epoch against the
reference codes' loop (`loops`), each method's epoch against the no-KD student's (`overhead`,
`overhead_large`), SemBridge's own step overhead (`ska`). Each returns the section's body
(method and tables) as Markdown lines."""

from __future__ import annotations

from typing import Any

from cmkd.bench.perf.markdown import num, table

REFERENCE = {"SemBridge (KD + SKA)": "the SemBridge authors'", "plain KD": "mdistiller's"}
"""Whose training loop the reference loop is written after, per method."""


def loop_default(row: dict[str, Any]) -> str:
    """The variant cmkd's defaults ran a loops row at (rows stored before it was recorded were
    measured when the default was 32-true)."""
    return row.get("default_variant", "32-true")


FLOOR_FP32_KEY, FLOOR_AT_DEFAULTS_KEY = "student_alone_epoch_s", "student_alone_defaults_epoch_s"
"""The stored floors: the student's own step in the reference loop, at fp32 as the reference
codes run it, and at cmkd's defaults (stores before 2026-12-01 hold only the first)."""


def over_student_alone(
    rows: dict[str, Any], row: dict[str, Any], floor_key: str = FLOOR_FP32_KEY
) -> float | None:
    """`row`'s reference epoch over the student-alone epoch (`floor_key`) of its backbone in
    the same condition (timed with the plain-KD row): the most that removing the teacher could
    give with that student step. None where the floor was not timed."""
    found = [r.get(floor_key) for r in rows.values() if r["backbone"] == row["backbone"]]
    floor = next((x for x in found if x), None)
    return None if floor is None else row["reference_epoch_s"] / floor


def _seconds(row: dict[str, Any], variant: str, median: float) -> str:
    """A variant's median epoch seconds with the lowest and highest of its repeats."""
    low_high = (row.get("spread") or {}).get(variant)
    return num(median, 3) + (
        "" if not low_high else f" ({num(low_high[0], 2)}-{num(low_high[1], 2)})"
    )


def _ska_options(lo: dict[str, Any], side: str) -> str:
    """SKA's options on one side ('cmkd_terms' or 'reference_terms') of the stored rows (before
    2026-12-01 both sides ran dim 256 on every step)."""
    for c in lo["conditions"].values():
        for row in c["rows"].values():
            for term in (row.get("terms") or {}).get(side, []):
                if term["name"] == "ska":
                    return ", ".join(f"{k} {v}" for k, v in term["params"].items())
    return "dim 256"


def loops_lines(lo: dict[str, Any]) -> list[str]:
    # What `precision: auto` picked (stores before 2026-11-30 named it default_precision).
    auto = lo.get("auto_precision") or lo["default_precision"]
    header = ["condition (load before, after)", "backbones", "method", "reference loop s/epoch",
              "cmkd's defaults here", "cmkd default s/epoch", "reference / cmkd default",
              "cmkd 32-true s/epoch", "reference / cmkd 32-true",
              "reference / student alone", "reference / student alone at cmkd's defaults",
              "teacher cache fill s (once)"]  # fmt: skip
    rows = []
    for condition, c in lo["conditions"].items():
        for row in c["rows"].values():
            default, fp32 = loop_default(row), "32-true"
            ceiling = over_student_alone(c["rows"], row)
            at_defaults = over_student_alone(c["rows"], row, FLOOR_AT_DEFAULTS_KEY)
            rows.append([
                f"{condition} ({num(c['load'][0])}, {num(c['load'][1])})", row["backbone"],
                f"{row['method']} (reference: {REFERENCE.get(row['method'], '?')} loop)",
                _seconds(row, "reference", row["reference_epoch_s"]), default,
                _seconds(row, default, row["cmkd_epoch_s"][default]),
                f"**x{row['speedup'][default]:.2f}**",
                _seconds(row, fp32, row["cmkd_epoch_s"][fp32]), f"x{row['speedup'][fp32]:.2f}",
                "" if ceiling is None else f"x{ceiling:.2f}",
                "" if at_defaults is None else f"x{at_defaults:.2f}",
                num(row["cache_fill_s"]),
            ])  # fmt: skip
    cmkd_ska, reference_ska = _ska_options(lo, "cmkd_terms"), _ska_options(lo, "reference_terms")
    return [
        "RGB teacher -> MS student on the 221 EuroSAT MS training patches, fixed class-random "
        f"pairs, batch {lo['batch_size']}, the same networks, loss terms and in-memory data on "
        "both sides. The reference loop does what the reference code's training loop does "
        "every step, in fp32 through a DataLoader: the teacher's forward pass on the batch, the "
        "student's forward, the loss, backward and an Adam step on the student (and SKA's "
        "attention). mdistiller runs the teacher under `no_grad`. The SemBridge authors' "
        "`train.py` does not: their teacher keeps `requires_grad` and its outputs enter the "
        "losses undetached, so each backward also runs through the whole teacher (gradients "
        "computed, never used); their loop computes SKA on every step "
        f"({reference_ska} here). cmkd runs each method as it ships (SemBridge's SKA: "
        f"{cmkd_ska}; benchmarks/ska-every.md shows it keeps the accuracy) through its "
        "Trainer, teacher outputs cached once per run, at its defaults (precision, layout "
        "and weight-gradient kernels as cmkd picks them for that network on this machine; "
        f"`precision: auto` gives {auto} here to networks that gain from it, convolutional "
        "ones at any size; "
        "*matmul-weight-grad*: `run.matmul_weight_grad`, which at the small CNN's sizes takes "
        "oneDNN's kernel in every layer; *fused-adam*: `run.fused_optimizer`, torch's fused "
        "Adam step) and at 32-true (plain fp32, torch's kernels and Adam loop); at "
        "both, its fit standardises the training split once per run, not every batch, as "
        "every cmkd fit on a CPU does (`cmkd.served`). "
        "SemBridge = 0.3 CE + "
        "0.4 KD (T 3) + 0.003 SKA; plain KD = 0.5 CE + 0.5 KD (T 4). *Student alone*: the "
        "reference loop with no teacher and no term, the student's own fp32 step (timed with "
        "plain KD), so *reference / student alone* is the most that removing the teacher "
        "could give at fp32 without touching the student's own step; *student alone at "
        "cmkd's defaults*: the same loop with the student readied as cmkd's defaults ready it "
        "(layout, weight-gradient kernels, bf16 autocast where the default is bf16-mixed, "
        "fused Adam, inputs standardised once), "
        "so *reference / student alone at cmkd's defaults* is about the most any teacher-side "
        "saving could reach (cmkd's Trainer loop and this plain loop differ by some percent "
        "either way, within this machine's noise). "
        f"{lo['epochs']} epochs x {lo['repeats']} interleaved repeats, per run the "
        f"{_per_run(lo)} after the first, then the median over repeats (in brackets the "
        "fastest and slowest repeat: bf16 runs vary most here); *+N busy*: with N busy-looping "
        "processes added. The cache fill is paid once per run, outside the epochs.",
        "",
        *table(header, rows),
        "",
    ]


def _per_run(measured: dict[str, Any]) -> str:
    """How a run's epochs were summarised: the mean (SKA's every-k steps in their proportion)
    or, in stores from before that, the median epoch."""
    if measured.get("epoch_statistic") == "mean":
        return "mean over the epochs"
    return "median epoch"


def overhead_lines(a: dict[str, Any]) -> list[str]:
    lines = [
        f"EuroSAT paired MS -> RGB, {a['train_samples']} training samples, batch "
        f"{a['batch_size']}, teacher {a['teacher']} (MS), student {a['student']} (RGB); "
        f"{a['epochs']} epochs x {a['repeats']} interleaved repeats. Per run the "
        f"{_per_run(a)} after the first (warm-up), leaving out the DynM re-match epoch "
        f"({a['rematch_epoch']}); then the median over repeats. *Epoch* is wall time from "
        "epoch start to end (steps, data, validation, checkpoint); *steps* the time "
        "inside the training steps only. The teacher-cache fill happens once before "
        "epoch 0 and is not in any epoch; it is listed on its own. *Per repeat*: the "
        "lowest and highest of each repeat's ratio to the no-KD run of the same repeat, "
        "the noise to read the medians against.",
        "",
        "| method | epoch (s) | epoch / no-KD | (per repeat) | steps (s) | steps / no-KD | "
        "teacher forward (s) | test acc (last) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in a["methods"].items():
        lines.append(
            f"| {name} | {num(e['epoch_s'], 3)} | {num(e['epoch_ratio'])} | "
            f"{num(e['epoch_ratio_range'][0])}-{num(e['epoch_ratio_range'][1])} | "
            f"{num(e['step_s'], 3)} | {num(e['step_ratio'])} | "
            f"{num(e.get('teacher_seconds'), 3)} | {num(e['test_acc'], 3)} |"
        )
    sb = a.get("sembridge")
    if sb:
        # A store from before `sembridge_ska` ran SKA on every step, at the grid's dim.
        ska = a.get("sembridge_ska", {"dim": 256})
        every = ska.get("every", 1)
        lines += [
            "",
            f"SemBridge's SKA here: dim {ska.get('dim', 512)}, "
            + ("on every step" if every == 1 else f"on one step in {every} (x{every} there)")
            + ". "
            f"SemBridge / KD (both with the teacher cache): epoch x"
            f"{num(sb['epoch_ratio_vs_kd'])}, steps x{num(sb['step_ratio_vs_kd'])}. "
            f"A DynM re-match adds {num(sb['rematch_extra_s'], 3)} s to its epoch; at the "
            f"authors' density (5 re-matches in 200 epochs) the amortised epoch ratio to KD "
            f"is **x{num(sb['amortised_epoch_ratio_vs_kd'])}**. Teacher forward (s) for cached "
            "runs is the one-off fill; for the recomputed run, all teacher passes.",
        ]
    if a.get("ska_vs_kd"):
        lines += [
            "",
            f"SKA alone (KD + SKA, no DynM) / KD: epoch x{num(a['ska_vs_kd']['epoch_ratio'])},"
            f" steps x{num(a['ska_vs_kd']['step_ratio'])}.",
        ]
    lines += [
        "",
        f"Training step rates (samples/s): RGB student no-KD "
        f"{num(a['train_samples'] / a['methods']['no KD']['step_s'], 0)}, MS teacher "
        f"{num(a['teacher_step_samples_per_s'], 0)}.",
        "",
    ]
    return lines


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items()) or "defaults (dim 512)"


def _x3(r: dict[str, float], bold: bool = False) -> str:
    median = f"x{r['median']:.3f}"
    return f"{f'**{median}**' if bold else median} ({r['min']:.3f}-{r['max']:.3f})"


def _step_precision(report: dict[str, Any]) -> str:
    """What the step table's rows ran at, where the store says (since 2026-12-02)."""
    if not any("precision" in r for r in report["steps"]):
        return ""
    return (
        ", in fp32 with torch's Adam loop or at cmkd's defaults (precision, layout, "
        "weight-gradient kernels and fused Adam as its fit picks them here): the backbone "
        "column says which; SKA alone is timed in fp32"
    )


def ska_lines(report: dict[str, Any]) -> list[str]:
    alone = {(r["backbone"], r["batch"], _options(r["options"])): r for r in report["ska_alone"]}
    rows = []
    for r in report["steps"]:
        # Stores from before 2026-12-02 timed fp32 steps only and do not say so.
        at = f" ({r['precision']})" if "precision" in r else ""
        for label, arm in r["arms"].items():
            key = (r["backbone"], r["batch"], _options(arm["options"]))
            if r.get("at_defaults"):  # SKA alone is timed in fp32
                key = None
            rows.append(
                [r["backbone"] + at, r["batch"], " x ".join(map(str, r["feature_map"])),
                 f"{label}: {_options(arm['options'])}",
                 f"{r['kd_step_ms']['cpu']:.1f} / {r['kd_step_ms']['wall']:.1f}",
                 f"{arm['step_ms']['cpu']:.1f} / {arm['step_ms']['wall']:.1f}",
                 _x3(arm["ratio"]["cpu"], bold=True), _x3(arm["ratio"]["wall"]),
                 f"{alone[key]['cpu_ms']:.2f}" if key in alone else "",
                 f"{r['load_before']:.2f} / {r['load_after']:.2f}"]
            )  # fmt: skip
    lines = [
        f"torch {report['torch']}, {report['threads']} intra-op thread(s) on {report['cpus']} "
        "CPUs. A training step (forward, 0.3 CE + 0.4 KD at T = 3, + 0.003 SKA, backward, Adam) "
        f"of an RGB student{_step_precision(report)}; the teacher (same backbone, 13-band MS) "
        "run once, its outputs fixed "
        "as the teacher cache gives them; 64 x 64 inputs. Steps alternate between the arms; "
        "per repeat each arm's mean step and its ratio to KD's, then the median over repeats "
        "and the range. *CPU*: the stepping thread's CPU time, *wall*: the clock. "
        "*SKA alone*: SKA's forward + backward by itself (CPU ms). *every k*: SKA on every "
        "k-th step only.",
        "",
        *table(
            [
                "backbone",
                "batch",
                "feature map",
                "SKA",
                "KD step ms (CPU / wall)",
                "KD + SKA step ms (CPU / wall)",
                "ratio, CPU (range)",
                "ratio, wall (range)",
                "SKA alone",
                "load before / after",
            ],
            rows,
        ),  # fmt: skip
    ]
    flops = report.get("flops") or []
    if flops:
        lines += [
            "",
            "FLOPs of a KD step (student forward + backward) and those SKA adds "
            "(torch.utils.flop_counter), with the parameter counts:",
            "",
            *table(
                [
                    "backbone",
                    "batch",
                    "SKA",
                    "KD step GFLOP",
                    "SKA adds GFLOP",
                    "SKA / KD",
                    "student params",
                    "SKA params",
                ],
                [
                    [
                        f["backbone"],
                        f["batch"],
                        _options(f["options"]),
                        f"{f['kd_gflop']:.3f}",
                        f"{f['ska_gflop']:.3f}",
                        f"{f['ska_gflop'] / f['kd_gflop']:.2f}",
                        f"{f['student_params']:,}",
                        f"{f['ska_params']:,}",
                    ]
                    for f in flops
                ],
            ),  # fmt: skip
        ]
    products = report.get("attention_products") or []
    if products:
        lines += [
            "",
            "The matrix products SKA's attention cannot avoid (q, k maps of both sides, forward "
            "and backward, small_cnn's 128-channel 4 x 4 tokens folded into dim x dim maps), "
            "timed alone: the floor under any exact implementation.",
            "",
            *table(
                ["batch", "dim", "MFLOP", "CPU ms"],
                [
                    [p["batch"], p["dim"], f"{p['flop'] / 1e6:.0f}", f"{p['cpu_ms']:.2f}"]
                    for p in products
                ],
            ),  # fmt: skip
        ]
    e = report.get("epoch")
    if e:
        lines += [
            "",
            f"Through cmkd's trainer (`distill_student`, EuroSAT paired MS -> RGB, small_cnn, "
            f"batch 32, teacher cache; {e['epochs']} epochs x {e['repeats']} interleaved "
            f"repeats, per run the {_per_run(e)} after the first): KD epoch "
            f"{e['epoch_s']['kd']['cpu']:.3f} s CPU; load at the end {e['load']:.2f}.",
            "",
            *table(
                ["SKA", "epoch ratio, CPU (range)", "epoch ratio, wall (range)"],
                [
                    [label, _x3(r["cpu"], bold=True), _x3(r["wall"])]
                    for label, r in e["ratio"].items()
                ],
            ),  # fmt: skip
        ]
    c = report.get("compile")
    if c:
        lines += [
            "",
            f"torch.compile of the SKA module (grid setting, small_cnn, batch 32): first step "
            f"{c['first_step_s']:.1f} s wall; then steps interleaved, ratio to KD "
            f"x{c['compiled_ratio']['cpu']['median']:.3f} CPU compiled, "
            f"x{c['eager_ratio']['cpu']['median']:.3f} eager.",
        ]
    return [*lines, ""]
