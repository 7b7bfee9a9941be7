"""`cmkd bench discomkd`: the baseline grid's settings and the page's statistics (no training)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cmkd.bench.discomkd.page import PAGE_HEAD, add_scenario, render_discomkd, render_section
from cmkd.bench.discomkd.run import _Grid
from cmkd.bench.discomkd.scenarios import DCK, SINGLE, _logit_methods, _scenarios
from cmkd.bench.pagestore import publish, read_store
from cmkd.bench.store import claim
from cmkd.errors import CmkdError
from cmkd.losses import LOSSES

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eurosat_paired" / "losses"


def test_baselines_with_and_without_lskd():
    methods = _logit_methods(["kd", "dkd", "mlkd", "ctkd"], CONFIGS)
    assert list(methods) == [
        "KD", "KD + LSKD", "DKD", "DKD + LSKD", "MLKD", "MLKD + LSKD", "CTKD", "CTKD + LSKD",
    ]  # fmt: skip
    for label, cfg in methods.items():
        for term in cfg.terms:
            assert term.params.get("standardize", False) == label.endswith("LSKD")
            assert LOSSES[term.name].cls(**term.params).standardize == label.endswith("LSKD")
    with pytest.raises(CmkdError, match="unknown baseline"):
        _logit_methods(["dist"], CONFIGS)
    with pytest.raises(CmkdError, match="no loss configs"):
        _logit_methods(["kd"], CONFIGS / "missing")


def test_scenarios_cover_the_issue():
    sc = _scenarios()
    assert [len(sc[n].specs) for n in ("mfeat2", "mfeat6", "eurosat", "digits")] == [2, 6, 2, 2]
    assert not sc["digits"].fusable  # no pairs between speech and images: no fused teacher


def _run(acc, f1, last=None):
    return {
        "best": {"test": {"acc": acc, "f1_weighted": f1}},
        "last": {"test": {"acc": acc if last is None else last, "f1_weighted": f1}},
        "parameters": 10,
    }


def _record(title: str, command: str = "cmkd bench discomkd --scenario toy", name="toy") -> dict:
    return {
        "scenario": name,
        "title": title,
        "settings": {
            "lr": 1e-3,
            "epochs": 3,
            "batch_size": 8,
            "command": command,
            "modalities": [{"name": "a", "model": {"backbone": "mlp"}}],
        },
        "seeds": {
            "0": {SINGLE: {"a": _run(0.50, 0.40)}, DCK: {"a": _run(0.60, 0.40)}},
            "1": {SINGLE: {"a": _run(0.70, 0.60)}, DCK: {"a": _run(0.70, 0.70)}},
        },
    }


def test_page_reports_paired_differences():
    page = render_section(_record("toy"))
    assert "Command: `cmkd bench discomkd --scenario toy`" in page
    # single 50, 70 -> 60.0 ± 14.1; DisCoM-KD - single: +10, 0 -> +5.0, t(0.975, 1) = 12.706,
    # half width 12.706 * 7.071 / sqrt(2) = 63.5.
    assert "| single-modality | 10 | 60.0 ± 14.1 |" in page
    assert "| +5.0 [-58.5, +68.5] |" in page


def test_last_epoch_scores_come_from_the_final_weights(tmp_path):
    """Lightning's last.ckpt copies the best checkpoint; the repair reads the run's own
    final-weights accuracy instead."""
    import json

    from cmkd.bench.discomkd.run import repair_last_epoch

    run = tmp_path / "single-a" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"last": {"epoch": 9, "test": {"acc": 0.25}}}))
    cell = {**_run(0.5, 0.5), "checkpoint": str(run / "checkpoints" / "best.ckpt")}
    store = tmp_path / "results.json"
    store.write_text(
        json.dumps({"seeds": {"0": {SINGLE: {"a": cell}, DCK: {"a": _run(0.6, 0.6)}}}})
    )
    assert repair_last_epoch(store) == 1
    fixed = json.loads(store.read_text())["seeds"]["0"]
    assert fixed[SINGLE]["a"]["last"] == {"test": {"acc": 0.25}, "epoch": 9}
    assert fixed[DCK]["a"]["last"]["test"]["acc"] == 0.6  # DisCoM-KD cells are left alone
    assert repair_last_epoch(store) == 0


def test_the_page_store_keeps_every_scenario_run_into_it(tmp_path):
    titles = {name: sc.title for name, sc in _scenarios().items()}
    page = tmp_path / "discomkd.md"
    for name in ("digits", "mfeat2"):
        record = _record(titles[name], f"run {name}", name)
        publish(page, add_scenario(page, record), render_discomkd)
    text = page.read_text()
    assert "Command: `run mfeat2`" in text and "Command: `run digits`" in text
    assert text.index(titles["mfeat2"]) < text.index(titles["digits"])  # the scenarios' order
    # Running digits again replaces its section only; no checkpoint path is kept.
    publish(page, add_scenario(page, _record(titles["digits"], "new", "digits")), render_discomkd)
    again = page.read_text()
    assert "Command: `run mfeat2`" in again and "Command: `new`" in again
    assert "run digits" not in again
    assert render_discomkd(read_store(page), page) == again
    assert "checkpoint" not in page.with_suffix(".json").read_text()


def test_a_page_written_before_its_store_keeps_its_other_sections(tmp_path):
    titles = {name: sc.title for name, sc in _scenarios().items()}
    page = tmp_path / "discomkd.md"
    page.write_text(PAGE_HEAD + "\n## " + titles["mfeat2"] + "\n\nold numbers\n")
    publish(page, add_scenario(page, _record(titles["digits"], "new", "digits")), render_discomkd)
    text = page.read_text()
    assert "old numbers" in text and "Command: `new`" in text
    assert text.index("old numbers") < text.index(titles["digits"])
    assert render_discomkd(read_store(page), page) == text  # the old text is in the store
    publish(page, add_scenario(page, _record(titles["mfeat2"], "m", "mfeat2")), render_discomkd)
    assert "old numbers" not in page.read_text()
    assert "legacy_sections" not in read_store(page)


def test_rows_run_on_fewer_seeds_pair_with_single_over_the_seeds_they_have():
    """A later command that adds seeds for the headline rows only (`--methods '[]'`) leaves
    the KD rows on their seeds; their Δ pairs seed by seed, and the page names both commands."""
    record = _record("toy")
    record["settings"]["commands"] = ["first 0", "then 1 --methods '[]'"]
    del record["settings"]["command"]
    record["seeds"]["0"]["KD (other teacher)"] = {"a": {**_run(0.55, 0.45), "teacher": "b"}}
    page = render_section(record)
    assert "- `first 0`\n- `then 1 --methods '[]'`" in page
    # Only seed 0 has KD: 55 - 50 = +5.0, one seed, so no interval (mean_ci of one value).
    row = next(line for line in page.splitlines() if line.startswith("| KD (other teacher)"))
    assert "(only 1 of 2 seeds; Δ over those)" in row
    assert "| +5.0" in row
    # The headline still pairs the two seeds both rows have.
    assert "| +5.0 [-58.5, +68.5] |" in page


class _FakeGrid(_Grid):
    """A scenario grid whose seed stores one made-up single-modality cell (no training)."""

    def __init__(self, store: Path, command: str, acc: float = 0.5) -> None:
        settings = {"epochs": 3, "lr": 1e-3, "methods": [], "teachers": [], "commands": [command]}
        record = {"settings": settings, "seeds": {}}
        super().__init__("toy", None, [], None, None, store, record, [], {}, lambda msg: None)
        self.acc, self.ran, self.trained = acc, [], []

    def seed(self, seed: int) -> None:
        self.ran.append(seed)
        rows = self.record["seeds"].setdefault(str(seed), {})
        self.cell(rows, seed, SINGLE, "a", lambda: self.trained.append(seed) or _run(self.acc, 0.4))


def test_two_workers_on_one_scenario_keep_each_others_cells(tmp_path):
    store = tmp_path / "toy" / "results.json"
    first, second = _FakeGrid(store, "first"), _FakeGrid(store, "second")
    first.run_seeds([0])
    second.run_seeds([1])  # its record never read seed 0: the save takes it in
    first.run_seeds([2])
    saved = json.loads(store.read_text())
    assert sorted(saved["seeds"]) == ["0", "1", "2"]
    assert saved["settings"]["seeds"] == [0, 1, 2]
    assert saved["settings"]["commands"] == ["first", "second"]
    assert first.trained == [0, 2] and second.trained == [1]


def test_a_seed_another_worker_holds_is_passed_over_then_taken_from_the_store(tmp_path):
    store = tmp_path / "toy" / "results.json"
    other, worker = _FakeGrid(store, "other", acc=0.9), _FakeGrid(store, "run")
    held, release = threading.Event(), threading.Event()

    def hold_seed_1() -> None:
        with claim(store.parent / "locks" / "seed1.lock", wait=False) as got:
            assert got
            held.set()
            release.wait(10)
            other.seed(1)  # the other worker stores seed 1's cell
            other.save()

    thread = threading.Thread(target=hold_seed_1)
    thread.start()
    held.wait(10)
    worker.echo = lambda msg: release.set() if "passed over" in msg else None
    worker.run_seeds([0, 1, 2])
    thread.join()
    # Seed 1 came last, after the other worker released it; its cell was not run again.
    assert worker.ran == [0, 2, 1] and worker.trained == [0, 2] and other.trained == [1]
    assert worker.record["seeds"]["1"][SINGLE]["a"]["best"]["test"]["acc"] == 0.9
