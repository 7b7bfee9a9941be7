"""The page of `cmkd bench discomkd`: one section per scenario, rendered from the page's
compact store, which holds every scenario run into it (each run adds or replaces its own)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from cmkd.bench.discomkd.scenarios import DCK, FUSED, SINGLE, _scenarios
from cmkd.bench.pagestore import read_store, store_path
from cmkd.stats import mean_ci, mean_std

PAGE_HEAD = """# DisCoM-KD against single-modality training and logit KD

Produced by `cmkd bench discomkd --config configs/bench/discomkd/NAME.yaml --page PAGE` per
section (the exact command heads each section); each run adds its section to the compact
store beside the page, from which `cmkd report PAGE` renders the whole page again.

What each row is (see `src/cmkd/bench/discomkd/`):
- **single-modality**: cross-entropy on the modality alone, same backbone (the size baseline).
- **DisCoM-KD**: one joint training of all modalities (methods.md section 3); each modality's
  student (two encoders + projection head + its task head) selected on its own validation split
  (weighted F1) and exported alone.
- **X (other teacher)**: KD, DKD, MLKD or CTKD (`+ LSKD`: logits z-scored first) from a
  single-modality teacher of another modality, the one with the best validation accuracy
  (shown after ←), which never saw the student's samples in the student's modality; pairs are
  random same-class teacher samples (the modalities share only labels).
- **X (fused teacher)**: the same losses from an early-fusion multi-modal teacher (one network on
  the concatenated views, trained on the same training samples), paired by sample.

Scores on each modality's test split, never used for any choice; mean ± std over seeds in %;
Δ: per-seed paired difference to single-modality training in points, mean and 95 % t interval
(an interval excluding 0 is a difference the seeds support). Budgets are far below the paper's
(300 epochs at lr 1e-4, ResNet-18, GPU): every model here gets 30 epochs at lr 1e-3 on a 2-core
CPU. Every section runs the full comparison: KD, DKD, MLKD and CTKD, each without and with
LSKD, from the other modality's teacher and from the multi-modal teacher (none on digits: no
sample there exists in both modalities). Two runs with one seed on one machine give identical
scores; another CPU may pick other float kernels, so a rerun there can move single runs.
Each section's commands say exactly what ran; the headline (single-modality against DisCoM-KD)
ran on more seeds (`--methods '[]' --teachers '[]'`) than the KD rows, and a row with fewer
seeds than its section says so (its Δ pairs with single-modality over its own seeds).
"""


def compact_record(record: dict[str, Any]) -> dict[str, Any]:
    """A scenario's run record as the page needs it: per cell the scores, size, teacher and
    fit time (no checkpoints), per modality its name and backbone."""

    def cell(c: dict[str, Any]) -> dict[str, Any]:
        best = {k: c["best"]["test"][k] for k in ("acc", "f1_weighted")}
        out = {"best": {"test": best}, "last": {"test": {"acc": c["last"]["test"]["acc"]}}}
        return {**out, **{k: c[k] for k in ("parameters", "teacher", "fit_seconds") if k in c}}

    settings = dict(record["settings"])
    settings["modalities"] = [
        {"name": m["name"], "model": {"backbone": m["model"]["backbone"]}}
        for m in settings["modalities"]
    ]
    seeds = {
        seed: {row: {m: cell(c) for m, c in cells.items()} for row, cells in rows.items()}
        for seed, rows in record["seeds"].items()
    }
    keep = {k: record[k] for k in ("scenario", "title", "note", "wall_seconds") if k in record}
    return {**keep, "settings": settings, "seeds": seeds}


def _page_sections(page: str) -> dict[str, str]:
    """A rendered page's sections by title (the text from "## title" to the next "## ")."""
    sections: dict[str, str] = {}
    for chunk in page.split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0]
        sections[title] = "## " + chunk.rstrip("\n") + "\n"
    return sections


def add_scenario(page: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The page's store with `record`'s scenario added or replaced. A page written before it
    had a store keeps its other sections: their text goes into the store as it stands
    (`legacy_sections`) until their scenarios are run again."""
    if store_path(page).is_file():
        store = read_store(page)
    else:
        store = {"kind": "discomkd", "scenarios": {}}
        if page.is_file():
            store["legacy_sections"] = _page_sections(page.read_text())
    store["scenarios"][record["scenario"]] = compact_record(record)
    legacy = store.get("legacy_sections", {})
    legacy.pop(record["title"], None)
    if "legacy_sections" in store and not legacy:
        del store["legacy_sections"]
    return store


def commands_of(settings: dict[str, Any]) -> list[str]:
    """The commands that added a section's cells, in order (a store written before sections
    kept several holds one `command`)."""
    return list(settings.get("commands") or filter(None, [settings.get("command")]))


def _ms(values: list[float]) -> str:
    return mean_std(values) if values else ""


def _runs(record: dict[str, Any], seeds: list[str], m: str, row: str) -> dict[str, dict]:
    """Seed -> cell of one row and modality, over the seeds that have it."""
    return {s: record["seeds"][s][row][m] for s in seeds if m in record["seeds"][s].get(row, {})}


def _paired(rows: dict[str, dict], base: dict[str, dict], key: str) -> str:
    """Mean row - base over the seeds both have (same split, same seed), with its interval."""
    both = [s for s in rows if s in base]
    if not both:
        return ""
    return mean_ci([rows[s]["best"]["test"][key] - base[s]["best"]["test"][key] for s in both])


def _summary(record: dict[str, Any], seeds: list[str], names: list[str]) -> list[str]:
    """Per modality: single-modality training against DisCoM-KD (best-on-validation weights)."""
    lines = [
        "| modality | single-modality acc | DisCoM-KD acc | Δ acc [95 % CI] | single weighted F1 "
        "| DisCoM-KD weighted F1 | Δ weighted F1 [95 % CI] | parameters single / DisCoM-KD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in names:
        single, dck = _runs(record, seeds, m, SINGLE), _runs(record, seeds, m, DCK)
        if not single or single.keys() != dck.keys():
            continue
        cells = []
        for key in ("acc", "f1_weighted"):
            a = [r["best"]["test"][key] for r in single.values()]
            b = [r["best"]["test"][key] for r in dck.values()]
            cells += [_ms(a), _ms(b), _paired(dck, single, key)]
        first = next(iter(single))
        size = f"{single[first]['parameters']:,} / {dck[first]['parameters']:,}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {size} |")
    return [*lines, ""]


def render_section(record: dict[str, Any]) -> str:
    """One scenario's markdown: a table per modality, seeds as rows' samples."""
    st = record["settings"]
    seeds = sorted(record["seeds"], key=int)
    names = [m["name"] for m in st["modalities"]]
    backbone = {m["name"]: m["model"]["backbone"] for m in st["modalities"]}
    lines = [
        f"## {record['title']}",
        "",
        f"{len(seeds)} seeds ({', '.join(seeds)}); every model: Adam lr {st['lr']:g}, "
        f"{st['epochs']} epochs, batch {st['batch_size']} (per modality for DisCoM-KD). "
        f"{record.get('note', '')}",
    ]
    commands = commands_of(st)
    if len(commands) == 1:
        lines += ["", f"Command: `{commands[0]}`"]
    elif commands:
        lines += [
            "",
            "Commands, in the order they ran (each adds the seeds and rows it names; "
            "finished cells are kept):",
            "",
        ]
        lines += [f"- `{c}`" for c in commands]
    lines.append("")
    row_names: list[str] = []
    for seed in seeds:
        for row in record["seeds"][seed]:
            if row not in row_names and not row.startswith("teacher: "):
                row_names.append(row)
    order = [SINGLE, DCK] + [r for r in row_names if r not in (SINGLE, DCK)]
    fused_rows = list(_runs(record, seeds, FUSED, "teacher: " + FUSED).values())
    if fused_rows:
        accs = [r["best"]["test"]["acc"] for r in fused_rows]
        some = f" ({len(accs)} of {len(seeds)} seeds)" if len(accs) != len(seeds) else ""
        lines += [
            f"Early-fusion multi-modal teacher (all views concatenated, {backbone[names[0]]}): "
            f"test acc {_ms(accs)} %{some}, {fused_rows[0]['parameters']:,} parameters.",
            "",
        ]
    lines += _summary(record, seeds, names)
    for m in names:
        runs = partial(_runs, record, seeds, m)
        single = runs(SINGLE)
        lines += [
            f"### {m} ({backbone[m]})",
            "",
            "| model | parameters | test acc, best-on-val | weighted F1, best-on-val "
            "| test acc, last epoch | Δ acc vs single [95 % CI] | Δ weighted F1 vs single "
            "[95 % CI] |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in order:
            by_seed = runs(row)
            if not by_seed:
                continue
            rs = list(by_seed.values())
            acc = [r["best"]["test"]["acc"] for r in rs]
            f1 = [r["best"]["test"]["f1_weighted"] for r in rs]
            last = [r["last"]["test"]["acc"] for r in rs]
            d_acc = d_f1 = ""
            if row != SINGLE:
                d_acc = _paired(by_seed, single, "acc")
                d_f1 = _paired(by_seed, single, "f1_weighted")
            teacher = ""
            if "teacher" in rs[0] and row.endswith("(other teacher)"):
                ts = sorted({r["teacher"] for r in rs})
                teacher = f" ← {'/'.join(ts)}"
            if len(rs) != len(seeds):
                teacher += f" (only {len(rs)} of {len(seeds)} seeds; Δ over those)"
            lines.append(
                f"| {row}{teacher} | {rs[0]['parameters']:,} | {_ms(acc)} | {_ms(f1)} "
                f"| {_ms(last)} | {d_acc} | {d_f1} |"
            )
        lines.append("")
    wall = record.get("wall_seconds")
    if wall:
        lines += [f"Wall time {wall / 60:.0f} min on a shared 2-core CPU, 1 torch thread.", ""]
    return "\n".join(lines)


def render_discomkd(store: dict[str, Any], page: Path) -> str:
    """The head, then a section per scenario in the scenarios' order (a section kept from a
    page older than its store stands where its scenario would)."""
    titles = {name: sc.title for name, sc in _scenarios().items()}
    stored = store["scenarios"]
    legacy = store.get("legacy_sections", {})
    parts = [PAGE_HEAD]
    for name in [*titles, *sorted(set(stored) - set(titles))]:
        if name in stored:
            parts.append(render_section(stored[name]))
        elif titles.get(name) in legacy:
            parts.append(legacy[titles[name]])
    return "\n".join(parts)
