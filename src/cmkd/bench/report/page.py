"""The report of a benchmark grid (`cmkd report GRID_DIR`): one Markdown page with a table per
scenario x architecture pair, a summary line under each, and plots beside the page.

Everything is read from the results store (grid.json and cells/), so a grid that is still
running can be reported at any time: the page says how many cells of how many are done, and
paired differences use only the seeds present on both sides. A difference counts as a win only
when its 95 % interval excludes 0, because with few seeds a mean gain of a point or two is
mostly split-to-split noise. The two controls (the same loss against a teacher-free soft label
and against the teacher's class-mean outputs) tell a cross-modal gain from mere regularisation
or class-level knowledge, so each method is also compared with them.

Plots that need only the records (bars, accuracy against time, training curves) are cheap;
those that need checkpoints and data (confusion matrix, matching gallery, embeddings) are best
effort: when something is missing the page says what was skipped and why.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from cmkd.bench.grid import CONTROL_CM, CONTROL_TF, ORACLE, PAIRS, SEMBRIDGE
from cmkd.bench.store import Store, slug
from cmkd.comparison import NO_KD, TEACHER
from cmkd.errors import CmkdError
from cmkd.io import write_atomic
from cmkd.stats import mean_ci, mean_std

CONTROLS = (CONTROL_TF, CONTROL_CM)
WIN = "✓"
DPI = 100


@dataclass
class Row:
    """One line of a table: a label and its finished cells by seed."""

    label: str
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)

    def acc(self, which: str = "best") -> dict[int, float]:
        return {s: r["result"][which]["test"]["acc"] for s, r in self.cells.items()}

    def values(self, get: Callable[[dict[str, Any]], Any]) -> list[float]:
        out = [get(r) for _, r in sorted(self.cells.items())]
        return [float(v) for v in out if v is not None]

    @property
    def is_method(self) -> bool:
        return self.label not in (TEACHER, NO_KD)


@dataclass
class Table:
    scenario: str
    arch: dict[str, Any]
    rows: list[Row]

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    @property
    def slug(self) -> str:
        return f"{slug(self.scenario)}_{slug(self.arch['name'])}"


# --- statistics -------------------------------------------------------------------------------


def paired(a: Row, b: Row, which: str = "best") -> list[float]:
    """a - b per seed (fractions), over the seeds both rows have: same split, same seed."""
    xa, xb = a.acc(which), b.acc(which)
    return [xa[s] - xb[s] for s in sorted(set(xa) & set(xb))]


def interval(diffs: list[float]) -> tuple[float, float, float] | None:
    """Mean and 95 % t interval of paired differences, in points; None below two pairs (the
    same formula as cmkd.comparison.mean_ci, which writes the text)."""
    if len(diffs) < 2:
        return None
    pct = [100 * d for d in diffs]
    mean = statistics.fmean(pct)
    half = stats.t.ppf(0.975, len(pct) - 1) * statistics.stdev(pct) / len(pct) ** 0.5
    return mean, mean - half, mean + half


def _delta(diffs: list[float]) -> str:
    return f"{mean_ci(diffs)} n={len(diffs)}" if diffs else "—"


def wins(a: Row, baseline: Row | None) -> bool:
    """True only where the interval of a - baseline (best-on-val) lies entirely above 0."""
    if baseline is None:
        return False
    ci = interval(paired(a, baseline))
    return ci is not None and ci[1] > 0


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


# --- loading ----------------------------------------------------------------------------------


def _schedule(name: str) -> str:
    return "constant" if name == "none" else f"{name} schedule"


def _span(seeds: list[int]) -> str:
    """[10, 11, ..., 40] as '10-40' when consecutive."""
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 2 else str(s)


def _minutes(records: list[dict[str, Any]]) -> str:
    return f"{sum(r.get('wall_seconds') or 0 for r in records) / 60:.1f}"


def load_info(root: Path, records: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """grid.json, or (for a store written before grid.json existed) what the cells tell: the
    scenarios, architecture groups and methods found, in a canonical order."""
    path = root / "grid.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), None
        except json.JSONDecodeError as err:
            raise CmkdError(f"{path} is not valid JSON ({err})") from None
    scenarios: dict[str, None] = {}
    methods: dict[str, list[str]] = {}
    archs: dict[str, None] = {}
    backbones: dict[str, dict[str, str]] = {}
    for r in records:
        scenarios.setdefault(r["scenario"])
        g = r["group"]
        if r["method"] == PAIRS:
            continue
        if g.startswith("teacher-") or g.startswith("student-"):
            side, name = g.split("-", 1)
            backbones.setdefault(r["scenario"], {})[side] = name
            continue
        archs.setdefault(g)
        labels = methods.setdefault(r["scenario"], [])
        if r["method"] not in labels:
            labels.append(r["method"])

    def order(label: str) -> tuple[int, str]:
        if label in CONTROLS:
            return 4 + CONTROLS.index(label), label
        return (3 if label == ORACLE else 2 * (SEMBRIDGE in label)), label

    sides = next(iter(backbones.values()), {})
    info = {
        "name": records[0].get("grid", root.name) if records else root.name,
        "description": "",
        "command": "",
        "scenarios": {s: {"title": s} for s in scenarios},
        "methods": {s: sorted(m, key=order) for s, m in methods.items()},
        "architectures": [
            {"name": a, "teacher": sides.get("teacher", "?"), "student": sides.get("student", "?")}
            for a in archs
        ],
        "seeds": sorted({r["seed"] for r in records}),
        "paper": {},
    }
    note = (
        "No grid.json in the store (written by an older `cmkd bench grid`): scenarios, methods "
        "and seeds are those found among the cells, so the total below counts only those."
    )
    return info, note


def expected_cells(info: dict[str, Any]) -> set[tuple[str, str, str, int]]:
    """The training cells (scenario, group, method, seed) the grid will have, pair lists not
    counted: per scenario and seed one teacher per teacher backbone, one no-KD student per
    student backbone and every method per architecture pair."""
    keys = set()
    for sc in info["scenarios"]:
        extra = (info.get("extra_seeds") or {}).get(sc, [])
        for seed in info["seeds"] + [s for s in extra if s not in info["seeds"]]:
            for a in info["architectures"]:
                keys.add((sc, f"teacher-{a['teacher']}", TEACHER, seed))
                keys.add((sc, f"student-{a['student']}", NO_KD, seed))
                keys |= {(sc, a["name"], m, seed) for m in info["methods"].get(sc, [])}
    return keys


def build_tables(info: dict[str, Any], records: list[dict[str, Any]]) -> list[Table]:
    cells: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in records:
        cells.setdefault((r["scenario"], r["group"], r["method"]), {})[r["seed"]] = r
    tables = []
    for sc in info["scenarios"]:
        for arch in info["architectures"]:
            rows = [
                Row(TEACHER, cells.get((sc, f"teacher-{arch['teacher']}", TEACHER), {})),
                Row(NO_KD, cells.get((sc, f"student-{arch['student']}", NO_KD), {})),
            ]
            rows += [
                Row(m, cells.get((sc, arch["name"], m), {})) for m in info["methods"].get(sc, [])
            ]
            tables.append(Table(sc, arch, rows))
    return tables


# --- the page ---------------------------------------------------------------------------------

COLUMNS = [
    "method",
    "n",
    "test acc % (best on val)",
    "test acc % (last epoch)",
    "macro F1 % (best on val)",
    "Δ vs no-KD, best on val",
    "Δ vs no-KD, last epoch",
    "Δ vs teacher-free",
    "Δ vs class-mean",
    "wins",
    "time × no-KD",
    "samples/s",
    "peak RSS MiB",
    "teacher share",
    "paper",
]


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def render_table(table: Table, paper: dict[str, float]) -> list[str]:
    """The Markdown table of one scenario x architecture pair and its summary line."""
    base = table.row(NO_KD)
    controls = {c: table.row(c) for c in CONTROLS}
    base_fit = _mean(base.values(lambda r: r["result"].get("fit_seconds"))) if base else None
    gpu = any("peak_gpu_mib" in r for row in table.rows for r in row.cells.values())
    header = COLUMNS + ["peak GPU MiB"] * gpu
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        if not row.cells:
            cols = [row.label, "0", "not run yet"] + [""] * (len(COLUMNS) - 4)
            cols += [_fmt(paper.get(row.label), ".1f")] + [""] * gpu
            lines.append("| " + " | ".join(cols) + " |")
            continue
        best = row.values(lambda r: r["result"]["best"]["test"]["acc"])
        last = row.values(lambda r: r["result"]["last"]["test"]["acc"])
        f1 = row.values(lambda r: r["result"]["best"]["test"]["f1_macro"])
        vs_base = row.is_method and base is not None and row.cells
        fit = _mean(row.values(lambda r: r["result"].get("fit_seconds")))
        share = _mean(row.values(lambda r: r.get("teacher_share")))
        cols = [
            row.label,
            str(len(row.cells)),
            mean_std(best),
            mean_std(last),
            mean_std(f1),
            _delta(paired(row, base, "best")) if vs_base else "",
            _delta(paired(row, base, "last")) if vs_base else "",
        ]
        for c in CONTROLS:
            ctrl = controls[c]
            compare = row.is_method and row.label not in CONTROLS and ctrl is not None
            cols.append(_delta(paired(row, ctrl)) if compare else "")
        cols += [
            WIN if row.is_method and wins(row, base) else "",
            _fmt(fit / base_fit if fit and base_fit else None, ".2f", "×"),
            _fmt(_mean(row.values(lambda r: r.get("samples_per_second")))),
            _fmt(_mean(row.values(lambda r: r.get("peak_rss_mib")))),
            _fmt(None if share is None else 100 * share, ".0f", " %"),
            _fmt(paper.get(row.label), ".1f"),
        ]
        if gpu:
            cols.append(_fmt(_mean(row.values(lambda r: r.get("peak_gpu_mib")))))
        lines.append("| " + " | ".join(cols) + " |")
    return [*lines, "", summary(table)]


def summary(table: Table) -> str:
    """Which methods differ from no-KD beyond noise (either direction), and whether any beats
    both controls, in one line."""
    base = table.row(NO_KD)
    methods = [r for r in table.rows if r.is_method and r.cells]
    if base is None or not base.cells or not methods:
        return "*Summary:* not enough finished cells to compare methods with no-KD yet."
    beyond, testable = [], 0
    for row in methods:
        ci = interval(paired(row, base))
        if ci is None:
            continue
        testable += 1
        if ci[1] > 0 or ci[2] < 0:
            beyond.append(f"{row.label} ({ci[0]:+.1f})")
    if not testable:
        return "*Summary:* fewer than 2 paired seeds per method: no intervals yet."
    text = "*Summary:* 95 % CI of Δ vs no-KD (best on val) excludes 0 for " + (
        ", ".join(beyond) if beyond else "no method"
    )
    ctrls = [table.row(c) for c in CONTROLS]
    if any(c is None or not c.cells for c in ctrls):
        return text + "; controls not (yet) run, so gains cannot be told from regularisation."
    rivals = [
        r
        for r in methods
        if r.label not in CONTROLS and all(len(paired(r, c)) > 1 for c in ctrls)  # type: ignore[arg-type]
    ]
    if not rivals:
        return text + "; fewer than 2 seeds paired with both controls, so no test against them."
    champions = [r.label for r in rivals if all(wins(r, c) for c in ctrls)]
    if champions:
        return text + "; beats both controls (CI > 0 vs each): " + ", ".join(champions) + "."
    return text + "; no method beats both controls."


def machine_facts() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, GPU: {gpu}"
    )


def write_report(
    store_dir: str | Path, output: str | Path | None = None, plots: bool = True
) -> Path:
    """Write the Markdown report of a (possibly unfinished) grid and its plots; returns the
    page's path. Default: benchmarks/<grid name>.md, plots in benchmarks/<grid name>/.
    `plots=False` writes the tables alone, in seconds, e.g. to glance at a running grid."""
    root = Path(store_dir)
    records = Store(root).records()
    info, note = load_info(root, records)
    page = Path(output) if output else Path("benchmarks") / f"{info['name']}.md"
    folder = page.with_suffix("")

    trained = [r for r in records if r["method"] != PAIRS]
    n_pairs = len(records) - len(trained)
    expected = expected_cells(info)
    found = {(r["scenario"], r["group"], r["method"], r["seed"]) for r in trained}
    done, stale = len(found & expected), len(found - expected)
    lines = [f"# Benchmark: {info['name']}", ""]
    if info.get("command"):
        lines += ["```", info["command"], "```", ""]
    if info.get("description"):
        lines += [info["description"], ""]
    if note:
        lines += [f"> {note}", ""]
    status = "complete" if done == len(expected) else "**partial: the grid is unfinished**"
    lines += [
        f"- Cells: {done} of {len(expected)} training cells finished ({status}); "
        f"{n_pairs} pair list(s)"
        + (f"; {stale} stored cell(s) no longer in the grid, not shown." if stale else "."),
        f"- Budget: {info.get('epochs', '?')} epochs, matcher {info.get('matcher_epochs', '?')} "
        f"epochs, lr {info.get('lr', '?')} "
        f"({_schedule(info.get('scheduler', 'none'))}), "
        f"seeds {info.get('seeds')}"
        + "".join(
            f"; {sc} also seeds {_span(extra)}"
            for sc, extra in (info.get("extra_seeds") or {}).items()
        )
        + ".",
        f"- Machine writing this report: {machine_facts()}. "
        f"Cells with GPU memory recorded: {sum('peak_gpu_mib' in r for r in trained)}.",
        f"- Store: `{root}`. Compute: {_minutes(records)} min, the sum of every stored "
        "cell's wall time (training, pair matching); the grid's own run adds data loading and "
        "this report.",
        "",
        "Accuracies are mean ± std over seeds in %. Δ: mean paired difference in points with its "
        "95 % t interval, over the n seeds both rows have (same split, same seed). "
        f"{WIN}: the interval vs no-KD lies above 0. Time × no-KD: mean fit time relative to "
        "the no-KD student. Teacher share: time in teacher forwards / fit time.",
        "",
    ]
    ctx = _DataCache()
    for table in build_tables(info, records):
        sc_info = info["scenarios"].get(table.scenario, {})
        arch = table.arch
        lines += [
            f"## {table.scenario} — {arch['name']} "
            f"({arch.get('teacher', '?')} teacher, {arch.get('student', '?')} student)",
            "",
        ]
        if sc_info.get("title") and sc_info["title"] != table.scenario:
            lines += [sc_info["title"], ""]
        paper = info.get("paper", {})
        paper_row = paper.get(f"{table.scenario} {arch['name']}") or paper.get(table.scenario, {})
        if not any(row.cells for row in table.rows):
            lines += ["*No finished cells yet.*", ""]
            continue
        lines += render_table(table, paper_row) + [""]
        if plots:
            lines += _plots(table, folder, page.parent, info, ctx) + [""]
    write_atomic(page, "\n".join(lines))
    return page


# --- plots ------------------------------------------------------------------------------------


def _plots(table: Table, folder: Path, page_dir: Path, info: dict, ctx: _DataCache) -> list[str]:
    """Every plot of one table, each best effort: a failure becomes a note on the page."""
    out = []
    makers: list[tuple[str, Callable[[Path], str | None]]] = [
        ("accuracy per method", lambda p: plot_bars(table, p)),
        ("accuracy against training time", lambda p: plot_acc_time(table, p)),
        ("validation curves (first seed)", lambda p: plot_curves(table, p, info)),
        ("confusion matrices (first seed)", lambda p: plot_confusion(table, p, info, ctx)),
        ("matched pairs", lambda p: plot_gallery(table, p, info, ctx)),
        ("embeddings, PCA (first seed)", lambda p: plot_embeddings(table, p, info, ctx)),
    ]
    for title, make in makers:
        path = folder / f"{table.slug}_{slug(title.split(',')[0].split(' (')[0])}.png"
        try:
            skipped = make(path)
        except Exception as err:  # best effort: one missing run must not sink the page
            skipped = f"{type(err).__name__}: {err}".splitlines()[0]
        if skipped:
            path.unlink(missing_ok=True)  # never link or keep a stale plot of an earlier run
            out.append(f"- *{title}: skipped ({skipped}).*")
        else:
            out.append(f"![{title}]({os.path.relpath(path, page_dir)})")
    return out


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 3.5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return plt, fig, axes


def save_figure(fig, path: Path, dpi: int = DPI) -> None:
    """Via a temp file and a rename, so a killed report never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _title(table: Table) -> str:
    return f"{table.scenario}, {table.arch['name']}"


def plot_bars(table: Table, path: Path) -> str | None:
    """Mean ± std of the best-on-val test accuracy per row."""
    rows = [r for r in table.rows if r.cells]
    if not rows:
        return "no finished cells"
    plt, fig, axes = _figure(size=(max(5, 0.7 * len(rows) + 2), 4))
    ax = axes[0][0]
    means = [100 * statistics.fmean(r.acc().values()) for r in rows]
    stds = [100 * statistics.stdev(r.acc().values()) if len(r.cells) > 1 else 0 for r in rows]
    colors = ["tab:gray" if not r.is_method else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=colors)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("test acc % (best on val)")
    ax.set_title(_title(table), fontsize=9)
    _save(plt, fig, path)
    return None


def plot_acc_time(table: Table, path: Path) -> str | None:
    """Mean fit seconds against mean best-on-val test accuracy, one point per row."""
    points = []
    for r in table.rows:
        fit = _mean(r.values(lambda c: c["result"].get("fit_seconds")))
        if r.cells and fit:
            points.append((r.label, fit, 100 * statistics.fmean(r.acc().values())))
    if not points:
        return "no finished cells with a fit time"
    plt, fig, axes = _figure(size=(6, 4))
    ax = axes[0][0]
    for label, fit, acc in points:
        ax.scatter(fit, acc)
        ax.annotate(label, (fit, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean fit seconds")
    ax.set_ylabel("test acc % (best on val)")
    ax.set_title(_title(table), fontsize=9)
    _save(plt, fig, path)
    return None


def _run_dir(record: dict[str, Any]) -> Path:
    return Path(record["result"]["checkpoint"]).parents[1]


def _first_seed(info: dict[str, Any]) -> int:
    return (info.get("seeds") or [0])[0]


def read_curve(metrics_csv: Path, column: str = "val/acc") -> tuple[list[int], list[float]]:
    """(epochs, values) of one column of a Lightning CSVLogger file, skipping empty rows."""
    epochs, values = [], []
    with metrics_csv.open(newline="") as f:
        for line in csv.DictReader(f):
            if line.get(column) not in (None, ""):
                epochs.append(int(float(line["epoch"])))
                values.append(float(line[column]))
    return epochs, values


def plot_curves(table: Table, path: Path, info: dict[str, Any]) -> str | None:
    """Validation accuracy per epoch of the first seed's no-KD student and every method."""
    seed = _first_seed(info)
    curves = []
    for r in table.rows:
        rec = r.cells.get(seed)
        if rec is None or r.label == TEACHER:
            continue
        metrics = _run_dir(rec) / "csv" / "metrics.csv"
        if metrics.is_file():
            e, v = read_curve(metrics)
            if e:
                curves.append((r.label, e, v))
    if not curves:
        return f"no csv/metrics.csv for seed {seed}"
    plt, fig, axes = _figure(size=(6.5, 4))
    ax = axes[0][0]
    for label, e, v in curves:
        ax.plot(e, [100 * x for x in v], label=label, lw=2.5 if label == NO_KD else 1.2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc %")
    ax.set_title(f"{_title(table)}, seed {seed}", fontsize=9)
    ax.legend(fontsize=6)
    _save(plt, fig, path)
    return None


def best_method(table: Table, seed: int, need: Callable[[dict], bool] = lambda r: True):
    """The method row (no control, no oracle) with the highest mean best-on-val accuracy whose
    `seed` cell exists and satisfies `need`."""
    candidates = [
        r
        for r in table.rows
        if r.is_method and r.label not in (*CONTROLS, ORACLE) and seed in r.cells
    ]
    candidates = [r for r in candidates if need(r.cells[seed])]
    if not candidates:
        return None
    return max(candidates, key=lambda r: statistics.fmean(r.acc().values()))


class _DataCache:
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


def _forward(model, x) -> tuple[Any, Any]:
    """(predicted labels, embeddings) of raw samples, in batches, without gradients."""
    import numpy as np
    import torch

    preds, embs = [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            chunk = x[i : i + 256]
            if chunk.dtype not in (np.uint8, np.float32):
                chunk = chunk.astype(np.float32)
            out = model(torch.from_numpy(np.ascontiguousarray(chunk)))
            preds.append(out.logits.argmax(1).numpy())
            embs.append(out.embedding.float().numpy())
    return np.concatenate(preds), np.concatenate(embs)


def plot_confusion(table: Table, path: Path, info: dict, ctx: _DataCache) -> str | None:
    """Test confusion matrices (row-normalised) of the no-KD student and the best method."""
    import numpy as np

    seed = _first_seed(info)
    base = table.row(NO_KD)
    best = best_method(table, seed)
    panels = [r for r in (base, best) if r is not None and seed in r.cells]
    if not panels:
        return f"no no-KD or method cell for seed {seed}"
    plt, fig, axes = _figure(1, len(panels), size=(5 * len(panels), 4.6))
    for ax, row in zip(axes[0], panels, strict=True):
        model, rows = ctx.model_and_rows(row.cells[seed]["result"]["checkpoint"], "test")
        pred, _ = _forward(model, rows.x)
        k = len(rows.classes)
        cm = np.zeros((k, k))
        np.add.at(cm, (rows.y, pred), 1)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(k), rows.classes, rotation=90, fontsize=6)
        ax.set_yticks(range(k), rows.classes, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{row.label}: acc {100 * (pred == rows.y).mean():.1f} %", fontsize=8)
    _save(plt, fig, path)
    return None


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


def plot_gallery(table: Table, path: Path, info: dict, ctx: _DataCache) -> str | None:
    """Eight student training samples (one per class, round robin) above the teacher samples
    they were matched with, from the best matched method whose run kept a pairs.json: whether
    the pairs look alike is what a matcher is for, and no accuracy shows it."""
    from cmkd.matching.pairs import PairList
    from cmkd.recipes import load_model

    seed = _first_seed(info)
    kept = lambda r: (_run_dir(r) / "pairs.json").is_file()  # noqa: E731
    # Matched (SSM / teacher-embedding, SemBridge) pairs are the interesting ones; a
    # class-random list is shown only when no matched run exists.
    row = best_method(table, seed, lambda r: kept(r) and r["result"].get("pairing") == "matched")
    row = row or best_method(table, seed, kept)
    if row is None:
        return f"no method run of seed {seed} kept a pairs.json"
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
        by_class.setdefault(int(label), []).append(k)
    chosen: list[int] = []
    while len(chosen) < min(8, len(pairs.student_ids)):
        for ks in by_class.values():
            if ks and len(chosen) < 8:
                chosen.append(ks.pop(0))
    plt, fig, axes = _figure(2, len(chosen), size=(1.1 * len(chosen), 2.8))
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
    fig.suptitle(f"{_title(table)}: {row.label} pairs ({pairs.method}), seed {seed}", fontsize=8)
    _save(plt, fig, path)
    return None


def pca_2d(emb):
    """The first two principal components (numpy SVD of the centred embeddings)."""
    import numpy as np

    centred = emb - emb.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_embeddings(table: Table, path: Path, info: dict, ctx: _DataCache) -> str | None:
    """PCA of the teacher's embeddings of its test samples beside the best method's student
    embeddings of its own test samples, coloured by class."""
    import numpy as np

    seed = _first_seed(info)
    row = best_method(table, seed, lambda r: bool(r["result"].get("teacher_checkpoint")))
    if row is None:
        return f"no method cell of seed {seed} with a teacher checkpoint"
    rec = row.cells[seed]
    panels = [
        ("teacher", rec["result"]["teacher_checkpoint"]),
        (f"student, {row.label}", rec["result"]["checkpoint"]),
    ]
    plt, fig, axes = _figure(1, 2, size=(9, 4))
    for ax, (who, ckpt) in zip(axes[0], panels, strict=True):
        model, rows = ctx.model_and_rows(ckpt, "test")
        _, emb = _forward(model, rows.x)
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
    _save(plt, fig, path)
    return None


# --- CLI --------------------------------------------------------------------------------------


def report_command(grid_dir: str, output: str | None = None, plots: bool = True) -> None:
    """Write the Markdown report (tables, summaries, plots) of a benchmark grid's results
    store; a grid still running is reported as far as it got.

    Args:
        grid_dir: The grid's output folder (runs/bench/<name>), holding grid.json and cells/.
        output: The page (default benchmarks/<grid name>.md; plots in a folder beside it).
        plots: Also draw the plots (false: the tables alone, much faster).
    """
    page = write_report(grid_dir, output, plots)
    print(f"Saved {page}")
