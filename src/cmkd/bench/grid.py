"""A benchmark grid: scenarios x teacher/student architecture pairs x methods x seeds, at one
budget, run cell by cell into a results store (`cmkd bench grid FILE`).

Per (scenario, seed) every student sees the same stratified split; per (scenario, teacher
backbone, seed) one teacher is trained and reused by every method and architecture pair (and
by any other scenario whose teacher has the very same config); per (scenario, student backbone,
seed) one no-KD student is the baseline of every method. Finished
cells are never rerun (see cmkd.bench.store). Two controls are added to every grid unless
switched off: the same loss against a teacher-free soft label and against the teacher's
class-mean outputs, so a method's cross-modal gain can be told from mere regularisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, astuple, replace
from pathlib import Path
from typing import Any

import numpy as np

from cmkd.bench.cell_digest import cell_digest, same_cell
from cmkd.bench.grid_spec import Architecture, Grid, load_grid
from cmkd.bench.machine import machine, peak_memory
from cmkd.bench.published import method_digests, published_cells
from cmkd.bench.scenarios import (
    NO_KD,
    PAIRS,
    TEACHER,
    Scenario,
)
from cmkd.bench.store import CellKey, Store, side_group, slug
from cmkd.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from cmkd.io import write_json


class GridRunner:
    """Runs a grid's cells in order, skipping those the store already holds. With `plan`, runs
    nothing and writes nothing: `planned` lists the cells a run would train (every cell where
    not `reuse`, as after `--fresh`)."""

    def __init__(
        self,
        grid: Grid,
        output_dir: str | Path,
        echo: Callable = print,
        plan: bool = False,
        reuse: bool = True,
        published: dict[tuple, dict] | None = None,
    ) -> None:
        self.grid, self.echo, self.plan, self.reuse = grid, echo, plan, reuse
        self.planned: list[CellKey] = []
        self.reused: set[CellKey] = set()  # the stored cells read (a pair list serves several)
        # A page's cells taken as done (cmkd.bench.published), and those this run took so.
        self.published, self.carried = published or {}, set()
        self._planned_configs: dict[str, dict] = {}  # digest -> placeholder (shared teachers)
        self.out = Path(output_dir)
        self.store = Store(self.out)
        self.optim = OptimConfig(lr=grid.lr, epochs=grid.epochs, scheduler=grid.scheduler)
        # Every cell also records its test score per epoch, for the page's authors'-protocol
        # columns only (nothing is selected on it; see cmkd.tracking).
        # The layout, the weight-gradient kernels and the optimiser's kernel are pinned (each
        # changes the last bits of every result) and are not in a cell's hash: stores stay
        # comparable whatever RunConfig's defaults.
        self.run_cfg = RunConfig(
            output_dir=str(self.out / "runs"),
            progress_bar=False,
            track_test=True,
            channels_last=False,
            matmul_weight_grad=False,
            fused_optimizer=False,
        )
        self.counts = {"ran": 0, "reused": 0, "busy": 0}
        self.passed_over: list[CellKey] = []  # cells of this run that other workers held

    def describe(self, command: str = "") -> dict[str, Any]:
        """The grid as the report needs it (written to grid.json beside the cells)."""
        g = self.grid
        scenarios = {name: g.scenario(name) for name in g.scenarios}
        return {
            "name": g.name,
            "description": g.description,
            "command": command,
            "scenarios": {name: asdict(sc) for name, sc in scenarios.items()},
            "methods": {name: list(g.all_methods(sc)) for name, sc in scenarios.items()},
            "method_digests": method_digests(
                {
                    name: {label: asdict(d) for label, d in g.all_methods(sc).items()}
                    for name, sc in scenarios.items()
                }
            ),
            "architectures": [asdict(a) for a in g.architectures],
            "seeds": g.seeds,
            "extra_seeds": g.extra_seeds,
            "epochs": g.epochs,
            "matcher_epochs": g.matcher_epochs,
            "lr": g.lr,
            "scheduler": g.scheduler,
            "teacher_seeds": g.teacher_seeds,
            "teacher_epochs": g.teacher_epochs,
            "precision": g.precision,
            "paper": g.paper,
            "contrasts": g.contrasts,
            "architecture_contrasts": g.architecture_contrasts,
            "machine": machine(),
        }

    def run(self, command: str = "") -> Store:
        if not self.plan:
            write_json(self.out / "grid.json", self.describe(command))
        self.passed_over = []
        g = self.grid
        total = len(g.architectures) * sum(len(g.seeds_of(name)) for name in g.scenarios)
        done = 0
        # Seeds outermost: a grid stopped at any point holds the same seeds for every scenario
        # (extra seeds come after the common ones).
        scenarios = {name: g.scenario(name) for name in g.scenarios}
        methods = {name: g.all_methods(sc) for name, sc in scenarios.items()}
        order = g.seeds + sorted({s for n in g.scenarios for s in g.seeds_of(n)} - set(g.seeds))
        for seed in order:
            for name, sc in scenarios.items():
                if seed not in g.seeds_of(name):
                    continue
                prepared = _Lazy(lambda sc=sc, seed=seed: _prepare(sc.student_data, seed))
                for arch in self.grid.architectures:
                    done += 1
                    if self._carry(name, arch, seed, methods[name]):
                        continue
                    if not self.plan:
                        self.echo(f"[{done}/{total}] {name}  {arch.name}  seed {seed}")
                    teacher = self._teacher(name, sc, arch, seed, prepared)
                    self._no_kd(name, sc, arch, seed, prepared)
                    for label, distill in methods[name].items():
                        self._distill(name, sc, arch, seed, prepared, label, distill, teacher)
        if self.plan:
            return self.store
        self.echo(
            f"grid {self.grid.name}: {self.counts['ran']} cells run, "
            f"{self.counts['reused']} reused from {self.store.root}"
            + (f", {len(self.carried)} carried from the page" if self.carried else "")
            + (f", {self.counts['busy']} left to other workers" if self.counts["busy"] else "")
        )
        return self.store

    def run_to_the_end(self, command: str = "") -> Store:
        """`run`, then wait for the cells other workers were running and run again, until
        every cell is stored: what a caller that reads every cell needs (a cell a stopped
        worker left is run here)."""
        store = self.run(command)
        while self.passed_over:
            for key in self.passed_over:
                with self.store.claim(key, wait=True):
                    pass  # held once the other worker is done with it
            store = self.run(command)
        return store

    # One cell: reuse its record when the config is unchanged, else run and store it.
    def _cell(
        self, key: CellKey, config: dict[str, Any], fn: Callable[[], dict], wait: bool = True
    ) -> dict | None:
        """The cell's record; None where another worker is running it and not `wait` (cells
        that others need, a teacher or a pair list, wait for it)."""
        digest = cell_digest(config)
        old = self.store.get(key) if self.reuse else None
        if same_cell(old, digest):
            self.counts["reused"] += 1
            self.reused.add(key)
            return old
        if self.plan:
            # What the cells after it need to compute their configs: a new teacher or pair
            # list makes every cell that uses it new too.
            if key not in self.planned:  # a pair list serves several rows
                self.planned.append(key)
            new = f"(planned: {key.scenario}/{key.group}/{key.method}/seed{key.seed})"
            placeholder = {"config_hash": new, "result": {"checkpoint": new, "pairs": new}}
            return self._planned_configs.setdefault(digest, placeholder)
        with self.store.claim(key, wait) as held:
            if not held:
                self.counts["busy"] += 1
                self.passed_over.append(key)
                self.echo(f"    {key.method:32s} running in another worker: passed over")
                return None
            old = self.store.get(key)  # finished by another worker while this one waited
            if same_cell(old, digest):
                self.counts["reused"] += 1
                return old
            return self._run_cell(key, config, digest, fn)

    def _run_cell(self, key: CellKey, config: dict, digest: str, fn: Callable[[], dict]) -> dict:
        start = time.perf_counter()
        with peak_memory() as memory:
            result = fn()
        memory = {k: memory[k] for k in ("peak_rss_mib", "peak_gpu_mib") if k in memory}
        wall = time.perf_counter() - start
        fit, n = result.get("fit_seconds"), result.get("train_samples")
        record = {
            **asdict(key),
            "grid": self.grid.name,
            "config_hash": digest,
            "config": config,
            "result": result,
            "wall_seconds": round(wall, 2),
            "samples_per_second": round(n * result["epochs"] / fit, 1) if fit and n else None,
            "teacher_share": (
                round(result["teacher_seconds"] / fit, 4)
                if fit and "teacher_seconds" in result
                else None
            ),
            **memory,
        }
        self.store.put(key, record)
        self.counts["ran"] += 1
        if key.method != PAIRS:
            self.echo(
                f"    {key.method:32s} test acc {100 * result['best']['test']['acc']:5.1f} "
                f"(best-on-val), {100 * result['last']['test']['acc']:5.1f} (last)  [{wall:.0f} s]"
            )
        return record

    def _precision(self, arch: Architecture) -> str:
        return arch.precision or self.grid.precision

    def _group(self, side: str, backbone: str, arch: Architecture) -> str:
        return side_group(side, backbone, arch.precision, self.grid.precision)

    def _run(self, key: CellKey, arch: Architecture) -> RunConfig:
        name = str(Path(*map(slug, (key.scenario, key.group, key.method))))
        return replace(self.run_cfg, name=name, overwrite=True, precision=self._precision(arch))

    def _teacher_key(self, name: str, arch: Architecture, seed: int) -> CellKey:
        t_seed = self.grid.teacher_seed(name, seed)
        return CellKey(name, self._group("teacher", arch.teacher, arch), TEACHER, t_seed)

    def _carry(self, name: str, arch: Architecture, seed: int, methods: dict) -> bool:
        """Whether the page holds this block's every cell (teacher, no-KD, each method): then
        the block is done and its cells are the page's (cmkd.bench.published)."""
        keys = [self._teacher_key(name, arch, seed)]
        keys.append(CellKey(name, self._group("student", arch.student, arch), NO_KD, seed))
        keys += [CellKey(name, arch.name, label, seed) for label in methods]
        if not self.published or any(astuple(k) not in self.published for k in keys):
            return False
        self.carried.update(keys)
        return True

    def _teacher(self, name, sc: Scenario, arch, seed, prepared) -> dict:
        from cmkd.recipes import train_classifier

        key = self._teacher_key(name, arch, seed)
        t_seed = key.seed
        model = ModelConfig(backbone=arch.teacher)
        optim = replace(self.optim, epochs=self.grid.teacher_epochs.get(name, self.optim.epochs))
        config = self._config(sc.teacher_data, model, sc.teacher_modality, t_seed, arch, optim)
        shared = self._shared_teacher(key, config)
        if shared is not None:
            return shared
        same = sc.teacher_data == sc.student_data and t_seed == seed
        return self._cell(
            key,
            config,
            lambda: train_classifier(
                sc.teacher_data,
                model=model,
                optim=optim,
                run=self._run(key, arch),
                modality=sc.teacher_modality,
                seed=t_seed,
                prepared=prepared() if same else None,
            ),
        )

    def _shared_teacher(self, key: CellKey, config: dict[str, Any]) -> dict | None:
        """Another scenario's stored teacher of the very same config, when this scenario has
        none: stored here too, marked `shared_from`, with no wall time (it counts once)."""
        digest = cell_digest(config)
        if self.plan and digest in self._planned_configs:
            return self._planned_configs[digest]  # planned for another scenario already
        own = self.store.get(key) if self.reuse else None
        if same_cell(own, digest):
            return None  # this scenario's own cell: _cell reuses it
        for other in self.grid.scenarios if self.reuse else ():
            found = self.store.get(replace(key, scenario=other))
            if other != key.scenario and same_cell(found, digest):
                record = {**found, **asdict(key), "shared_from": other, "wall_seconds": 0.0}
                if not self.plan:
                    self.store.put(key, record)
                self.counts["reused"] += 1
                self.reused.add(key)
                return record
        return None

    def _no_kd(self, name, sc: Scenario, arch, seed, prepared) -> dict | None:
        from cmkd.recipes import train_classifier

        key = CellKey(name, self._group("student", arch.student, arch), NO_KD, seed)
        model = ModelConfig(backbone=arch.student)
        config = self._config(sc.student_data, model, sc.student_modality, seed, arch)
        return self._cell(
            key,
            config,
            lambda: (
                train_classifier(
                    sc.student_data,
                    model=model,
                    optim=self.optim,
                    run=self._run(key, arch),
                    modality=sc.student_modality,
                    seed=seed,
                    prepared=prepared(),
                )
                | test_support(prepared(), sc.student_modality)
            ),
            wait=False,
        )

    def _pairs(self, name, sc: Scenario, arch, seed, teacher: dict) -> str:
        from cmkd.recipes import match_pairs

        matcher = arch.matcher or arch.student
        key = CellKey(name, self._group(arch.teacher, matcher, arch), PAIRS, seed)
        path = self.out / "pairs" / slug(name) / slug(key.group) / f"seed{seed}.json"
        config = {
            "teacher": teacher["config_hash"],
            "student_data": asdict(sc.student_data),
            "method": sc.match_method,
            "pseudo_view": sc.pseudo_view,
            "matcher": matcher,
            "matcher_epochs": self.grid.matcher_epochs,
            "precision": self._precision(arch),
            **({"class_map": sc.class_map} if sc.class_map is not None else {}),
        }

        def match() -> dict:
            pairs = match_pairs(
                teacher["result"]["checkpoint"],
                data=sc.student_data,
                modality=sc.student_modality,
                seed=seed,
                output=path,
                method=sc.match_method,
                pseudo_view=sc.pseudo_view,
                backbone=matcher,
                epochs=self.grid.matcher_epochs,
                run=replace(self.run_cfg, precision=self._precision(arch)),
                class_map=sc.class_map,
            )
            return {"pairs": str(path), "summary": pairs.summary()}

        return self._cell(key, config, match)["result"]["pairs"]

    def _distill(self, name, sc, arch, seed, prepared, label, distill, teacher) -> dict | None:
        from cmkd.recipes import distill_student

        distill = replace(distill, teacher=teacher["result"]["checkpoint"])
        if sc.class_map is not None:
            distill = replace(distill, class_map=sc.class_map)
        if distill.pairing.strategy == "matched" and not distill.pairing.pairs:
            pairs = self._pairs(name, sc, arch, seed, teacher)
            distill = replace(distill, pairing=replace(distill.pairing, pairs=pairs))
        key = CellKey(name, arch.name, label, seed)
        model = ModelConfig(backbone=arch.student)
        config = {
            **self._config(sc.student_data, model, sc.student_modality, seed, arch),
            "distill": asdict(distill),
            "teacher": teacher["config_hash"],
        }
        return self._cell(
            key,
            config,
            lambda: (
                distill_student(
                    sc.student_data,
                    model=model,
                    optim=self.optim,
                    run=self._run(key, arch),
                    distill=distill,
                    modality=sc.student_modality,
                    seed=seed,
                    prepared=prepared(),
                )
                | test_support(prepared(), sc.student_modality)
            ),
            wait=False,
        )

    def _config(
        self,
        data: DataConfig,
        model: ModelConfig,
        modality: str,
        seed: int,
        arch: Architecture,
        optim: OptimConfig | None = None,
    ) -> dict:
        """What a cell's result depends on: a change reruns the cell."""
        return {
            "data": asdict(data),
            "model": asdict(model),
            "optim": asdict(optim or self.optim),
            "modality": modality,
            "seed": seed,
            "precision": self._precision(arch),
        }


def test_support(prepared, modality: str) -> dict[str, dict[str, int]]:
    """Test samples per class: with per-class accuracies they score any group of classes."""
    samples = prepared.rows(modality, "test")
    counts = np.bincount(samples.y, minlength=len(samples.classes))
    return {"test_support": {c: int(n) for c, n in zip(samples.classes, counts, strict=True)}}


class _Lazy:
    """Prepare a split only when a cell actually has to run (a resumed grid may need none)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make, self.value = make, None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self.make()
        return self.value


def _prepare(data: DataConfig, seed: int):
    from cmkd.data.datamodule import prepare_data

    return prepare_data(data, seed)


def run_grid(
    grid: str | Path,
    output_dir: str | Path | None = None,
    fresh: bool = False,
    report: bool = True,
    page: str | Path | None = None,
    plots: bool = True,
    command: str = "",
    budget: dict[str, Any] | None = None,
    plan: bool = False,
) -> Path | None:
    """Run a grid file into its store (default runs/bench/<grid name>), then write its page
    (default <store>/<grid name>.md; see cmkd.bench.report.page) unless `report` is false.
    `budget` overrides the grid's seeds (extra seeds dropped), epochs and matcher epochs.
    `plan`: print what a run would train instead (`plan_table`), run and write nothing."""
    from cmkd.bench.report.page import write_report

    spec = load_grid(grid)
    over = {k: v for k, v in (budget or {}).items() if v is not None}
    if "seeds" in over:
        over["extra_seeds"] = {}
    spec = replace(spec, **over)
    out = Path(output_dir or f"runs/bench/{spec.name}")
    runner = GridRunner(spec, out, plan=plan, reuse=not fresh)
    if not fresh:  # a committed page's cells count as done (cmkd.bench.published)
        page_of = page or out / f"{spec.name}.md"
        runner.published, note = published_cells(page_of, runner.describe())
        if note:
            print(note)
    if plan:
        runner.run()
        from cmkd.bench.grid_plan import plan_table

        print(plan_table(runner))
        return None
    if fresh:
        runner.store.clear()
    runner.run(command=command or f"cmkd bench grid {grid}")
    return write_report(out, page, plots, carry=not fresh) if report else None
