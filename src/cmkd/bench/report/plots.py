"""The figures of a grid's page, one set per table. Whether a figure belongs on the page is
decided from the store alone (`Plot.applies`), so the page text never depends on what else is
on disk. Bars, accuracy against time and validation curves are drawn from the store; the
confusion matrices, the matched-pairs gallery and the embeddings need the checkpoints, pair
lists and data of the run folders, and where those are gone their files are kept as they are.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmkd.bench.figures import figure, save_figure
from cmkd.bench.report.tables import CONTROLS, Table, best_method, mean, paired
from cmkd.bench.scenarios import NO_KD, TEACHER
from cmkd.bench.store import slug
from cmkd.errors import CmkdError
from cmkd.stats import interval


class DataCache:
    """Prepared splits and models, loaded once per report (several plots read the same)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def prepared(self, data: dict[str, Any], seed: int):
        from cmkd.config import DataConfig
        from cmkd.data.datamodule import prepare_data

        key = json.dumps([data, seed], sort_keys=True, default=str)
        if key not in self.data:
            self.data[key] = prepare_data(DataConfig(**data), seed)
        return self.data[key]

    def model_and_rows(self, checkpoint: str, split: str):
        from cmkd.recipes import load_model

        model, hp = load_model(checkpoint)
        rows = self.prepared(hp["data"], hp["seed"]).rows(hp["modality"], split)
        return model, rows


def first_seed(info: dict[str, Any]) -> int:
    return (info.get("seeds") or [0])[0]


def human_title(table: Table, info: dict) -> str:
    """The scenario's title (not its id) and the architecture pair, for figure titles."""
    import textwrap

    title = info.get("scenarios", {}).get(table.scenario, {}).get("title") or table.scenario
    arch = table.arch
    pair = f"{arch.get('teacher', '?')} teacher, {arch.get('student', '?')} student"
    return textwrap.fill(f"{title}; {pair}", 75)


def _run_dir(record: dict[str, Any]) -> Path:
    return Path(record["result"]["checkpoint"]).parents[1]


def _paired_run(record: dict[str, Any]) -> bool:
    """Whether the run kept a pair list (every pairing but the identity one does)."""
    return record["result"].get("pairing") not in (None, "paired")


# --- from the store ---------------------------------------------------------------------------


def forest_rows(table: Table) -> list[tuple[str, str, list[float]]]:
    """(row label, baseline label, paired differences) for every method row against no KD and
    against each control, in table order: what the forest plot draws."""
    out = []
    for row in table.rows:
        if not row.is_method or not row.cells:
            continue
        for base_label in (NO_KD, *CONTROLS):
            base = table.row(base_label)
            if base is None or base is row or row.label in CONTROLS and base_label != NO_KD:
                continue
            diffs = paired(row, base)
            if len(diffs) > 1:
                out.append((row.label, base_label, diffs))
    return out


def plot_forest(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """Per method, the mean paired difference of best-on-val test accuracy to no KD (and to
    each control) with its 95 % interval: the 1-point differences a 0-100 % bar chart hides."""
    rows = forest_rows(table)
    plt, fig, axes = figure(size=(9, 0.32 * len(rows) + 1.6))
    ax = axes[0][0]
    colors = {NO_KD: "tab:blue", CONTROLS[0]: "tab:orange", CONTROLS[1]: "tab:green"}
    labels = []
    for y, (label, base, diffs) in enumerate(reversed(rows)):
        m, lo, hi = interval(diffs)
        ax.errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", color=colors[base], capsize=3)
        labels.append(f"{label}  − {base.replace('student, ', '')}  (n={len(diffs)})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("paired difference in test accuracy, points (best on validation)")
    ax.set_title(human_title(table, info), fontsize=9)
    save_figure(fig, path)


def _fit_points(table: Table) -> list[tuple[str, float, float]]:
    points = []
    for r in table.rows:
        fit = mean(r.values(lambda c: c["result"].get("fit_seconds")))
        if r.cells and fit:
            points.append((r.label, fit, 100 * statistics.fmean(r.acc().values())))
    return points


def plot_acc_time(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """Mean fit seconds against mean best-on-val test accuracy, one marker per row, named in
    the legend (labels written beside points overlap)."""
    plt, fig, axes = figure(size=(7.5, 4))
    ax = axes[0][0]
    markers = "osD^v<>pPX*h"
    for k, (label, fit, acc) in enumerate(_fit_points(table)):
        ax.scatter(fit, acc, marker=markers[k % len(markers)], s=40, label=label)
    ax.set_xlabel("mean fit seconds")
    ax.set_ylabel("test acc % (best on val)")
    ax.set_title(human_title(table, info), fontsize=9)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    save_figure(fig, path)


def _curves(table: Table, seed: int) -> list[tuple[str, list[int], list[float]]]:
    """(label, epochs, val acc) of every row but the teacher, from the store's first-seed
    cells (the store keeps their validation curves)."""
    out = []
    for r in table.rows:
        rec = r.cells.get(seed)
        if rec is not None and r.label != TEACHER and rec.get("val_curve"):
            epochs, values = rec["val_curve"]
            out.append((r.label, epochs, values))
    return out


def plot_curves(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """Validation accuracy per epoch of the first seed's no-KD student and every method."""
    seed = first_seed(info)
    plt, fig, axes = figure(size=(6.5, 4))
    ax = axes[0][0]
    for label, e, v in _curves(table, seed):
        ax.plot(e, [100 * x for x in v], label=label, lw=2.5 if label == NO_KD else 1.2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc %")
    ax.set_title(f"{human_title(table, info)}, seed {seed}", fontsize=9)
    ax.legend(fontsize=6)
    save_figure(fig, path)


# --- from the run folders ---------------------------------------------------------------------


def _confusion_rows(table: Table, seed: int) -> list:
    base = table.row(NO_KD)
    return [r for r in (base, best_method(table, seed)) if r is not None and seed in r.cells]


def plot_confusion(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """Test confusion matrices (row-normalised) of the no-KD student and the best method."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    from cmkd.models.inference import predict

    seed = first_seed(info)
    panels = _confusion_rows(table, seed)
    plt, fig, axes = figure(1, len(panels), size=(5 * len(panels), 4.6))
    for ax, row in zip(axes[0], panels, strict=True):
        model, rows = ctx.model_and_rows(row.cells[seed]["result"]["checkpoint"], "test")
        pred = predict(model, rows.x, fields=("logits",)).logits.argmax(1)
        target = torch.as_tensor(rows.y).long()
        k = len(rows.classes)
        cm = multiclass_confusion_matrix(pred, target, k, normalize="true").numpy()
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(k), rows.classes, rotation=90, fontsize=6)
        ax.set_yticks(range(k), rows.classes, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = 100 * (pred == target).float().mean().item()
        ax.set_title(f"{row.label}: acc {acc:.1f} %", fontsize=8)
    save_figure(fig, path)


def to_image(x):
    """A displayable HxW or HxWx3 array in [0, 1] of one sample: 1 channel as gray (MNIST, a
    log-mel spectrogram), 3 as RGB, 13 (EuroSAT MS) as bands B04, B03, B02; each stretched
    between its own 2nd and 98th percentile, since raw reflectances are far from [0, 1]."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise CmkdError(f"cannot show a sample of shape {x.shape} as an image")
    if x.shape[0] == 13:
        x = x[[3, 2, 1]]
    elif x.shape[0] not in (1, 3):
        x = x[:1]
    lo, hi = np.percentile(x, [2, 98])
    x = np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def _gallery_row(table: Table, seed: int):
    # Matched (SSM / teacher-embedding, SemBridge) pairs are the interesting ones; a
    # class-random list is shown only when no matched run exists.
    matched = best_method(
        table, seed, lambda r: str(r["result"].get("pairing")).startswith("matched")
    )
    return matched or best_method(table, seed, _paired_run)


def plot_gallery(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """Eight student training samples (one per class, round robin) above the teacher samples
    they were matched with, from the best method that kept a pair list: whether the pairs look
    alike is what a matcher is for, and no accuracy shows it."""
    from cmkd.pairing import PairList
    from cmkd.recipes import load_model

    seed = first_seed(info)
    row = _gallery_row(table, seed)
    rec = row.cells[seed]
    pairs = PairList.load(_run_dir(rec) / "pairs.json")
    _, s_hp = load_model(rec["result"]["checkpoint"])
    _, t_hp = load_model(rec["result"]["teacher_checkpoint"])
    student = ctx.prepared(s_hp["data"], s_hp["seed"]).rows(s_hp["modality"], "train")
    teacher = ctx.prepared(t_hp["data"], t_hp["seed"]).rows(t_hp["modality"], "train")
    s_index = {str(i): k for k, i in enumerate(student.ids)}
    t_index = {str(i): k for k, i in enumerate(teacher.ids)}
    by_class: dict[int, list[int]] = {}
    for k, label in enumerate(pairs.student_labels):
        if pairs.teacher_labels[k] >= 0:  # under a class map, uncovered students have none
            by_class.setdefault(int(label), []).append(k)
    chosen: list[int] = []
    while len(chosen) < min(8, len(pairs.student_ids)):
        for ks in by_class.values():
            if ks and len(chosen) < 8:
                chosen.append(ks.pop(0))
    plt, fig, axes = figure(2, len(chosen), size=(1.1 * len(chosen), 2.8))
    for col, k in enumerate(chosen):
        s = student.x[s_index[str(pairs.student_ids[k])]]
        t = teacher.x[t_index[str(pairs.teacher_ids[k])]]
        for r, (sample, who) in enumerate(((s, s_hp["modality"]), (t, t_hp["modality"]))):
            ax = axes[r][col]
            img = to_image(sample)
            # a spectrogram's low frequencies at the bottom, as it is usually drawn
            origin = "lower" if who == "audio" else "upper"
            cmap = "gray" if img.ndim == 2 else None
            # nearest: the samples' own pixels, and a PNG a tenth the size of a smoothed one
            ax.imshow(img, cmap=cmap, aspect="auto", origin=origin, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{'student' if r == 0 else 'teacher'}\n{who}", fontsize=7)
        axes[0][col].set_title(pairs.classes[int(pairs.student_labels[k])][:12], fontsize=6)
    fig.suptitle(
        f"{human_title(table, info)}\nrow '{row.label}', pair list from {pairs.method}, "
        f"seed {seed}",
        fontsize=8,
    )
    save_figure(fig, path)


def pca_2d(emb):
    """The first two principal components (numpy SVD of the centred embeddings)."""
    import numpy as np

    centred = emb - emb.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _embedding_row(table: Table, seed: int):
    return best_method(table, seed, lambda r: bool(r["result"].get("teacher_checkpoint")))


def plot_embeddings(table: Table, path: Path, info: dict, ctx: DataCache) -> None:
    """PCA of the teacher's embeddings of its test samples beside the best method's student
    embeddings of its own test samples, coloured by class."""
    import numpy as np

    from cmkd.models.inference import predict

    seed = first_seed(info)
    row = _embedding_row(table, seed)
    rec = row.cells[seed]
    panels = [
        ("teacher", rec["result"]["teacher_checkpoint"]),
        (f"student, {row.label}", rec["result"]["checkpoint"]),
    ]
    plt, fig, axes = figure(1, 2, size=(9, 4))
    for ax, (who, ckpt) in zip(axes[0], panels, strict=True):
        model, rows = ctx.model_and_rows(ckpt, "test")
        emb = predict(model, rows.x, fields=("embedding",)).embedding.float().numpy()
        xy, y = pca_2d(emb), rows.y
        if len(y) > 2000:  # MNIST's 10,000: a fixed subset draws the same picture, smaller
            keep = np.random.default_rng(0).choice(len(y), 2000, replace=False)
            xy, y = xy[keep], y[keep]
        colors = plt.get_cmap("tab10" if len(rows.classes) <= 10 else "tab20")
        for k, name in enumerate(rows.classes):  # one colour per class in both panels
            ax.scatter(*xy[y == k].T, s=5, color=colors(k % colors.N), label=name)
        shown = f"{len(y):,}" + (f" of {len(rows.y):,}" if len(y) < len(rows.y) else "")
        ax.set_title(f"{who} ({shown} test samples)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.legend(fontsize=5, loc="center left", bbox_to_anchor=(1, 0.5), markerscale=2)
    save_figure(fig, path)


# --- which plots, where -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    title: str
    draw: Callable[[Table, Path, dict, DataCache], None]
    missing: Callable[[Table, int], str | None]
    """Why the store has nothing to draw for a table (None: it has)."""
    needs_runs: bool = False
    """Drawn from the run folders, not from the store."""
    caption: str = ""
    """What the marks are, under the figure on the page ({n}: seeds, {seed}: first seed)."""

    def file(self, table: Table) -> str:
        return f"{table.slug}_{slug(self.title.split(',')[0].split(' (')[0])}.png"


def _none_if(ok: bool, reason: str) -> str | None:
    return None if ok else reason


PLOTS = [
    Plot(
        "paired differences (forest plot)",
        plot_forest,
        lambda t, s: _none_if(bool(forest_rows(t)), "fewer than 2 paired seeds per method"),
        caption="Dots: mean paired difference of test accuracy (best-on-validation weights), "
        "in points, between the row's method and no KD (blue), the teacher-free control "
        "(orange) or the class-mean control (green), over the n seeds both have (same split, "
        "same initialisation); whiskers: 95 % t interval. Right of 0 and clear of it: better.",
    ),
    Plot(
        "accuracy against training time",
        plot_acc_time,
        lambda t, s: _none_if(bool(_fit_points(t)), "no finished cells with a fit time"),
        caption="One marker per row: mean fit seconds over seeds against mean test accuracy "
        "(best-on-validation weights).",
    ),
    Plot(
        "validation curves (first seed)",
        plot_curves,
        lambda t, s: _none_if(bool(_curves(t, s)), f"no validation curves of seed {s} stored"),
        caption="Validation accuracy per epoch of seed {seed}, one line per row; the thick "
        "line is the no-KD student.",
    ),
    Plot(
        "confusion matrices (first seed)",
        plot_confusion,
        lambda t, s: _none_if(bool(_confusion_rows(t, s)), f"no no-KD or method cell, seed {s}"),
        needs_runs=True,
        caption="Test confusion matrices of seed {seed}, rows normalised to 1: the no-KD "
        "student and the method with the best mean accuracy.",
    ),
    Plot(
        "matched pairs",
        plot_gallery,
        lambda t, s: _none_if(_gallery_row(t, s) is not None, f"no paired method run, seed {s}"),
        needs_runs=True,
        caption="Top: student training samples (one per class); bottom: the teacher sample "
        "each was paired with, seed {seed}.",
    ),
    Plot(
        "embeddings, PCA (first seed)",
        plot_embeddings,
        lambda t, s: _none_if(_embedding_row(t, s) is not None, f"no method cell, seed {s}"),
        needs_runs=True,
        caption="First two principal components of the teacher's and the best method's "
        "student's embeddings of their test samples, seed {seed}, coloured by class.",
    ),
]
