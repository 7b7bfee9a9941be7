"""The perf page's run-loop sections, rendered from the store: the command's start-up (`help`),
the tiny fit against plain PyTorch (`runloop`), threads on shared cores (`threads`), precision
and layout with the bf16 accuracy check (`precision`, `bf16_accuracy`), checkpoint costs
(`checkpoints`). Each returns the section's body (method and tables) as Markdown lines."""

from __future__ import annotations

from typing import Any

from cmkd.bench.perf.markdown import loads, ms, num, table, times
from cmkd.stats import interval, mean_std

BF16_DEFAULT = "bf16 channels-last matmul-weight-grad"
"""The precision section's step as cmkd's defaults run a large network on a bf16 CPU."""


def help_lines(h: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{name}`" if name.startswith("cmkd") else name,
            f"**{num(s['median'])}**" if name.startswith("cmkd") else num(s["median"]),
            f"{num(s['min'])}-{num(s['max'])}",
            {True: "yes", False: "no"}.get(h["imports_torch"].get(name), ""),
        ]
        for name, s in h["seconds"].items()
    ]
    return [
        f"Each a fresh process, interleaved over {h['repeats']} repeats, medians "
        f"(load per repeat: {loads(h['load'])}). *Imports torch*: whether torch was loaded "
        "when the help had been printed.",
        "",
        *table(["command", "median s", "range s", "imports torch"], rows),
        "",
    ]


def runloop_lines(fit: dict[str, Any]) -> list[str]:
    rows = []
    for name, e in fit["in_process"].items():
        parts = [num(e[k]) if k in e else "" for k in ("fit", "steps", "validation", "checkpoint")]
        rows.append(
            [
                name,
                num(e["seconds"]["median"]),
                times(e["ratio"]),
                *parts,
                e.get("epochs_per_lightning_epoch", ""),
                num(e.get("test_acc"), 3) if "test_acc" in e else "",
                loads(e["load"]),
            ]  # fmt: skip
        )
    lines = [
        f"{fit['epochs']} full-batch steps on {fit['train_rows']} rows x {fit['features']} "
        f"features (mfeat Karhunen-Loeve, 1/6 each held out for validation and test), SGD "
        f"with momentum, {fit['threads']} thread(s) on both sides, {fit['repeats']} repeats "
        "with the variants' order rotated; per repeat the ratio to the plain loop of the same "
        "repeat, median (range). In process: *seconds* is all of `train_classifier` (data "
        "preparation, Trainer, fit, both test passes, results.json); *fit* Lightning's fit, "
        "*steps* the training steps, *validation* and *checkpoints* their seconds; "
        "*data epochs per Lightning epoch*: how many data epochs cmkd runs as one block.",
        "",
        *table(
            [
                "in process",
                "seconds",
                "/ plain loop",
                "fit",
                "steps",
                "validation",
                "checkpoints",
                "data epochs per Lightning epoch",
                "test acc",
                "load",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    commands = fit.get("commands")
    if commands:
        rows = [
            [name, num(e["seconds"]["median"]), times(e["ratio"]),
             num(e.get("test_acc"), 3) if "test_acc" in e else "", loads(e["load"])]
            for name, e in commands.items()
        ]  # fmt: skip
        lines += [
            "As commands, each a fresh Python process: `cmkd train --modality kar` on the same "
            "npz source and settings (as the `cmkd` console script runs it) against a plain "
            "PyTorch script on the same training rows (standardise, `torch.nn.Linear`, the same "
            "SGD), interpreter start-up and imports included on both sides; *test acc*: the "
            "script's after its last step, cmkd's from its best-on-validation weights:",
            "",
            *table(["command", "seconds", "/ plain script", "test acc", "load"], rows),
            "",
        ]
    return lines


def threads_lines(t: dict[str, Any]) -> list[str]:
    rows = [
        [name, ms(e["threads 1"]["seconds"]), times(e["threads 2"]["vs_1"]),
         f"{times(e['threads auto']['vs_1'])} ({e['auto_threads']})", loads(e["load"])]
        for name, e in t["conditions"].items()
    ]  # fmt: skip
    return [
        f"A small-CNN training step (batch 64 of EuroSAT RGB, Adam) on {t['cores']} cores, "
        "with 1, 2 and `auto` threads (`run.threads: auto`: at most the idle cores) in one "
        "fresh process per condition (OpenMP reads its waiting policy when it loads), at the "
        f"machine's load and with {t['busy']} busy-looping processes added, under OpenMP's "
        "default waiting and under passive waiting (what `cmkd` sets before torch loads); "
        "per repeat the median of a few steps, ratios to 1 thread in the same repeat.",
        "",
        *table(["condition", "1 thread", "2 threads / 1", "auto / 1 (threads)", "load"], rows),
        "",
    ]


def precision_lines(p: dict[str, Any]) -> list[str]:
    rows = [
        [name, ms(e["fp32"]["seconds"]), times(e["fp32 channels-last"]["vs_fp32"]),
         times(e["bf16"]["vs_fp32"]), times(e["bf16 channels-last"]["vs_fp32"]),
         times(e[BF16_DEFAULT]["vs_fp32"]) if BF16_DEFAULT in e else "not measured",
         times(e["epoch_auto_vs_fp32"]), loads(e["load"])]
        for name, e in p["pairs"].items()
    ]  # fmt: skip
    return [
        f"A KD + SKA training step (batch 64, EuroSAT paired MS teacher -> RGB student, the "
        "teacher's outputs cached) in fp32 and in bf16 autocast (what bf16-mixed runs), each "
        "with and without channels-last, and bf16 as cmkd's defaults run a large network "
        "(channels-last and the matmul weight gradients of `run.matmul_weight_grad`), "
        "interleaved, the median of a few steps after a "
        "warm-up, ratios to fp32 in the same repeat (< 1: faster); then one epoch through the "
        f"Trainer at `precision: auto` (= {p['auto_is']} here) against 32-true. "
        f"{p.get('threads', 1)} thread(s).",
        "",
        *table(
            [
                "teacher -> student",
                "fp32 step",
                "fp32 channels-last / fp32",
                "bf16 / fp32",
                "bf16 channels-last / fp32",
                "bf16 channels-last matmul weight grad / fp32",
                "epoch auto / 32-true",
                "load",
            ],
            rows,
        ),  # fmt: skip
        "",
        *(bf16_source_lines(p["sources"]) if "sources" in p else []),
    ]


HEADER_BY_SOURCE = ["source", "input", "backbone (parameters)", "inputs served in bf16",
                    "fp32 step", "bf16 / fp32", "auto picks", "load"]  # fmt: skip


def bf16_source_lines(sources: dict[str, Any]) -> list[str]:
    """`precision: auto`'s rule against a student step per built-in source."""
    rows = [
        [source, " x ".join(str(n) for n in e["input_shape"]),
         f"{e['backbone']} ({e['parameters']:,})", "yes" if e["bf16_served"] else "no",
         ms(e["fp32_seconds"]), times(e["bf16_vs_fp32"]),
         "bf16-mixed" if e["auto_picks_bf16"] else "32-true", f"{e['load']:.2f}"]
        for source, e in sources.items()
    ]  # fmt: skip
    return [
        "What `precision: auto` picks, against what bf16 buys: a student's training step on "
        "each built-in source (a batch of 64 of its training split, cross-entropy, Adam), at "
        "fp32 and in bf16 autocast, the network otherwise as cmkd's defaults ready it "
        "(channels-last for convolutions, the weight-gradient kernels, fused Adam, the split "
        "standardised once, and for the bf16 step kept in bf16 where that changes no bit: "
        "*inputs served in bf16*, `cmkd.served`), interleaved, per repeat the median of a few "
        "steps; ratios < 1: "
        "bf16 is faster. *auto picks* is the rule of `cmkd.precision.gains_from_bf16` on a "
        "bf16 CPU: bf16 for a network with a trainable convolution, for others from 1M "
        "trainable parameters on.",
        "",
        *table(HEADER_BY_SOURCE, rows),
        "",
    ]


def bf16_accuracy_lines(b: dict[str, Any]) -> list[str]:
    """The paired accuracy check of bf16 against fp32 (added to the store from a grid):
    {source, seeds, fp32, bf16 (test accuracies, fractions, paired by seed), margin_points}."""
    models = (
        f"per seed the mean over the {b['models']} models trained at both precisions "
        f"(pairs {' and '.join(b['pairs'])}), "
        if b.get("models")
        else ""
    )
    head = (
        f"Test accuracy of the same runs at bf16-mixed and at 32-true, paired by "
        f"seed ({len(b['seeds'])} seeds: {b['seeds']}), {models}from {b['source']}; Δ: bf16 "
        "minus fp32 in points with its 95 % t interval."
    )
    return _paired_lines(head, ("fp32 test acc %", "bf16 test acc %", "Δ bf16 - fp32"),
                         b["fp32"], b["bf16"])  # fmt: skip


def ska_every_lines(e: dict[str, Any]) -> list[str]:
    """The paired accuracy check of SKA on every k-th step against every step (added to the
    store from a grid): {source, seeds, rows [approx, exact], scenarios, approx, exact}."""
    approx, exact = e["rows"]
    head = (
        f"Test accuracy of *{approx}* against *{exact}*, paired by seed ({len(e['seeds'])} "
        f"seeds: {e['seeds']}), per seed the mean over the grid's {len(e['scenarios'])} "
        f"scenarios ({', '.join(e['scenarios'])}), from {e['source']}; Δ in points with its "
        "95 % t interval. Per scenario: the grid's page."
    )
    return _paired_lines(head, (f"{exact} %", f"{approx} %", "Δ"), e["exact"], e["approx"])


def _paired_lines(head: str, columns: tuple[str, ...], base: list, other: list) -> list[str]:
    """A paired accuracy check: its description, then one row of both means and other - base
    with its interval (accuracies as fractions, paired by seed)."""
    found = interval([x - y for x, y in zip(other, base, strict=True)])
    delta = "n/a" if found is None else f"{found[0]:+.1f} [{found[1]:+.1f}, {found[2]:+.1f}]"
    return [head, "", *table(list(columns), [[mean_std(base), mean_std(other), delta]]), ""]


def checkpoints_lines(c: dict[str, Any]) -> list[str]:
    rows = []
    for name, e in c["students"].items():
        b, n, a = e["before"], e["now"], e["async"]
        rows.append(
            [name, f"{num(e['epoch_seconds'])} s",
             f"{num(b['seconds'], 3)}, {100 * b['share']:.1f} %",
             f"{num(n['seconds'], 3)}, {100 * n['share']:.1f} %",
             f"{num(a['seconds'], 3)}, {100 * a['share']:.1f} %",
             f"{num(b['best_mb'], 1)} / {num(n['best_mb'], 1)}",
             f"{num(b['last_mb'], 1)} / {num(n['last_mb'], 1)}", num(e["load"])]
        )  # fmt: skip
    return [
        f"KD from a {c['teacher']} MS teacher, EuroSAT paired, {c['epochs']} epochs per run. "
        "*Before*: what cmkd 0.1 wrote at every epoch end, timed in the same epochs (the full "
        "state with the teacher's weights and the optimiser to last.ckpt, and to best.ckpt when "
        "validation improved, both fsynced); *now*: the run's own checkpoints (weights-only "
        "best.ckpt, teacher referenced by path); *async*: a second run with "
        "`run.async_checkpoints`. Seconds per epoch on the training thread, and their share of "
        "epoch + checkpoint.",
        "",
        *table(
            [
                "student",
                "epoch",
                "before: s, share",
                "now: s, share",
                "async: s, share",
                "best MB before / now",
                "last MB before / now",
                "load",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
