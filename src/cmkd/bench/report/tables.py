"""The tables of a grid's page: one per scenario x architecture pair, a row per method with
its cells by seed, paired differences to no-KD and to the controls, and a summary line.

A difference counts as a win only when its 95 % interval excludes 0, because with few seeds a
mean gain of a point or two is mostly split-to-split noise. The two controls (the same loss
against a teacher-free soft label and against the teacher's class-mean outputs) tell a
cross-modal gain from mere regularisation or class-level knowledge, so each method is also
compared with them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmkd.bench.report.coverage import COLUMNS as COVERAGE_COLUMNS
from cmkd.bench.report.coverage import GROUPS, covered_classes, group_acc, group_paired
from cmkd.bench.scenarios import CONTROL_CM, CONTROL_TF, NO_KD, ORACLE, PAIRS, SEMBRIDGE, TEACHER
from cmkd.bench.store import side_group, slug
from cmkd.stats import interval, mean_ci, mean_std, width

CONTROLS = (CONTROL_TF, CONTROL_CM)
WIN = "✓"


@dataclass
class Row:
    """One line of a table: a label and its finished cells by seed."""

    label: str
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)

    def acc(self, which: str = "best") -> dict[int, float]:
        return {
            s: r["result"][which]["test"]["acc"]
            for s, r in self.cells.items()
            if which in r["result"]
        }

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
    covered: tuple[str, ...] | None = None
    """Under a class map, the student classes it covers (the page scores them apart)."""

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


def _interval(diffs: list[float]) -> tuple[float, float, float] | None:
    """The paired interval (cmkd.stats.interval), only from two pairs on: one pair has no
    spread, so it can never count as a win."""
    return interval(diffs) if len(diffs) > 1 else None


def _delta(diffs: list[float]) -> str:
    return f"{mean_ci(diffs)} n={len(diffs)}" if diffs else "—"


def wins(a: Row, baseline: Row | None) -> bool:
    """True only where the interval of a - baseline (best-on-val) lies entirely above 0."""
    if baseline is None:
        return False
    ci = _interval(paired(a, baseline))
    return ci is not None and ci[1] > 0


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


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


# --- loading ----------------------------------------------------------------------------------


def info_from_cells(root: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """For a store written before grid.json existed: what the cells tell (the scenarios,
    architecture groups and methods found, in a canonical order)."""
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
    return {
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
        "note": (
            "No grid.json in the store (written by an older `cmkd bench grid`): scenarios, "
            "methods and seeds are those found among the cells, so the total below counts only "
            "those."
        ),
    }


def _side(info: dict[str, Any], arch: dict[str, Any], side: str) -> str:
    """The group of an architecture pair's teacher or no-KD cells (cmkd.bench.store.side_group)."""
    grid_precision = info.get("precision") or "32-true"
    return side_group(side, arch[side], arch.get("precision"), grid_precision)


def expected_cells(info: dict[str, Any]) -> set[tuple[str, str, str, int]]:
    """The training cells (scenario, group, method, seed) the grid will have, pair lists not
    counted: per scenario and seed one teacher per teacher backbone (or one per shared teacher
    seed, `teacher_seeds`), one no-KD student per student backbone and every method per
    architecture pair."""
    keys = set()
    for sc in info["scenarios"]:
        extra = (info.get("extra_seeds") or {}).get(sc, [])
        shared = (info.get("teacher_seeds") or {}).get(sc)
        for seed in info["seeds"] + [s for s in extra if s not in info["seeds"]]:
            for a in info["architectures"]:
                teacher_seed = shared[seed % len(shared)] if shared else seed
                keys.add((sc, _side(info, a, "teacher"), TEACHER, teacher_seed))
                keys.add((sc, _side(info, a, "student"), NO_KD, seed))
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
                Row(TEACHER, cells.get((sc, _side(info, arch, "teacher"), TEACHER), {})),
                Row(NO_KD, cells.get((sc, _side(info, arch, "student"), NO_KD), {})),
            ]
            rows += [
                Row(m, cells.get((sc, arch["name"], m), {})) for m in info["methods"].get(sc, [])
            ]
            covered = covered_classes(info["scenarios"].get(sc, {}))
            tables.append(Table(sc, arch, rows, covered))
    return tables


# --- rendering --------------------------------------------------------------------------------

COLUMNS = [
    "method",
    "pairing",
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


PAIRING_NAMES = {
    "paired": "same sample",
    "class_random": "class-random",
    "matched": "matched (pair list)",
    "unpaired": "unpaired zip",
}


def pairing_name(row: Row) -> str:
    """How the row's student samples found their teacher samples, in words ('' for rows
    without a teacher). A trailing '+dynm' is DynM re-matching."""
    found = {c["result"].get("pairing") for c in row.cells.values()} - {None}
    if not found:
        return ""
    strategy = sorted(found)[0]
    base, _, dynm = strategy.partition("+")
    name = PAIRING_NAMES.get(base, base)
    if row.label == ORACLE:
        name = "true twins"
    return name + (" + DynM" if dynm else "")


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def render_table(table: Table, paper: dict[str, float]) -> list[str]:
    """The Markdown table of one scenario x architecture pair and its summary line."""
    base = table.row(NO_KD)
    controls = {c: table.row(c) for c in CONTROLS}
    base_fit = mean(base.values(lambda r: r["result"].get("fit_seconds"))) if base else None
    gpu = any("peak_gpu_mib" in r for row in table.rows for r in row.cells.values())
    groups = table.covered is not None
    at = COLUMNS.index("Δ vs no-KD, last epoch") + 1  # the class groups after overall accuracy
    header = COLUMNS[:at] + list(COVERAGE_COLUMNS) * groups + COLUMNS[at:]
    header += ["peak GPU MiB"] * gpu
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        if not row.cells:
            cols = [row.label, "", "0", "not run yet"] + [""] * (len(header) - 5 - gpu)
            cols += [_fmt(paper.get(row.label), ".1f")] + [""] * gpu
            lines.append("| " + " | ".join(cols) + " |")
            continue
        best = row.values(lambda r: r["result"]["best"]["test"]["acc"])
        last = row.values(lambda r: r["result"]["last"]["test"]["acc"])
        f1 = row.values(lambda r: r["result"]["best"]["test"]["f1_macro"])
        vs_base = row.is_method and base is not None and row.cells
        fit = mean(row.values(lambda r: r["result"].get("fit_seconds")))
        share = mean(row.values(lambda r: r.get("teacher_share")))
        cols = [
            row.label,
            pairing_name(row),
            str(len(row.cells)),
            mean_std(best),
            mean_std(last),
            mean_std(f1),
            _delta(paired(row, base, "best")) if vs_base else "",
            _delta(paired(row, base, "last")) if vs_base else "",
        ]
        if groups:
            cols += _group_columns(row, base, table.covered, bool(vs_base))
        for c in CONTROLS:
            ctrl = controls[c]
            compare = row.is_method and row.label not in CONTROLS and ctrl is not None
            cols.append(_delta(paired(row, ctrl)) if compare else "")
        cols += [
            WIN if row.is_method and wins(row, base) else "",
            _fmt(fit / base_fit if fit and base_fit else None, ".2f", "×"),
            _fmt(mean(row.values(lambda r: r.get("samples_per_second")))),
            _fmt(mean(row.values(lambda r: r.get("peak_rss_mib")))),
            _fmt(None if share is None else 100 * share, ".0f", " %"),
            _fmt(paper.get(row.label), ".1f"),
        ]
        if gpu:
            cols.append(_fmt(mean(row.values(lambda r: r.get("peak_gpu_mib")))))
        lines.append("| " + " | ".join(cols) + " |")
    groups_line = ["", group_summary(table)] if table.covered is not None else []
    return [*lines, "", summary(table), *groups_line]


def _group_columns(row: Row, base: Row | None, covered: tuple[str, ...], vs_base: bool):
    """Accuracy on the covered and on the uncovered classes (best-on-validation weights), each
    with its paired difference to no KD."""
    cols = []
    for group in GROUPS:
        acc = list(group_acc(row.cells, covered, group).values())
        diffs = group_paired(row.cells, base.cells, covered, group) if vs_base and base else []
        cols += [mean_std(acc) if acc else "—", _delta(diffs) if vs_base else ""]
    return cols


def group_summary(table: Table) -> str:
    """Per class group (covered, uncovered), the methods whose difference to no KD lies beyond
    noise, in one line."""
    base = table.row(NO_KD)
    if base is None or not base.cells or table.covered is None:
        return ""
    parts = []
    for group in GROUPS:
        beyond = []
        for row in (r for r in table.rows if r.is_method and r.cells):
            ci = _interval(group_paired(row.cells, base.cells, table.covered, group))
            if ci is not None and (ci[1] > 0 or ci[2] < 0):
                beyond.append(f"{row.label} ({ci[0]:+.1f})")
        parts.append(f"on {group} classes for " + (", ".join(beyond) or "no method"))
    return (
        "*By class group:* 95 % CI of Δ vs no-KD (best on val) excludes 0 " + "; ".join(parts) + "."
    )


def summary(table: Table) -> str:
    """Which methods differ from no-KD beyond noise (either direction), and whether any beats
    both controls, in one line."""
    base = table.row(NO_KD)
    methods = [r for r in table.rows if r.is_method and r.cells]
    if base is None or not base.cells or not methods:
        return "*Summary:* not enough finished cells to compare methods with no-KD yet."
    beyond, testable = [], 0
    for row in methods:
        ci = _interval(paired(row, base))
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


SELECTIONS = (
    ("best", "best on validation (cmkd)"),
    ("last", "last epoch"),
    ("best_on_test", "best on test (authors' protocol)"),
)


def render_selection(table: Table) -> list[str]:
    """Test accuracy under three ways of picking the epoch, with the paired difference to no KD
    in each: best on validation (what cmkd reports), the last epoch, and the epoch best on the
    test split itself, which is how the SemBridge authors pick theirs. Empty when the store
    holds no per-epoch test scores."""
    rows = [r for r in table.rows if r.cells]
    if not any("best_on_test" in c["result"] for r in rows for c in r.cells.values()):
        return []
    base = table.row(NO_KD)
    head = ["method", "n"]
    for _, name in SELECTIONS:
        head += [f"test acc %, {name}", f"Δ vs no-KD, {name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cols = [row.label, str(len(row.cells))]
        for which, _ in SELECTIONS:
            have = all(which in c["result"] for c in row.cells.values())
            acc = row.values(lambda r, w=which: r["result"][w]["test"]["acc"]) if have else []
            delta = ""
            if have and row.is_method and base is not None and base.cells:
                delta = _delta(paired(row, base, which))
            cols += [mean_std(acc) if acc else "—", delta]
        lines.append("| " + " | ".join(cols) + " |")
    note = (
        "*Picking the epoch on the test split (last two columns) reuses the test set for "
        "model selection: it overstates every score and is shown only to compare with "
        "published numbers that were chosen that way. cmkd never selects anything on test; "
        "its results are the first columns.*"
    )
    return [*lines, "", note]


def render_contrasts(table: Table, contrasts: dict[str, list[str]]) -> list[str]:
    """The grid's contrasts (row A - row B, paired by seed) on this table, for best-on-val and
    last-epoch weights; empty when none applies (a row missing from this scenario)."""
    lines = []
    for label, (a, b) in contrasts.items():
        row_a, row_b = table.row(a), table.row(b)
        if row_a is None or row_b is None:
            continue
        best, last = paired(row_a, row_b, "best"), paired(row_a, row_b, "last")
        spread = f"{width(best):.1f}" if len(best) > 1 else "—"
        lines.append(f"| {label} | {a} − {b} | {_delta(best)} | {_delta(last)} | {spread} |")
    if not lines:
        return []
    head = [
        "| contrast | rows | Δ, best on val | Δ, last epoch | 95 % interval width, best on val |",
        "|---|---|---|---|---|",
    ]
    return [*head, *lines]


def render_architecture_contrasts(
    tables: list[Table], contrasts: dict[str, list[str]]
) -> list[str]:
    """The grid's architecture contrasts (pair A - pair B, e.g. the same backbones at bf16 and at
    fp32) on one scenario's tables: every row the two share (teacher, no KD, each method), paired
    by seed, for best-on-val and last-epoch weights; empty when neither pair has cells here."""
    by_name = {t.arch["name"]: t for t in tables}
    lines = []
    for label, (a, b) in contrasts.items():
        if a not in by_name or b not in by_name:
            continue
        for row_a in by_name[a].rows:
            row_b = by_name[b].row(row_a.label)
            if row_b is None:
                continue
            best, last = paired(row_a, row_b, "best"), paired(row_a, row_b, "last")
            if not best:
                continue
            spread = f"{width(best):.1f}" if len(best) > 1 else "—"
            lines.append(
                f"| {label} | {row_a.label} | {_delta(best)} | {_delta(last)} | {spread} |"
            )
    if not lines:
        return []
    head = [
        "| contrast | row | Δ, best on val | Δ, last epoch | 95 % interval width, best on val |",
        "|---|---|---|---|---|",
    ]
    return [*head, *lines]
