"""`cmkd bench softcmkd`: soft-constrained CMKD (methods.md section 2, a reconstruction) on
real scenarios, with clean and with partly corrupted teacher inputs.

Rows: no KD, the hard L2 feature constraint (margin 0, l2: the ablation), the margin feature
constraint (cosine, m = 0.2), + the classifier-level constraint, + quality weights. Every
distillation row uses CE weight 1 and the same pairing (paired twins on EuroSAT, class-random
pairs between speech and images). In the corrupted condition a seeded share of the teacher's
training inputs is degraded at distillation time (the teacher was trained on clean data) and
each "+ quality weights" run saves the quality of every teacher sample, from which the page
reports how well each quality source tells corrupted from clean samples (AUROC) and the mean
weight the two groups received, with a histogram plot.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cmkd.bench.report import save_figure
from cmkd.config import CorruptionConfig, DistillConfig, PairingConfig, QualityConfig, TermConfig
from cmkd.errors import CmkdError
from cmkd.io import write_atomic

NO_KD = "student, no KD"
HARD = "hard L2 feature KD (m = 0, l2)"
MARGIN = "margin feature KD (m = 0.2, cosine)"
CLASSIFIER = "+ classifier level"
QUALITY = "+ quality weights"
SOURCES = ("confidence", "norm", "dropout")


@dataclass(frozen=True)
class Corruption:
    """The degradation each scenario's teacher modality gets (see cmkd.data.corruption)."""

    kind: str
    severity: float
    what: str


# Chosen so that the teacher is clearly hurt on the corrupted rows (checked on the page: the
# teacher's accuracy on clean vs corrupted rows).
CORRUPTIONS = {
    "fsdd_to_mnist": Corruption("blank", 0.5, "half the mel bands blanked to silence"),
    "mnist_to_fsdd": Corruption("noise", 1.0, "Gaussian pixel noise, 1 pixel std"),
    "eurosat_paired": Corruption("blank", 0.5, "7 of 13 MS bands blanked (dead bands)"),
    "eurosat_ms_to_rgb": Corruption("blank", 0.5, "7 of 13 MS bands blanked (dead bands)"),
    "eurosat_rgb_to_ms": Corruption("noise", 1.0, "Gaussian noise, 1 channel std"),
}


def softcmkd_methods(
    pairing: PairingConfig,
    corruption: CorruptionConfig,
    quality_source: str = "confidence",
) -> dict[str, DistillConfig]:
    """The four distillation rows of the page, all with the same pairing and corruption."""
    hard = TermConfig("soft_feature", 1.0, {"margin": 0.0, "distance": "l2"})
    margin = TermConfig("soft_feature", 1.0, {"margin": 0.2, "distance": "cosine"})
    classifier = TermConfig("soft_classifier", 0.5, {"tolerance": 1.0, "margin": 0.2})
    base = DistillConfig(ce_weight=1.0, pairing=pairing, corruption=corruption)
    return {
        HARD: replace(base, terms=[hard]),
        MARGIN: replace(base, terms=[margin]),
        CLASSIFIER: replace(base, terms=[margin, classifier]),
        QUALITY: replace(
            base, terms=[margin, classifier], quality=QualityConfig(source=quality_source)
        ),
    }


def softcmkd_grid(
    scenarios: list[str] = ["eurosat_paired", "fsdd_to_mnist", "mnist_to_fsdd"],  # noqa: B006
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 15,
    fraction: float = 0.3,
    quality_source: str = "confidence",
    backbone: str = "small_cnn",
    conditions: list[str] = ["clean", "corrupted"],  # noqa: B006
    output_dir: str = "runs/bench/softcmkd",
    page: str = "benchmarks/softcmkd.md",
    command: str | None = None,
) -> None:
    """Soft-constrained CMKD against no KD and the hard L2 ablation, clean and with a share of
    the teacher's inputs corrupted; writes `page` and a weight plot beside it.

    Args:
        scenarios: fsdd_to_mnist, mnist_to_fsdd, eurosat_paired, eurosat_ms_to_rgb,
            eurosat_rgb_to_ms (see cmkd.comparison.SCENARIOS).
        seeds: One split, teacher and student set per seed.
        epochs: Epochs of every teacher and student.
        fraction: Share of the teacher's training inputs corrupted in the corrupted condition.
        quality_source: confidence, norm or dropout, for the "+ quality weights" row.
        backbone: Teacher and student backbone.
        conditions: clean and/or corrupted.
        output_dir: Runs and per-grid results.
        page: The markdown results page (its plot goes beside it).
        command: The command line written at the top of the page (default: rebuilt from the
            arguments that differ from their defaults).
    """
    from cmkd.comparison import SCENARIOS, compare_students

    unknown = sorted(set(scenarios) - set(CORRUPTIONS)) + sorted(
        set(conditions) - {"clean", "corrupted"}
    )
    if unknown:
        raise CmkdError(
            f"unknown scenario or condition {unknown}; scenarios: {sorted(CORRUPTIONS)}, "
            "conditions: clean, corrupted"
        )
    if command is None:
        given = dict(scenarios=scenarios, seeds=seeds, epochs=epochs, fraction=fraction,
                     quality_source=quality_source, backbone=backbone, conditions=conditions,
                     output_dir=output_dir, page=page)  # fmt: skip
        command = _command(given)
    sections: list[str] = []
    weights: dict[str, list[dict[str, np.ndarray]]] = {}
    plot = Path(page).with_name(Path(page).stem + "-weights.png")
    for name in scenarios:
        sc = SCENARIOS[name]
        pairing = PairingConfig("paired" if sc.teacher_data == sc.student_data else "class_random")
        spec = CORRUPTIONS[name]
        # One grid per scenario: the clean and the corrupted rows share each seed's teacher
        # and no-KD student (the corruption only touches the teacher's inputs at distillation).
        methods: dict[str, DistillConfig] = {}
        for condition in conditions:
            corruption = (
                CorruptionConfig(spec.kind, fraction, spec.severity, seed=0)
                if condition == "corrupted"
                else CorruptionConfig()
            )
            for label, cfg in softcmkd_methods(pairing, corruption, quality_source).items():
                methods[row_label(label, condition)] = cfg
        out = Path(output_dir) / name
        table = compare_students(
            methods=methods,
            seeds=list(seeds),
            epochs=epochs,
            output_dir=str(out),
            scenario=sc,
            backbone=backbone,
        )
        corrupted_what = (
            f"{100 * fraction:.0f} % of the teacher's training inputs corrupted at distillation "
            f"time: {spec.what} (`{spec.kind}`, severity {spec.severity})"
        )
        sections += [
            f"## {name}\n",
            f"{sc.title}; pairing `{pairing.strategy}`. Rows marked *corrupted*: {corrupted_what}; "
            "the teacher, the no-KD student and the other rows see clean data.\n",
            table,
            effects_table(out / "results.json", conditions),
        ]
        for condition in conditions:
            records = quality_records(out / "results.json", row_label(QUALITY, condition))
            if records:
                sections.append(f"**{condition}**: " + quality_table(records, quality_source))
            if condition == "corrupted" and records:
                weights[name] = records
                plot_weights(weights, plot)
        # Written after every scenario, so an interrupted benchmark still leaves its page.
        write_page(page, command, seeds, epochs, backbone, quality_source, sections, weights)
    print(f"Saved {page}" + (f" and {plot}" if weights else ""))


def _command(given: dict) -> str:
    """`cmkd bench softcmkd` with the arguments that differ from softcmkd_grid's defaults."""
    import inspect

    defaults = inspect.signature(softcmkd_grid).parameters
    parts = ["cmkd bench softcmkd"]
    for name, value in given.items():
        if value != defaults[name].default:
            text = json.dumps(value).replace('"', "") if isinstance(value, list) else value
            parts.append(f"--{name} '{text}'" if isinstance(value, list) else f"--{name} {text}")
    return " ".join(parts)


def effects_table(results_json: Path, conditions: list[str]) -> str:
    """Paired per-seed differences between neighbouring rows (what each step adds) and between
    each row's corrupted and clean runs (what the corruption costs), test accuracy of the
    best-on-validation weights, mean and 95 % t interval in points."""
    from cmkd.stats import mean_ci

    if not Path(results_json).is_file():
        return ""
    runs = json.loads(Path(results_json).read_text())["runs"]
    acc = {label: [r["best"]["test"]["acc"] for r in rs] for label, rs in runs.items()}

    def diff(a: str, b: str) -> str:
        if a not in acc or b not in acc or len(acc[a]) != len(acc[b]):
            return "—"
        return mean_ci([x - y for x, y in zip(acc[a], acc[b], strict=True)])

    steps = [(MARGIN, HARD), (CLASSIFIER, MARGIN), (QUALITY, CLASSIFIER)]
    lines = [
        "| comparison | " + " | ".join(conditions) + " |",
        "| --- | " + " | ".join("---" for _ in conditions) + " |",
    ]
    for a, b in steps:
        cells = [diff(row_label(a, c), row_label(b, c)) for c in conditions]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    if set(conditions) == {"clean", "corrupted"}:
        lines += ["", "| row | corrupted − clean |", "| --- | --- |"]
        for label in (HARD, MARGIN, CLASSIFIER, QUALITY):
            lines.append(f"| {label} | {diff(row_label(label, 'corrupted'), label)} |")
    head = (
        "Paired differences (points, best-on-validation test accuracy, mean [95 % t interval] "
        "over seeds):\n\n"
    )
    return head + "\n".join(lines) + "\n"


def row_label(label: str, condition: str) -> str:
    return label if condition == "clean" else f"{label}, corrupted"


def write_page(page, command, seeds, epochs, backbone, quality_source, sections, weights) -> None:
    plot = Path(page).with_name(Path(page).stem + "-weights.png")
    head = [
        "# Soft-constrained CMKD, clean and corrupted teacher inputs",
        "",
        f"`{command}`",
        "",
        f"Budget: {len(seeds)} seeds {list(seeds)}, {epochs} epochs, {backbone} teacher and "
        "students, Adam 1e-3 (the shared comparison settings), 2 CPU cores. Rows: "
        f"{HARD}; {MARGIN}; {CLASSIFIER} (AM-Softmax through the teacher's frozen classifier, "
        f"s 16, m 0.2, plus a logit term tolerant within 1.0, weight 0.5); {QUALITY} (source "
        f"`{quality_source}`, mean 1 per batch, on both terms). CE weight 1 in every row. The "
        "soft constraints are cmkd's reconstruction (methods.md section 2; no equations are "
        "public).",
        "",
    ]
    if weights:
        head += [f"![clean vs corrupted weights]({plot.name})", ""]
    write_atomic(Path(page), "\n".join(head) + "\n" + "\n".join(sections))


def quality_records(results_json: Path, label: str) -> list[dict[str, np.ndarray]]:
    """The quality.npz of every seed's `label` run listed in a comparison's results.json."""
    if not Path(results_json).is_file():
        return []
    runs = json.loads(Path(results_json).read_text())["runs"].get(label, [])
    records = []
    for result in runs:
        path = Path(result["checkpoint"]).parents[1] / "quality.npz"
        if path.is_file():
            with np.load(path) as f:
                records.append({k: f[k] for k in f.files})
    return records


def separation(record: dict[str, np.ndarray]) -> dict[str, float]:
    """How one run's teacher samples split into clean and corrupted: the teacher's accuracy on
    each, the AUROC of each quality source for 'is clean' (nan without corruption), and the
    mean weight each group received in training."""
    from cmkd.methods.quality import auroc

    bad, used = record["corrupted"].astype(bool), record["times_used"] > 0
    out = {
        "acc_clean": float(record["correct"][~bad].mean()),
        "acc_corrupted": float(record["correct"][bad].mean()) if bad.any() else float("nan"),
        "w_clean": float(np.mean(record["mean_weight"][used & ~bad])),
        "w_corrupted": float(np.mean(record["mean_weight"][used & bad]))
        if (used & bad).any()
        else float("nan"),
    }
    for source in SOURCES:
        out[f"auroc_{source}"] = auroc(record[source], ~bad)
    return out


def _fmt(values: list[float], pct: bool = False, digits: int = 2) -> str:
    vals = [v * (100 if pct else 1) for v in values if not np.isnan(v)]
    if not vals:
        return "—"
    d = 1 if pct else digits
    if len(vals) < 2:
        return f"{vals[0]:.{d}f}"
    return f"{statistics.fmean(vals):.{d}f} ± {statistics.stdev(vals):.{d}f}"


def quality_table(records: list[dict[str, np.ndarray]], source: str) -> str:
    """The teacher-sample quality of the '+ quality weights' runs, mean ± std over seeds."""
    seps = [separation(r) for r in records]
    col = lambda key: [s[key] for s in seps]  # noqa: E731
    lines = [
        f"Teacher samples in the `{QUALITY}` runs ({len(records)} seeds, weights from "
        f"`{source}`): teacher accuracy on its clean and corrupted training rows, AUROC of each "
        "quality source for telling clean from corrupted (1 = every clean sample above every "
        "corrupted one, 0.5 = chance, < 0.5 = the wrong way round), and the mean weight each "
        "group received in training.",
        "",
        "| teacher acc, clean rows | teacher acc, corrupted rows | AUROC confidence "
        "| AUROC norm | AUROC dropout | mean weight, clean | mean weight, corrupted |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {_fmt(col('acc_clean'), pct=True)} | {_fmt(col('acc_corrupted'), pct=True)} "
        f"| {_fmt(col('auroc_confidence'))} | {_fmt(col('auroc_norm'))} "
        f"| {_fmt(col('auroc_dropout'))} | {_fmt(col('w_clean'))} | {_fmt(col('w_corrupted'))} |",
        "",
    ]
    return "\n".join(lines)


def plot_weights(weights: dict[str, list[dict[str, np.ndarray]]], path: Path) -> None:
    """Histograms of the mean training weight per teacher sample, clean vs corrupted, one
    panel per scenario, seeds pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(weights), figsize=(4.2 * len(weights), 3.2), squeeze=False)
    for ax, (name, records) in zip(axes[0], weights.items(), strict=True):
        w = np.concatenate([r["mean_weight"] for r in records])
        bad = np.concatenate([r["corrupted"] for r in records]).astype(bool)
        ok = ~np.isnan(w)
        bins = np.linspace(np.nanmin(w), np.nanmax(w), 31)
        ax.hist(w[ok & ~bad], bins=bins, alpha=0.6, density=True, label="clean")
        ax.hist(w[ok & bad], bins=bins, alpha=0.6, density=True, label="corrupted")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("mean quality weight in training")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
