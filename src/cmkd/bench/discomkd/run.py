"""Running `cmkd bench discomkd`: one scenario's grid, resumable (finished cells are kept in
output_dir/<scenario>/results.json and not run again), then the page from every scenario its
store holds. Several workers may run one scenario at once: each claims a seed before running
it and merges the others' cells into the store when it saves."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cmkd.bench.discomkd.page import add_scenario, commands_of, render_discomkd, render_section
from cmkd.bench.discomkd.scenarios import (
    DCK,
    FUSED,
    SINGLE,
    TEACHERS,
    _logit_methods,
    _scenarios,
)
from cmkd.bench.losses import LOSS_CONFIGS
from cmkd.bench.pagestore import publish
from cmkd.bench.store import claim, slug
from cmkd.config import DistillConfig, OptimConfig, PairingConfig, RunConfig
from cmkd.data.datamodule import ModalityDataset
from cmkd.data.multimodal import ModalitySpec, prepare_modalities, with_fused
from cmkd.errors import CmkdError
from cmkd.io import write_json


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

    def save(self, write: bool = True) -> None:
        """Write the record, with the cells other workers stored since taken in first
        (`write=False`: only take them in)."""
        with claim(self.store.with_name("results.json.lock"), wait=True):
            self._take_in_others()
            if write:
                self.record["settings"]["seeds"] = sorted(int(s) for s in self.record["seeds"])
                write_json(self.store, self.record)

    def _take_in_others(self) -> None:
        """Merge the stored cells of other workers on the same budget into this record
        (this worker's own cells win; both trained a cell only if it ran without claims)."""
        if not self.store.is_file():
            return
        disk = json.loads(self.store.read_text())
        mine, theirs = self.record["settings"], disk.get("settings", {})
        if (theirs.get("epochs"), theirs.get("lr")) != (mine["epochs"], mine["lr"]):
            return  # another budget: this run starts again (run_scenario)
        for seed, rows in disk.get("seeds", {}).items():
            own = self.record["seeds"].setdefault(seed, {})
            for row, cells in rows.items():
                for m, cell in cells.items():
                    own.setdefault(row, {}).setdefault(m, cell)
        for key in ("methods", "teachers"):
            mine[key] = list(dict.fromkeys([*theirs.get(key, []), *mine[key]]))
        mine["commands"] = list(dict.fromkeys([*commands_of(theirs), *mine["commands"]]))
        self.record["wall_seconds"] = max(
            self.record.get("wall_seconds", 0), disk.get("wall_seconds", 0)
        )

    def run_seeds(self, seeds: list[int]) -> None:
        """Every seed, each claimed against other workers on this scenario: a seed another
        worker holds is passed over and run (its remaining cells) once that worker is done."""

        def lock(seed: int) -> Path:
            return self.store.parent / "locks" / f"seed{seed}.lock"

        passed = []
        for seed in seeds:
            with claim(lock(seed), wait=False) as held:
                if held:
                    self.save(write=False)  # take in what other workers stored for this seed
                    self.seed(seed)
                else:
                    self.echo(f"[{self.name}] seed {seed} running in another worker: passed over")
                    passed.append(seed)
        for seed in passed:
            with claim(lock(seed), wait=True):
                self.save(write=False)
                self.seed(seed)

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
            res = train_classifier(
                s.data,
                model=s.model,
                optim=optim,
                run=replace(run, name=f"single-{s.name}"),
                modality=s.name,
                seed=seed,
                prepared=prepared[s.name],
            )
            return _checkpoint_scores(res, tests[s.name], k)

        for s in specs:
            self.cell(rows, seed, SINGLE, s.name, partial(single, s))

        def fused_teacher() -> dict[str, Any]:
            s0 = specs[0]
            res = train_classifier(
                s0.data,
                model=s0.model,
                optim=optim,
                run=replace(run, name="teacher-fused"),
                modality=FUSED,
                seed=seed,
                prepared=fused_prep,
            )
            return _checkpoint_scores(
                res, ModalityDataset(fused_prep.rows(FUSED, "test"), FUSED), k
            )

        if fused_prep is not None:
            self.cell(rows, seed, "teacher: " + FUSED, FUSED, fused_teacher)

        def student(s: ModalitySpec, row: str, distill: DistillConfig, prep, t_mod: str):
            res = distill_student(
                s.data,
                model=s.model,
                optim=optim,
                run=replace(run, name=f"{slug(row)}-{s.name}"),
                distill=distill,
                modality=s.name,
                seed=seed,
                prepared=prep,
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
    configs: str | Path = LOSS_CONFIGS,
) -> dict[str, Any]:
    """Run (or continue: finished cells in results.json are kept) one scenario's grid."""
    sc = _scenarios()[name]
    unknown = set(teachers) - set(TEACHERS)
    if unknown:
        raise CmkdError(f"unknown teacher kind {sorted(unknown)}; choose from {TEACHERS}")
    if not sc.fusable:
        teachers = [t for t in teachers if t != "fused"]
    baselines = _logit_methods(methods, configs)
    optim = OptimConfig(lr=lr, epochs=epochs)
    # fp32, standard layout, native weight gradients: what the stored cells were trained with
    # (not in their key).
    run = RunConfig(
        output_dir=str(output_dir),
        progress_bar=False,
        overwrite=True,
        precision="32-true",
        channels_last=False,
        matmul_weight_grad=False,
    )
    store = output_dir / "results.json"
    specs = [replace(s, data=replace(s.data, batch_size=sc.batch_size)) for s in sc.specs]
    record: dict[str, Any] = {}
    if store.is_file():
        record = json.loads(store.read_text())
        if record.get("settings", {}).get("epochs") != epochs or record["settings"]["lr"] != lr:
            record = {}  # another budget: start again
    record.setdefault("scenario", name)
    record["title"], record["note"] = sc.title, sc.note
    before = record.get("settings", {})
    # Every command that added cells, in order: a later one may run more seeds for some rows
    # only (e.g. `--methods '[]'` for the DisCoM-KD headline), and the page must say so.
    commands = commands_of(before)
    if command and command not in commands:
        commands.append(command)
    record["settings"] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": sc.batch_size,
        "methods": list(dict.fromkeys([*before.get("methods", []), *methods])),
        "teachers": list(dict.fromkeys([*before.get("teachers", []), *teachers])),
        "modalities": [asdict(s) for s in specs],
        "commands": commands,
    }
    record.setdefault("seeds", {})
    grid = _Grid(name, sc, specs, optim, run, store, record, teachers, baselines, echo)
    start = time.perf_counter()
    grid.run_seeds(seeds)
    record["wall_seconds"] = record.get("wall_seconds", 0) + time.perf_counter() - start
    grid.save()
    return record


def run_discomkd(
    scenario: str = "mfeat2",
    seeds: list[int] | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    methods: tuple[str, ...] = ("kd", "dkd", "mlkd", "ctkd"),
    teachers: tuple[str, ...] = TEACHERS,
    output_dir: str | Path = "runs/bench/discomkd",
    page: str | Path | None = None,
    threads: int = 1,
    configs: str | Path = LOSS_CONFIGS,
    command: str = "",
) -> Path:
    """Run one scenario (output_dir/<scenario>/results.json), add it to the page's store (the
    other scenarios there stay) and write the page (default output_dir/discomkd.md)."""
    scenarios = _scenarios()
    if scenario not in scenarios:
        raise CmkdError(f"unknown scenario {scenario!r}; choose from {sorted(scenarios)}")
    torch.set_num_threads(threads)
    seeds = seeds if seeds is not None else ([0, 1, 2, 3, 4] if "mfeat" in scenario else [0, 1, 2])
    root = Path(output_dir)
    record = run_scenario(
        scenario, seeds, epochs, lr, list(methods), list(teachers), root / scenario,
        command=command, configs=configs,
    )  # fmt: skip
    page = Path(page or root / "discomkd.md")
    store = add_scenario(page, record)
    publish(page, store, render_discomkd)
    print(render_section(store["scenarios"][scenario]))
    print(f"Saved {page}")
    return page
