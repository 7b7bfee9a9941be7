"""`cmkd bench discomkd`: DisCoM-KD against single-modality training and logit KD baselines.

Per scenario and seed, with one split by sample for modalities of one source and the same
optimiser, epochs and batch size for every model:
- single-modality training of each modality (`train_classifier`);
- DisCoM-KD: one joint training, every modality's student selected on its own validation split;
- KD, DKD, MLKD, CTKD, each without and with LSKD (`standardize: true`), into each modality's
  student from (a) a single-modality teacher of another modality, the one with the best
  validation accuracy (non-overlapping: only labels shared, class-random pairs) and (b) where
  the modalities are views of the same samples, an early-fusion multi-modal teacher (one
  network on the concatenated views; overlapping: the student's own sample, paired).
Every row is scored on each modality's test split (accuracy and weighted F1) for the
best-on-validation and the last-epoch weights; Δ is the per-seed paired difference to
single-modality training with its 95 % t interval.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    RunConfig,
)
from cmkd.data.datamodule import ModalityDataset
from cmkd.data.multimodal import ModalitySpec, prepare_modalities, with_fused
from cmkd.errors import CmkdError
from cmkd.io import write_atomic, write_json

SINGLE, DCK, FUSED = "single-modality", "DisCoM-KD", "fused"
LOGIT_METHODS = ("kd", "dkd", "mlkd", "ctkd")
TEACHERS = ("other", "fused")
PAGE = Path("benchmarks/discomkd.md")


@dataclass(frozen=True)
class DckScenario:
    title: str
    specs: tuple[ModalitySpec, ...]
    batch_size: int
    fusable: bool
    """The modalities are views of the same samples (one paired source): an early-fusion
    teacher exists."""
    note: str = ""


def _scenarios() -> dict[str, DckScenario]:
    mlp = ModelConfig(backbone="mlp", options={"hidden": [256, 128]})
    cnn = ModelConfig(backbone="small_cnn")
    mfeat = DataConfig(source="mfeat", val_fraction=0.1, test_fraction=0.2, batch_size=128)
    eurosat = DataConfig(
        source="eurosat_paired", val_fraction=0.1, test_fraction=0.2, batch_size=32, augment=True
    )
    fsdd = DataConfig(
        source="fsdd",
        split="official",
        val_fraction=0.1,
        test_fraction=0.1,
        train_per_class=50,
        batch_size=64,
    )
    mnist = DataConfig(
        source="mnist", val_fraction=0.1, test_fraction=0.2, train_per_class=50, batch_size=64
    )
    views = ("fou", "fac", "kar", "pix", "zer", "mor")
    return {
        "mfeat2": DckScenario(
            "UCI Multiple Features, M = 2 (Fourier 76-d, Zernike 47-d), 2,000 digits 70/10/20",
            (ModalitySpec("fou", mfeat, mlp), ModalitySpec("zer", mfeat, mlp)),
            128,
            True,
            "MLP encoders [256, 128]; latent 64.",
        ),
        "mfeat6": DckScenario(
            "UCI Multiple Features, M = 6 (all views), 2,000 digits 70/10/20",
            tuple(ModalitySpec(v, mfeat, mlp) for v in views),
            128,
            True,
            "MLP encoders [256, 128]; latent 64.",
        ),
        "eurosat": DckScenario(
            "EuroSAT MS (13 bands) + RGB, the 369 twins used unpaired, 70/10/20",
            (ModalitySpec("ms", eurosat, cnn), ModalitySpec("rgb", eurosat, cnn)),
            32,
            True,
            "small_cnn encoders (128-d, latent 64); flips + 90-degree rotations for every model.",
        ),
        "digits": DckScenario(
            "Spoken digits (FSDD log-mel) + written digits (MNIST), 50 training samples per "
            "class each",
            (ModalitySpec("audio", fsdd, cnn), ModalitySpec("image", mnist, cnn)),
            64,
            False,
            "small_cnn encoders; FSDD official test split (takes 0-4), MNIST 70/10/20 of the "
            "10,000 test-set images; no sample-level pairs, so no multi-modal teacher.",
        ),
    }


def _logit_methods(names: list[str]) -> dict[str, DistillConfig]:
    """KD, DKD, MLKD, CTKD with the loss zoo's settings (configs/eurosat_paired/losses), each
    also with LSKD's z-score (`standardize: true`)."""
    from cmkd.bench.losses import LOSS_CONFIGS, distill_section

    out = {}
    for name in names:
        if name not in LOGIT_METHODS:
            raise CmkdError(f"unknown baseline {name!r}; choose from {LOGIT_METHODS}")
        base = distill_section(LOSS_CONFIGS / f"{name}.yaml")
        out[name.upper()] = base
        lskd = [replace(t, params={**t.params, "standardize": True}) for t in base.terms]
        out[f"{name.upper()} + LSKD"] = replace(base, terms=lskd)
    return out


@torch.no_grad()
def _checkpoint_scores(result: dict[str, Any], test: ModalityDataset, k: int) -> dict[str, Any]:
    """Accuracy and weighted F1 of a cmkd run's best-on-validation checkpoint; for the last
    epoch, the accuracy the run itself measured with its final in-memory weights. (Lightning's
    last.ckpt is not the last epoch: with save_last=True it is a copy made whenever a monitored
    checkpoint is saved, i.e. of the best epoch so far.)"""
    from cmkd.methods.discomkd import evaluate_student
    from cmkd.models.discomkd import count_parameters
    from cmkd.recipes import load_model

    best_path = Path(result["checkpoint"])
    model, _ = load_model(best_path)
    return {
        "checkpoint": str(best_path),
        "fit_seconds": result["fit_seconds"],
        "parameters": count_parameters(model),
        "best": {
            "test": evaluate_student(model, test, k),
            "epoch": result["best"]["epoch"],
            "val_acc": result["best"]["val_acc"],
        },
        "last": {"test": {"acc": result["last"]["test"]["acc"]}, "epoch": result["last"]["epoch"]},
    }


def repair_last_epoch(store: Path) -> int:
    """Replace last-epoch scores that an earlier version read from last.ckpt (a copy of the best
    checkpoint, see `_checkpoint_scores`) with the run's own final-weights accuracy from its
    results.json; returns the number of cells repaired."""
    record = json.loads(store.read_text())
    n = 0
    for rows in record["seeds"].values():
        for cells in rows.values():
            for cell in cells.values():
                if "checkpoint" not in cell:
                    continue  # DisCoM-KD cells score the final weights in memory
                run = json.loads((Path(cell["checkpoint"]).parents[1] / "results.json").read_text())
                last = {"test": {"acc": run["last"]["test"]["acc"]}, "epoch": run["last"]["epoch"]}
                if cell["last"] != last:
                    cell["last"], n = last, n + 1
    write_json(store, record)
    return n


class _Grid:
    """One scenario's grid; finished cells (kept in results.json) are not run again."""

    def __init__(self, name, sc, specs, optim, run, store, record, teachers, baselines, echo):
        self.name, self.sc, self.specs, self.optim, self.run = name, sc, specs, optim, run
        self.store, self.record, self.teachers, self.baselines = store, record, teachers, baselines
        self.echo = echo
        self.names = [s.name for s in specs]

    def save(self) -> None:
        self.record["settings"]["seeds"] = sorted(int(s) for s in self.record["seeds"])
        write_json(self.store, self.record)

    def cell(self, rows: dict, seed: int, row: str, m: str, fn) -> dict[str, Any]:
        got = rows.setdefault(row, {})
        if m not in got:
            t0 = time.perf_counter()
            got[m] = fn()
            self.save()
            acc = got[m]["best"]["test"]["acc"]
            self.echo(
                f"[{self.name}] seed {seed} {row:28s} {m:6s} test acc {100 * acc:5.1f} "
                f"[{time.perf_counter() - t0:.0f} s]"
            )
        return got[m]

    def seed(self, seed: int) -> None:
        from cmkd.methods.discomkd import DisComConfig, train_discomkd
        from cmkd.recipes import distill_student, train_classifier

        rows = self.record["seeds"].setdefault(str(seed), {})
        names, specs, optim, run = self.names, self.specs, self.optim, self.run
        prepared = prepare_modalities(specs, seed)
        k = len(next(iter(prepared.values())).classes)
        tests = {m: ModalityDataset(prepared[m].rows(m, "test"), m) for m in names}
        fused_prep = None
        if "fused" in self.teachers:
            fused_prep = with_fused(prepared[names[0]], names, FUSED)

        # DisCoM-KD: one joint run gives every modality's student.
        if set(rows.get(DCK, {})) != set(names):
            cfg = DisComConfig(batch_size=self.sc.batch_size, augment=specs[0].data.augment)
            res = train_discomkd(specs, cfg, optim, replace(run, name="discomkd"), seed, prepared)
            rows[DCK] = {
                m: {**r, "fit_seconds": res["fit_seconds"]} for m, r in res["modalities"].items()
            }
            self.save()
            accs = ", ".join(
                f"{m} {100 * r['best']['test']['acc']:.1f}" for m, r in rows[DCK].items()
            )
            self.echo(f"[{self.name}] seed {seed} DisCoM-KD {accs} [{res['fit_seconds']:.0f} s]")

        def single(s: ModalitySpec) -> dict[str, Any]:
            folder = replace(run, name=f"single-{s.name}")
            res = train_classifier(
                s.data, s.model, optim, folder, s.name, seed, prepared=prepared[s.name]
            )
            return _checkpoint_scores(res, tests[s.name], k)

        for s in specs:
            self.cell(rows, seed, SINGLE, s.name, partial(single, s))

        def fused_teacher() -> dict[str, Any]:
            s0 = specs[0]
            folder = replace(run, name="teacher-fused")
            res = train_classifier(
                s0.data, s0.model, optim, folder, FUSED, seed, prepared=fused_prep
            )
            return _checkpoint_scores(
                res, ModalityDataset(fused_prep.rows(FUSED, "test"), FUSED), k
            )

        if fused_prep is not None:
            self.cell(rows, seed, "teacher: " + FUSED, FUSED, fused_teacher)

        def student(s: ModalitySpec, row: str, distill: DistillConfig, prep, t_mod: str):
            folder = replace(run, name=f"{_slug(row)}-{s.name}")
            res = distill_student(
                s.data, s.model, optim, folder, distill, s.name, seed, prepared=prep
            )
            return {**_checkpoint_scores(res, tests[s.name], k), "teacher": t_mod}

        for s in specs:
            for kind in self.teachers:
                if kind == "other":
                    others = [n for n in names if n != s.name]
                    # The strongest other modality on validation (never on test).
                    t_mod = max(others, key=lambda n: rows[SINGLE][n]["best"]["val_acc"])
                    teacher = rows[SINGLE][t_mod]["checkpoint"]
                    pairing, prep = PairingConfig("class_random"), prepared[s.name]
                else:
                    t_mod, teacher = FUSED, rows["teacher: " + FUSED][FUSED]["checkpoint"]
                    pairing, prep = PairingConfig("paired"), fused_prep
                for label, base in self.baselines.items():
                    distill = replace(base, teacher=teacher, pairing=pairing)
                    row = f"{label} ({kind} teacher)"
                    self.cell(
                        rows, seed, row, s.name, partial(student, s, row, distill, prep, t_mod)
                    )


def run_scenario(
    name: str,
    seeds: list[int],
    epochs: int,
    lr: float,
    methods: list[str],
    teachers: list[str],
    output_dir: Path,
    command: str | None = None,
    echo=print,
) -> dict[str, Any]:
    """Run (or continue: finished cells in results.json are kept) one scenario's grid."""
    sc = _scenarios()[name]
    unknown = set(teachers) - set(TEACHERS)
    if unknown:
        raise CmkdError(f"unknown teacher kind {sorted(unknown)}; choose from {TEACHERS}")
    if not sc.fusable:
        teachers = [t for t in teachers if t != "fused"]
    baselines = _logit_methods(methods)
    optim = OptimConfig(lr=lr, epochs=epochs)
    run = RunConfig(output_dir=str(output_dir), progress_bar=False, overwrite=True)
    store = output_dir / "results.json"
    specs = [replace(s, data=replace(s.data, batch_size=sc.batch_size)) for s in sc.specs]
    record: dict[str, Any] = {}
    if store.is_file():
        record = json.loads(store.read_text())
        if record.get("settings", {}).get("epochs") != epochs or record["settings"]["lr"] != lr:
            record = {}  # another budget: start again
    record.setdefault("scenario", name)
    record["title"], record["note"] = sc.title, sc.note
    record["settings"] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": sc.batch_size,
        "methods": methods,
        "teachers": teachers,
        "modalities": [asdict(s) for s in specs],
        "command": command,
    }
    record.setdefault("seeds", {})
    grid = _Grid(name, sc, specs, optim, run, store, record, teachers, baselines, echo)
    start = time.perf_counter()
    for seed in seeds:
        grid.seed(seed)
    record["wall_seconds"] = record.get("wall_seconds", 0) + time.perf_counter() - start
    grid.save()
    return record


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def _ms(values: list[float]) -> str:
    from cmkd.stats import mean_std

    return mean_std(values) if values else ""


def _runs(record: dict[str, Any], seeds: list[str], m: str, row: str) -> list[dict]:
    return [record["seeds"][s][row][m] for s in seeds if m in record["seeds"][s].get(row, {})]


def _summary(record: dict[str, Any], seeds: list[str], names: list[str]) -> list[str]:
    """Per modality: single-modality training against DisCoM-KD (best-on-validation weights)."""
    from cmkd.stats import mean_ci

    lines = [
        "| modality | single-modality acc | DisCoM-KD acc | Δ acc [95 % CI] | single weighted F1 "
        "| DisCoM-KD weighted F1 | Δ weighted F1 [95 % CI] | parameters single / DisCoM-KD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in names:
        single, dck = _runs(record, seeds, m, SINGLE), _runs(record, seeds, m, DCK)
        if not single or len(single) != len(dck):
            continue
        cells = []
        for key in ("acc", "f1_weighted"):
            a = [r["best"]["test"][key] for r in single]
            b = [r["best"]["test"][key] for r in dck]
            cells += [_ms(a), _ms(b), mean_ci([y - x for x, y in zip(a, b, strict=True)])]
        size = f"{single[0]['parameters']:,} / {dck[0]['parameters']:,}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {size} |")
    return [*lines, ""]


def render_section(record: dict[str, Any]) -> str:
    """One scenario's markdown: a table per modality, seeds as rows' samples."""
    from cmkd.stats import mean_ci

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
    if st.get("command"):
        lines += ["", f"Command: `{st['command']}`"]
    lines.append("")
    row_names: list[str] = []
    for seed in seeds:
        for row in record["seeds"][seed]:
            if row not in row_names and not row.startswith("teacher: "):
                row_names.append(row)
    order = [SINGLE, DCK] + [r for r in row_names if r not in (SINGLE, DCK)]
    fused_rows = [record["seeds"][s].get("teacher: " + FUSED, {}).get(FUSED) for s in seeds]
    if all(fused_rows) and fused_rows:
        accs = [r["best"]["test"]["acc"] for r in fused_rows]
        lines += [
            f"Early-fusion multi-modal teacher (all views concatenated, {backbone[names[0]]}): "
            f"test acc {_ms(accs)} %, {fused_rows[0]['parameters']:,} parameters.",
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
            rs = runs(row)
            if not rs:
                continue
            acc = [r["best"]["test"]["acc"] for r in rs]
            f1 = [r["best"]["test"]["f1_weighted"] for r in rs]
            last = [r["last"]["test"]["acc"] for r in rs]
            d_acc = d_f1 = ""
            if row != SINGLE and len(rs) == len(single):
                d_acc = mean_ci(
                    [a - b["best"]["test"]["acc"] for a, b in zip(acc, single, strict=True)]
                )
                d_f1 = mean_ci(
                    [a - b["best"]["test"]["f1_weighted"] for a, b in zip(f1, single, strict=True)]
                )
            teacher = ""
            if rs and "teacher" in rs[0] and row.endswith("(other teacher)"):
                ts = sorted({r["teacher"] for r in rs})
                teacher = f" ← {'/'.join(ts)}"
            if len(rs) != len(seeds):
                teacher += f" (only {len(rs)} of {len(seeds)} seeds)"
            lines.append(
                f"| {row}{teacher} | {rs[0]['parameters']:,} | {_ms(acc)} | {_ms(f1)} "
                f"| {_ms(last)} | {d_acc} | {d_f1} |"
            )
        lines.append("")
    wall = record.get("wall_seconds")
    if wall:
        lines += [f"Wall time {wall / 60:.0f} min on a shared 2-core CPU, 1 torch thread.", ""]
    return "\n".join(lines)


PAGE_HEAD = """# DisCoM-KD against single-modality training and logit KD

Produced by `cmkd bench discomkd --scenario NAME` per section (the exact command heads each
section); every section is re-rendered from `runs/bench/discomkd/<scenario>/results.json`.

What each row is (see `src/cmkd/bench/discomkd.py`):
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
scores, but reruns in another session moved single runs by a few points (digits, single-modality
audio: 93.8 ± 0.8 on 2026-11-22 on an Intel Xeon, 94.3 ± 2.2 on 2026-11-25 on an AMD EPYC, same
seeds and settings; the commits in between change checkpointing and logging, not the training
arithmetic, so the CPUs' float kernels are the likely cause, not verified). Each section's
command says exactly what ran; a section with fewer seeds than asked was stopped for time, and
a row with fewer seeds than its section says so.
"""


def _page_sections(page: str) -> dict[str, str]:
    """A rendered page's sections by title (the text from "## title" to the next "## ")."""
    sections: dict[str, str] = {}
    for chunk in page.split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0]
        sections[title] = "## " + chunk.rstrip("\n") + "\n"
    return sections


def render_page(root: Path, order: list[str], previous: str = "") -> str:
    """The page from every scenario stored under `root`. A scenario with no results here keeps
    its section from `previous` (the page as it stands): the stores are local run folders, so
    running one scenario in a fresh checkout must not drop the sections run elsewhere."""
    kept = _page_sections(previous)
    titles = {name: sc.title for name, sc in _scenarios().items()}
    parts = [PAGE_HEAD]
    for name in order:
        store = root / name / "results.json"
        if store.is_file():
            parts.append(render_section(json.loads(store.read_text())))
        elif titles.get(name) in kept:
            parts.append(kept[titles[name]])
    return "\n".join(parts)


def discomkd_grid(
    scenario: str = "mfeat2",
    seeds: list[int] | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    methods: list[str] = list(LOGIT_METHODS),  # noqa: B006
    teachers: list[str] = list(TEACHERS),  # noqa: B006
    output_dir: str = "runs/bench/discomkd",
    page: str = str(PAGE),
    threads: int = 1,
) -> None:
    """DisCoM-KD against single-modality training and KD, DKD, MLKD, CTKD (each without and
    with LSKD) from a teacher of another modality and from a multi-modal teacher; writes
    output_dir/<scenario>/results.json and re-renders the page from every scenario stored.

    Args:
        scenario: mfeat2, mfeat6, eurosat or digits.
        seeds: Default 5 seeds on mfeat, 3 elsewhere.
        epochs: Epochs of every model (same budget for all).
        lr: Adam learning rate of every model.
        methods: Logit baselines among kd, dkd, mlkd, ctkd (each also with LSKD).
        teachers: other (single-modality teacher of another modality) and/or fused (early-fusion
            multi-modal teacher, only where the modalities are views of the same samples).
        output_dir: Where the runs and results go.
        page: The markdown page to (re)write.
        threads: torch CPU threads (1 avoids oversubscribing a shared machine with tiny models).
    """
    scenarios = _scenarios()
    if scenario not in scenarios:
        raise CmkdError(f"unknown scenario {scenario!r}; choose from {sorted(scenarios)}")
    torch.set_num_threads(threads)
    seeds = seeds if seeds is not None else ([0, 1, 2, 3, 4] if "mfeat" in scenario else [0, 1, 2])
    root = Path(output_dir)
    command = (
        f"cmkd bench discomkd --scenario {scenario} --seeds '{json.dumps(seeds)}' "
        f"--epochs {epochs} --lr {lr:g} --methods '{json.dumps(methods)}' "
        f"--teachers '{json.dumps(teachers)}'"
    )
    record = run_scenario(scenario, seeds, epochs, lr, methods, teachers, root / scenario, command)
    previous = Path(page).read_text() if Path(page).is_file() else ""
    write_atomic(Path(page), render_page(root, list(scenarios), previous))
    print(render_section(record))
    print(f"Saved {page}")


__all__ = ["discomkd_grid", "render_page", "render_section", "run_scenario"]
