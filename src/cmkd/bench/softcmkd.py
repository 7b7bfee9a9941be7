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

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cmkd.bench.compare import compare_students, comparison_table
from cmkd.bench.figures import figure, save_figure
from cmkd.bench.pagestore import publish, read_store
from cmkd.bench.scenarios import SCENARIOS
from cmkd.config import CorruptionConfig, DistillConfig, PairingConfig, QualityConfig, TermConfig
from cmkd.errors import CmkdError
from cmkd.stats import mean_ci

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
    *,
    scenarios: list[str],
    seeds: list[int],
    scenario_seeds: dict[str, int] | None,
    epochs: int,
    fraction: float,
    quality_source: str,
    backbone: str,
    conditions: list[str],
    output_dir: str,
    page: str | None,
    command: str,
    echo: Callable = print,
) -> Path:
    """Soft-constrained CMKD against no KD and the hard L2 ablation, clean and with a share of
    the teacher's inputs corrupted; writes the page (default output_dir/softcmkd.md, its store
    beside it, rewritten after every scenario) and the weight plot beside it. Arguments and
    their defaults: `cmkd bench softcmkd` (cmkd.bench.commands.softcmkd)."""
    scenario_seeds = scenario_seeds or {}
    unknown = sorted(set(scenarios) - set(CORRUPTIONS)) + sorted(
        set(conditions) - {"clean", "corrupted"}
    )
    if unknown:
        raise CmkdError(
            f"unknown scenario or condition {unknown}; scenarios: {sorted(CORRUPTIONS)}, "
            "conditions: clean, corrupted"
        )
    odd = {k: v for k, v in scenario_seeds.items() if k not in scenarios or int(v) < 2}
    if odd:
        raise CmkdError(
            f"scenario_seeds {odd}: each key must be one of the scenarios run {scenarios} and "
            "each count at least 2 (a paired interval needs two seeds)"
        )
    page_path = Path(page or Path(output_dir) / "softcmkd.md")
    store: dict[str, Any] = {
        "kind": "softcmkd",
        "command": command,
        "seeds": list(seeds),
        **({"scenario_seeds": dict(scenario_seeds)} if scenario_seeds else {}),
        "epochs": epochs,
        "backbone": backbone,
        "quality_source": quality_source,
        "conditions": list(conditions),
        "scenarios": {},
    }
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
        compare_students(
            methods=methods,
            seeds=list(range(scenario_seeds[name])) if name in scenario_seeds else list(seeds),
            epochs=epochs,
            output_dir=str(out),
            scenario=sc,
            backbone=backbone,
            echo=echo,
        )
        comparison = read_store(out / "results.md")
        quality = {
            condition: [
                separation(r) for r in quality_records(comparison, row_label(QUALITY, condition))
            ]
            for condition in conditions
        }
        store["scenarios"][name] = {
            "title": sc.title,
            "pairing": pairing.strategy,
            "fraction": fraction,
            "corruption": asdict(spec),
            "comparison": comparison,
            "quality": quality,
        }
        # Written after every scenario, so an interrupted benchmark still leaves its page.
        publish(page_path, store, render_softcmkd)
        draw_softcmkd_plot(store, page_path, echo)
    echo(f"Saved {page_path}")
    return page_path


def effects_table(runs: dict[str, list[dict]], conditions: list[str]) -> str:
    """Paired per-seed differences between neighbouring rows (what each step adds) and between
    each row's corrupted and clean runs (what the corruption costs), test accuracy of the
    best-on-validation weights, mean and 95 % t interval in points. `runs`: a comparison's
    runs by row label."""
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


def _plot_path(page: Path) -> Path:
    return page.with_name(page.stem + "-weights.png")


def _weighted(store: dict[str, Any]) -> list[str]:
    """The scenarios whose corrupted '+ quality weights' runs have teacher-sample qualities."""
    return [n for n, s in store["scenarios"].items() if s["quality"].get("corrupted")]


def _more_seeds(store: dict[str, Any]) -> str:
    more = store.get("scenario_seeds") or {}
    if not more:
        return ""
    named = ", ".join(f"{name} seeds 0-{n - 1}" for name, n in more.items())
    return f" ({named}: more seeds where the paired intervals needed them)"


def render_softcmkd(store: dict[str, Any], page: Path) -> str:
    """The page of a softcmkd store: the budget, then per scenario the comparison table, the
    paired effects and the teacher-sample quality of the quality-weighted runs."""
    source = store["quality_source"]
    seeds = store["seeds"]
    head = [
        "# Soft-constrained CMKD, clean and corrupted teacher inputs",
        "",
        f"`{store['command']}`",
        "",
        f"Budget: {len(seeds)} seeds {seeds}{_more_seeds(store)}, {store['epochs']} epochs, "
        f"{store['backbone']} "
        "teacher and students, Adam 1e-3 (the shared comparison settings), 2 CPU cores. Rows: "
        f"{HARD}; {MARGIN}; {CLASSIFIER} (AM-Softmax through the teacher's frozen classifier, "
        f"s 16, m 0.2, plus a logit term tolerant within 1.0, weight 0.5); {QUALITY} (source "
        f"`{source}`, mean 1 per batch, on both terms). CE weight 1 in every row. The "
        "soft constraints are cmkd's reconstruction (methods.md section 2; no equations are "
        "public).",
        "",
    ]
    if _weighted(store):
        head += [f"![clean vs corrupted weights]({_plot_path(page).name})", ""]
    sections: list[str] = []
    for name, part in store["scenarios"].items():
        spec = part["corruption"]
        corrupted_what = (
            f"{100 * part['fraction']:.0f} % of the teacher's training inputs corrupted at "
            f"distillation time: {spec['what']} (`{spec['kind']}`, severity {spec['severity']})"
        )
        sections += [
            f"## {name}\n",
            f"{part['title']}; pairing `{part['pairing']}`. Rows marked *corrupted*: "
            f"{corrupted_what}; the teacher, the no-KD student and the other rows see clean "
            "data.\n",
            comparison_table(part["comparison"]),
            effects_table(part["comparison"]["runs"], store["conditions"]),
        ]
        for condition in store["conditions"]:
            seps = part["quality"].get(condition)
            if seps:
                sections.append(f"**{condition}**: " + quality_table(seps, source))
    return "\n".join(head) + "\n" + "\n".join(sections)


def draw_softcmkd_plot(store: dict[str, Any], page: Path, echo: Callable = print) -> None:
    """The weight histograms, from the quality.npz files of the run folders; where those are
    gone the plot is kept as it is."""
    names = _weighted(store)
    if not names:
        return
    weights = {}
    for name in names:
        comparison = store["scenarios"][name]["comparison"]
        records = quality_records(comparison, row_label(QUALITY, "corrupted"))
        if not records:
            echo(f"{_plot_path(page)}: kept as it is (no quality.npz of {name} on disk)")
            return
        weights[name] = records
    plot_weights(weights, _plot_path(page))


def quality_records(comparison: dict[str, Any], label: str) -> list[dict[str, np.ndarray]]:
    """The quality.npz of every seed's `label` run of a comparison's store (found through the
    run folders of its checkpoints; none where those are gone)."""
    runs = comparison["runs"].get(label, [])
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


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for telling `positive` rows from the others (ties
    count half); nan unless both groups are present."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    # Into [0, 1] keeping order and ties: torchmetrics takes scores outside it for logits and
    # squashes them with a sigmoid, which ties all large ones (embedding norms) at 1.
    span = scores.max() - scores.min()
    scores = (scores - scores.min()) / (span if span > 0 else 1)
    return float(binary_auroc(scores, torch.as_tensor(positive).long()))


def _fmt(values: list[float], pct: bool = False, digits: int = 2) -> str:
    vals = [v * (100 if pct else 1) for v in values if not np.isnan(v)]
    if not vals:
        return "—"
    d = 1 if pct else digits
    if len(vals) < 2:
        return f"{vals[0]:.{d}f}"
    return f"{statistics.fmean(vals):.{d}f} ± {statistics.stdev(vals):.{d}f}"


def quality_table(seps: list[dict[str, float]], source: str) -> str:
    """The teacher-sample quality of the '+ quality weights' runs (their `separation`s), mean
    ± std over seeds."""
    col = lambda key: [s[key] for s in seps]  # noqa: E731
    lines = [
        f"Teacher samples in the `{QUALITY}` runs ({len(seps)} seeds, weights from "
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
    plt, fig, axes = figure(1, len(weights), size=(4.2 * len(weights), 3.2))
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
    save_figure(fig, path, dpi=110)
