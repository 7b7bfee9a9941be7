"""What a benchmark grid is: scenarios x teacher/student architecture pairs x methods x seeds at
one budget, as a YAML file describes it (`load_grid`); `cmkd.bench.grid` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cmkd.bench.scenarios import (
    CONTROL_CM,
    CONTROL_TF,
    NO_KD,
    ORACLE,
    SCENARIOS,
    SEMBRIDGE,
    Scenario,
    oracle,
    sembridge_plugin,
)
from cmkd.config import (
    DataConfig,
    DistillConfig,
    PairingConfig,
    TermConfig,
)
from cmkd.config_files import load_distill_section
from cmkd.errors import CmkdError


@dataclass(frozen=True)
class Architecture:
    """A teacher/student backbone pair; `matcher` builds the SSM encoders (default: the
    student's backbone); `precision` overrides the grid's for this pair (e.g. bf16-mixed for
    a larger pair on a CPU with native bf16)."""

    name: str
    teacher: str = "small_cnn"
    student: str = "small_cnn"
    matcher: str | None = None
    precision: str | None = None


@dataclass
class Grid:
    name: str
    scenarios: list[str]
    methods: dict[str, DistillConfig]
    architectures: list[Architecture] = field(default_factory=lambda: [Architecture("S/S")])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    extra_seeds: dict[str, list[int]] = field(default_factory=dict)
    """Per scenario, seeds run on top of `seeds`: where one scenario's noise needs more."""
    epochs: int = 30
    matcher_epochs: int = 30
    lr: float = 1e-3
    scheduler: str = "none"
    """Learning-rate schedule of every model of the grid (OptimConfig.scheduler)."""
    controls: bool = True
    control_loss: str | None = None
    """The method whose loss the controls use (default: the first method)."""
    sembridge_over: list[str] = field(default_factory=list)
    """Methods that also run with SemBridge plugged in (SSM pairs, DynM, SKA)."""
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per scenario, DataConfig overrides of its 'teacher' and 'student' side."""
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per scenario, accuracies (%) the papers report, shown beside ours."""
    description: str = ""
    teacher_seeds: dict[str, list[int]] = field(default_factory=dict)
    """Per scenario, the seeds teachers are trained with, shared by every student seed (student
    seed s learns from teacher seed teacher_seeds[s % len]): an expensive teacher (a large set,
    a large network) is paid once, not once per student seed."""
    teacher_epochs: dict[str, int] = field(default_factory=dict)
    """Per scenario, the teacher's epochs when they differ from the grid's."""
    precision: str = "32-true"
    """Lightning precision of every model (an architecture pair may override it)."""
    class_maps: dict[str, str] = field(default_factory=dict)
    """Per scenario, a class map file (path relative to the grid file) where the teacher's
    classes differ from the student's; the page then scores covered classes apart."""
    contrasts: dict[str, list[str]] = field(default_factory=dict)
    """Label -> [row A, row B]: the page gives the paired difference A - B per scenario (an
    ablation's module effects, e.g. matched + DynM against matched)."""
    architecture_contrasts: dict[str, list[str]] = field(default_factory=dict)
    """Label -> [pair A, pair B] (architecture names): the page gives A - B per scenario for
    every row, paired by seed (e.g. one pair at bf16 against the same pair at fp32)."""
    custom_scenarios: dict[str, Scenario] = field(default_factory=dict)

    def seeds_of(self, scenario: str) -> list[int]:
        return self.seeds + [s for s in self.extra_seeds.get(scenario, []) if s not in self.seeds]

    def teacher_seed(self, scenario: str, seed: int) -> int:
        """The seed of the teacher that teaches the students of `seed`."""
        shared = self.teacher_seeds.get(scenario)
        return shared[seed % len(shared)] if shared else seed

    def scenario(self, name: str) -> Scenario:
        sc = self.custom_scenarios.get(name) or SCENARIOS.get(name)
        if sc is None:
            raise CmkdError(f"unknown scenario '{name}'; choose from {sorted(SCENARIOS)}")
        sides = {}
        for side, over in self.data.get(name, {}).items():
            if side not in ("teacher", "student"):
                raise CmkdError(f"grid data override '{side}' for {name}: use teacher or student")
            base: DataConfig = getattr(sc, f"{side}_data")
            options = {**base.options, **over.get("options", {})}
            sides[f"{side}_data"] = replace(base, **{**over, "options": options})
        if name in self.class_maps:
            from cmkd.classmap import read_spec  # torch: not for `cmkd --help`

            # Read here, kept inline: the cells' config hashes follow the map's content.
            sides["class_map"] = read_spec(self.class_maps[name])[0]
        return replace(sc, **sides)

    def all_methods(self, sc: Scenario | None = None) -> dict[str, DistillConfig]:
        """The grid's methods, their SemBridge variants, the oracle (where the scenario has
        true twins) and the two controls, in table order."""
        out = dict(self.methods)
        for label in self.sembridge_over:
            if label not in self.methods:
                raise CmkdError(f"sembridge_over: '{label}' is not a method of the grid")
            out[label + SEMBRIDGE] = sembridge_plugin(self.methods[label], self.epochs)
        if self.methods and sc is not None and sc.oracle_data is not None:
            base = self.methods[self.control_loss or next(iter(self.methods))]
            out[ORACLE] = oracle(base, sc)
        if self.controls and self.methods:
            base = self.methods[self.control_loss or next(iter(self.methods))]
            # The pairing is irrelevant to both controls (they read only the student's label).
            base = replace(base, pairing=PairingConfig("class_random"))
            out[CONTROL_TF] = replace(base, teacher_target="teacher_free")
            out[CONTROL_CM] = replace(base, teacher_target="class_mean")
        return out


def load_grid(path: str | Path) -> Grid:
    """A grid from YAML. A method is an inline `distill` section, or `config: FILE` (a distill
    config, path relative to the grid file) with any of its fields overridden inline."""
    path = Path(path)
    if not path.is_file():
        raise CmkdError(f"grid file {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = set(doc) - (set(Grid.__dataclass_fields__) - {"custom_scenarios"})
    if unknown:
        raise CmkdError(f"grid {path}: unknown keys {sorted(unknown)}")
    methods = {}
    for label, spec in (doc.pop("methods", None) or {}).items():
        spec = dict(spec or {})
        try:
            base = (
                load_distill_section(path.parent / spec.pop("config"))
                if "config" in spec
                else DistillConfig(terms=[])
            )
            if "pairing" in spec:
                spec["pairing"] = PairingConfig(**spec["pairing"])
            if "terms" in spec:
                spec["terms"] = [TermConfig(**t) for t in spec["terms"]]
            if "teacher_data" in spec:
                spec["teacher_data"] = DataConfig(**spec["teacher_data"])
            methods[label] = replace(base, **spec)
        except TypeError as err:
            raise CmkdError(f"grid {path}, method '{label}': {err}") from None
    archs = [Architecture(**a) for a in doc.pop("architectures", [{"name": "S/S"}])]
    for key in ("extra_seeds", "class_maps"):
        stray = set(doc.get(key) or {}) - set(doc.get("scenarios") or [])
        if stray:
            raise CmkdError(f"grid {path}: {key} for scenarios not in the grid {sorted(stray)}")
    doc["class_maps"] = {
        sc: str(path.parent / file) for sc, file in (doc.get("class_maps") or {}).items()
    }
    grid = Grid(name=doc.pop("name", path.stem), methods=methods, architectures=archs, **doc)
    known = {NO_KD} | {
        label for n in grid.scenarios for label in grid.all_methods(grid.scenario(n))
    }
    names = [a.name for a in grid.architectures]
    if len(set(names)) != len(names):
        raise CmkdError(f"grid {path}: two architecture pairs share a name ({names})")
    _check_contrasts(path, "contrast", grid.contrasts, "rows", sorted(known))
    _check_contrasts(path, "architecture contrast", grid.architecture_contrasts, "pairs", names)
    return grid


def _check_contrasts(
    path: Path, kind: str, contrasts: dict[str, list[str]], what: str, known: list[str]
) -> None:
    """Each contrast names two of the grid's rows (or architecture pairs): a typo is an error
    before anything runs, not an empty table after hours."""
    for label, pair in contrasts.items():
        unknown = [name for name in pair if name not in known]
        if len(pair) != 2 or unknown:
            raise CmkdError(
                f"grid {path}, {kind} '{label}': give two of the grid's {what} [A, B] (the "
                f"page shows A - B); unknown: {unknown}; {what}: {known}"
            )
