"""The grid runner and its results store: a crashed grid resumes without rerunning finished
cells, a changed method reruns only the cells it changes, and every shipped grid file loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cmkd.recipes
from cmkd.bench.grid import GridRunner
from cmkd.bench.grid_spec import Grid, load_grid
from cmkd.bench.scenarios import (
    CONTROL_CM,
    CONTROL_TF,
    NO_KD,
    ORACLE,
    SCENARIOS,
    SEMBRIDGE,
    TEACHER,
)
from cmkd.bench.store import CellKey, Store, config_hash
from cmkd.config import DistillConfig, PairingConfig, TermConfig
from cmkd.errors import CmkdError

GRIDS = sorted((Path(__file__).resolve().parents[2] / "configs" / "bench").glob("*.yaml"))
KD = DistillConfig(
    ce_weight=0.5, terms=[TermConfig("kd", 0.5)], pairing=PairingConfig("class_random")
)


def _tiny_grid(kd: DistillConfig = KD) -> Grid:
    return Grid(
        name="tiny",
        scenarios=["fsdd_to_mnist"],
        methods={"KD": kd},
        seeds=[0],
        epochs=1,
        controls=False,  # they run like any method; tests/test_controls.py covers them
        data={
            "fsdd_to_mnist": {
                "teacher": {"train_per_class": 3},
                "student": {"train_per_class": 3, "val_fraction": 0.02, "test_fraction": 0.02},
            }
        },
    )


def test_config_hash_ignores_key_order() -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_every_shipped_grid_loads(path: Path) -> None:
    grid = load_grid(path)
    assert grid.methods and grid.seeds and grid.scenarios
    for name in grid.scenarios:
        sc = grid.scenario(name)
        labels = list(grid.all_methods(sc))
        assert len(labels) == len(set(labels))
        if grid.controls:
            assert labels[-2:] == [CONTROL_TF, CONTROL_CM]
        assert (ORACLE in labels) == (sc.oracle_data is not None)
        assert all(m + SEMBRIDGE in labels for m in grid.sembridge_over)


def test_unknown_grid_key_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenarios: [fsdd_to_mnist]\nmethod: {}\n")
    with pytest.raises(CmkdError, match="unknown keys"):
        load_grid(bad)


def test_a_crashed_grid_resumes_and_a_changed_method_reruns_only_its_cells(
    tmp_path: Path, data_root, monkeypatch
) -> None:
    out = tmp_path / "grid"

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-cell")

    with monkeypatch.context() as m:
        m.setattr(cmkd.recipes, "distill_student", crash)
        with pytest.raises(RuntimeError, match="killed"):
            GridRunner(_tiny_grid(), out, echo=lambda *_: None).run()
    store = Store(out)
    done = {(r["group"], r["method"]) for r in store.records()}
    # The two finished cells are stored; the one that crashed left nothing behind.
    assert done == {("teacher-small_cnn", TEACHER), ("student-small_cnn", NO_KD)}
    teacher_file = CellKey("fsdd_to_mnist", "teacher-small_cnn", TEACHER, 0).path(out)
    stamp = teacher_file.stat().st_mtime_ns

    runner = GridRunner(_tiny_grid(), out, echo=lambda *_: None)
    runner.run()
    assert runner.counts == {"ran": 1, "reused": 2, "busy": 0}
    assert teacher_file.stat().st_mtime_ns == stamp
    record = json.loads(CellKey("fsdd_to_mnist", "S/S", "KD", 0).path(out).read_text())
    assert (
        record["result"]["teacher_checkpoint"]
        == json.loads(teacher_file.read_text())["result"]["checkpoint"]
    )
    assert record["samples_per_second"] > 0 and record["peak_rss_mib"] > 0
    assert 0 <= record["teacher_share"] < 1

    again = GridRunner(_tiny_grid(), out, echo=lambda *_: None)
    again.run()
    assert again.counts == {"ran": 0, "reused": 3, "busy": 0}

    # A new KD weight reruns the KD cell only: the teacher and no-KD cells stay.
    heavier = DistillConfig(
        ce_weight=0.5, terms=[TermConfig("kd", 0.9)], pairing=PairingConfig("class_random")
    )
    changed = GridRunner(_tiny_grid(heavier), out, echo=lambda *_: None)
    changed.run()
    assert changed.counts == {"ran": 1, "reused": 2, "busy": 0}


def test_oracle_row_pairs_every_ms_sample_with_its_true_rgb_twin() -> None:
    from cmkd.bench.scenarios import oracle

    sc = SCENARIOS["eurosat_rgb_to_ms"]
    o = oracle(KD, sc)
    assert o.pairing.strategy == "paired" and o.teacher_data.source == "eurosat_paired"
    with pytest.raises(CmkdError, match="no twins"):
        oracle(KD, SCENARIOS["fsdd_to_mnist"])


def test_extra_seeds_run_only_for_their_scenario_and_count_in_the_report(
    tmp_path: Path, monkeypatch
) -> None:
    from cmkd.bench.report.tables import expected_cells

    grid = Grid(
        name="extra",
        scenarios=["fsdd_to_mnist", "eurosat_rgb_to_ms"],
        methods={"KD": KD},
        seeds=[0, 1],
        extra_seeds={"eurosat_rgb_to_ms": [1, 5, 3]},
        controls=False,
    )
    assert grid.seeds_of("eurosat_rgb_to_ms") == [0, 1, 5, 3]
    ran: list[tuple[str, int]] = []
    runner = GridRunner(grid, tmp_path, echo=lambda *_: None)
    monkeypatch.setattr(
        runner, "_teacher", lambda name, sc, arch, seed, prep: ran.append((name, seed))
    )
    monkeypatch.setattr(runner, "_no_kd", lambda *a: None)
    monkeypatch.setattr(runner, "_distill", lambda *a: None)
    runner.run()
    assert ran == [
        ("fsdd_to_mnist", 0), ("eurosat_rgb_to_ms", 0), ("fsdd_to_mnist", 1),
        ("eurosat_rgb_to_ms", 1), ("eurosat_rgb_to_ms", 3), ("eurosat_rgb_to_ms", 5),
    ]  # fmt: skip
    info = json.loads((tmp_path / "grid.json").read_text())
    seeds = {sc: {k[3] for k in expected_cells(info) if k[0] == sc} for sc in grid.scenarios}
    assert seeds == {"fsdd_to_mnist": {0, 1}, "eurosat_rgb_to_ms": {0, 1, 3, 5}}


def test_extra_seeds_for_an_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nscenarios: [fsdd_to_mnist]\nmethods: {}\nextra_seeds: {x: [3]}\n")
    with pytest.raises(CmkdError, match="extra_seeds"):
        load_grid(path)


MAP_FILE = (
    Path(__file__).resolve().parents[2] / "configs" / "class_maps" / "ucmerced_to_eurosat.yaml"
)


def test_class_map_scenarios_share_one_teacher_and_keep_test_supports(
    tmp_path: Path, data_root
) -> None:
    """Two students of one UC Merced teacher through a class map: the teacher is trained once,
    every cell runs over the map, every student cell keeps its test samples per class."""
    scenarios = ["ucmerced_to_eurosat_ms", "ucmerced_to_eurosat_rgb"]
    teacher = {"train_per_class": 3, "options": {"size": 16}}
    student = {"train_per_class": 3, "val_fraction": 0.1, "test_fraction": 0.1}
    grid = Grid(
        name="mapped",
        scenarios=scenarios,
        methods={"KD": KD},
        seeds=[0],
        epochs=1,
        controls=False,
        class_maps=dict.fromkeys(scenarios, str(MAP_FILE)),
        data={sc: {"teacher": teacher, "student": student} for sc in scenarios},
    )
    runner = GridRunner(grid, tmp_path, echo=lambda *_: None)
    runner.run()
    # 1 teacher, 2 no-KD, 2 KD; 1 shared
    assert runner.counts == {"ran": 5, "reused": 1, "busy": 0}
    store = Store(tmp_path)
    first, second = (store.get(CellKey(sc, "teacher-small_cnn", TEACHER, 0)) for sc in scenarios)
    assert second["shared_from"] == scenarios[0] and second["wall_seconds"] == 0
    assert second["result"]["checkpoint"] == first["result"]["checkpoint"]
    for sc in scenarios:
        kd = store.get(CellKey(sc, "S/S", "KD", 0))
        assert kd["config"]["distill"]["class_map"]["freeway"] == "Highway"
        assert kd["result"]["class_map"]["covered"][0] == "Forest"
        no_kd = store.get(CellKey(sc, "student-small_cnn", NO_KD, 0))
        for cell in (kd, no_kd):
            support = cell["result"]["test_support"]
            assert len(support) == 10 and all(n > 0 for n in support.values())
            assert set(support) == set(cell["result"]["best"]["test"]["acc_per_class"])
    info = json.loads((tmp_path / "grid.json").read_text())
    assert info["scenarios"][scenarios[0]]["class_map"]["beach"] is None


def test_class_maps_for_an_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nscenarios: [fsdd_to_mnist]\nmethods: {}\nclass_maps: {x: m.yaml}\n")
    with pytest.raises(CmkdError, match="class_maps for scenarios not in the grid"):
        load_grid(path)


@pytest.mark.parametrize(
    "key, extra, typo, fixed, error",
    [
        ("contrasts", "", '"KD, matched"', '"control: class-mean"',
         r"contrast 'typo'.*unknown: \['KD, matched'\]"),
        ("architecture_contrasts",
         "architectures: [{name: fp32}, {name: bf16, precision: bf16-mixed}]\n",
         "fp23", "fp32", r"architecture contrast 'typo'.*\['fp23'\]"),
    ],
    ids=["rows", "architecture pairs"],
)  # fmt: skip
def test_a_contrast_naming_an_unknown_row_or_pair_is_refused_before_anything_runs(
    tmp_path, key, extra, typo, fixed, error
) -> None:
    first = '"KD"' if key == "contrasts" else "bf16"
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "scenarios: [fsdd_to_mnist]\n"
        "methods:\n  KD: {terms: [{name: kd, weight: 0.5}]}\n"
        f"{extra}{key}:\n  typo: [{first}, {typo}]\n"
    )
    with pytest.raises(CmkdError, match=error):
        load_grid(grid)
    grid.write_text(grid.read_text().replace(typo, fixed))
    assert getattr(load_grid(grid), key) == {"typo": [first.strip('"'), fixed.strip('"')]}


def test_a_pair_at_another_precision_keeps_its_own_teacher_and_no_kd_cells() -> None:
    from cmkd.bench.store import side_group

    assert side_group("teacher", "small_cnn", None, "32-true") == "teacher-small_cnn"
    assert side_group("teacher", "small_cnn", "32-true", "32-true") == "teacher-small_cnn"
    assert side_group("student", "small_cnn", "bf16-mixed", "32-true") == (
        "student-small_cnn@bf16-mixed"
    )


def test_a_cell_another_worker_holds_is_passed_over_or_waited_for(tmp_path: Path) -> None:
    import threading

    runner = GridRunner(_tiny_grid(), tmp_path, echo=lambda *_: None)
    key = CellKey("fsdd_to_mnist", "S/S", "KD", 0)
    config = {"x": 1}
    record = {**key.__dict__, "config_hash": config_hash(config), "result": {"by": "other"}}

    def never() -> dict:
        raise AssertionError("a held cell must not be trained twice")

    other = Store(tmp_path)
    with other.claim(key, wait=False) as held:
        assert held
        assert runner._cell(key, config, never, wait=False) is None  # passed over
        got = []
        waiter = threading.Thread(target=lambda: got.append(runner._cell(key, config, never)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not got  # a needed cell waits for the other worker
        other.put(key, record)
    waiter.join(10)
    assert got == [record]  # and then reuses what that worker stored
    assert runner.counts == {"ran": 0, "reused": 1, "busy": 1}


def test_run_to_the_end_waits_for_the_cells_other_workers_hold(tmp_path: Path) -> None:
    import threading

    runner = GridRunner(_tiny_grid(), tmp_path, echo=lambda *_: None)
    key = CellKey("fsdd_to_mnist", "S/S", "KD", 0)
    other, held, release = Store(tmp_path), threading.Event(), threading.Event()

    def other_worker() -> None:
        with other.claim(key, wait=False):
            held.set()
            release.wait(10)
            other.put(key, {"by": "other"})

    passes: list[dict | None] = []

    def one_pass(command: str = "") -> Store:
        # first pass: the cell is held elsewhere and passed over; then it is in the store
        passes.append(runner.store.get(key))
        runner.passed_over = [key] if len(passes) == 1 else []
        if len(passes) == 1:
            threading.Timer(0.3, release.set).start()
        return runner.store

    worker = threading.Thread(target=other_worker)
    worker.start()
    held.wait(10)
    runner.run = one_pass
    runner.run_to_the_end()
    worker.join(10)
    assert passes == [None, {"by": "other"}]  # waited, then ran again over the stored cell


def test_a_moved_store_keeps_its_cells_and_trains_new_ones_from_its_own_files(
    tmp_path: Path, data_root, monkeypatch
) -> None:
    """A store moved to another folder (and run from another current folder) reuses every
    cell, and a new cell trains from the moved teacher checkpoint and pair list, not from
    paths under the old folder."""
    import dataclasses
    import shutil

    matched = dataclasses.replace(KD, pairing=PairingConfig("matched"))
    grid = dataclasses.replace(_tiny_grid(), methods={"KD": KD, "KD, matched": matched})
    grid.matcher_epochs = 1
    monkeypatch.chdir(tmp_path)
    GridRunner(grid, Path("old/grid"), echo=lambda *_: None).run()
    shutil.move("old", "new")
    monkeypatch.chdir(tmp_path / "new")

    again = GridRunner(grid, Path("grid"), echo=lambda *_: None)
    again.run()
    assert again.counts == {"ran": 0, "reused": 5, "busy": 0}

    heavier = dataclasses.replace(matched, terms=[TermConfig("kd", 0.9)])
    grid.methods["KD, matched, heavier"] = heavier
    more = GridRunner(grid, Path("grid"), echo=lambda *_: None)
    more.run()
    assert more.counts == {"ran": 1, "reused": 6, "busy": 0}  # the pair list twice
    record = Store("grid").get(CellKey("fsdd_to_mnist", "S/S", "KD, matched, heavier", 0))
    teacher = Path(record["result"]["teacher_checkpoint"])
    pairs = Path(record["config"]["distill"]["pairing"]["pairs"])
    assert teacher.is_file() and pairs.is_file()
    assert tmp_path / "new" in teacher.resolve().parents
    assert tmp_path / "new" in pairs.resolve().parents


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_plan_lists_what_a_run_would_train_and_writes_nothing(
    tmp_path: Path, data_root, capsys
) -> None:
    from cmkd.bench.grid import run_grid
    from cmkd.bench.grid_plan import plan_table

    # An empty store: every cell is planned, nothing is created, the CLI path prints the table.
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(
        "name: tiny\nscenarios: [fsdd_to_mnist]\nseeds: [0, 1]\nepochs: 1\ncontrols: false\n"
        "methods:\n  KD: {ce_weight: 0.5, terms: [{name: kd, weight: 0.5}]}\n"
    )
    assert run_grid(grid_file, tmp_path / "empty", plan=True) is None
    assert not (tmp_path / "empty").exists()
    printed = capsys.readouterr().out
    assert "6 cells to run, 0 stored cells reused" in printed
    assert "| fsdd_to_mnist | KD | 2 | ? |" in printed

    out = tmp_path / "grid"
    GridRunner(_tiny_grid(), out, echo=lambda *_: None).run()
    before = _files(out)
    same = GridRunner(_tiny_grid(), out, plan=True)
    same.run()
    assert same.planned == [] and same.counts["reused"] == 3

    # A changed KD weight plans the KD cell only, timed from the stored KD cell.
    heavier = DistillConfig(
        ce_weight=0.5, terms=[TermConfig("kd", 0.9)], pairing=PairingConfig("class_random")
    )
    changed = GridRunner(_tiny_grid(heavier), out, plan=True)
    changed.run()
    assert changed.planned == [CellKey("fsdd_to_mnist", "S/S", "KD", 0)]
    table = plan_table(changed)
    assert "1 cells to run, 2 stored cells reused" in table
    stored = Store(out).get(CellKey("fsdd_to_mnist", "S/S", "KD", 0))
    assert f"| fsdd_to_mnist | KD | 1 | {stored['wall_seconds'] / 60:.1f} |" in table

    # As after --fresh: every cell, and a teacher planned makes its students planned too.
    fresh = GridRunner(_tiny_grid(), out, plan=True, reuse=False)
    fresh.run()
    assert [k.method for k in fresh.planned] == [TEACHER, NO_KD, "KD"]
    assert fresh.counts["reused"] == 0
    assert _files(out) == before


def test_a_config_field_at_its_default_is_not_in_a_cells_hash(tmp_path: Path, data_root) -> None:
    """Cells stored before a config field existed (their config lacks it, their hash was of
    that config) are reused once the field exists with its default; a changed default reruns."""
    from dataclasses import asdict

    from cmkd.bench.cell_digest import cell_digest
    from cmkd.bench.store import config_hash

    assert cell_digest({"distill": asdict(KD)}) == cell_digest(
        {"distill": {"terms": [{"weight": 0.5}], "pairing": {"strategy": "class_random"}}}
    )
    out = tmp_path / "grid"
    GridRunner(_tiny_grid(), out, echo=lambda *_: None).run()
    store = Store(out)
    key = CellKey("fsdd_to_mnist", "S/S", "KD", 0)
    old = store.get(key)
    # As written before `teacher_free_confidence` and the pairing's `dynamic` existed.
    del old["config"]["distill"]["teacher_free_confidence"]
    del old["config"]["distill"]["pairing"]["dynamic"]
    old["config_hash"] = config_hash(old["config"])
    store.put(key, old)

    again = GridRunner(_tiny_grid(), out, echo=lambda *_: None)
    again.run()
    assert again.counts == {"ran": 0, "reused": 3, "busy": 0}

    # The same cell stored with a value that is no longer the default is rerun.
    old["config"]["distill"]["teacher_free_confidence"] = 0.8
    old["config_hash"] = config_hash(old["config"])
    store.put(key, old)
    changed = GridRunner(_tiny_grid(), out, echo=lambda *_: None)
    changed.run()
    assert changed.counts == {"ran": 1, "reused": 2, "busy": 0}
