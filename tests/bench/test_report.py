"""The grid report on a fixed, hand-made results store: its means, paired differences and
intervals equal values worked out by hand here, a partial store says how many cells are done,
the win marker needs an interval that excludes 0, and the record-only plots and the CLI work.
The accuracies are invented; these tests check the report's arithmetic, not any method."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmkd.bench.pagestore import read_store
from cmkd.bench.report.page import read_curve, render_grid_page, write_report
from cmkd.bench.report.plots import pca_2d, to_image
from cmkd.bench.report.tables import Row, paired, wins
from cmkd.bench.scenarios import CONTROL_CM, CONTROL_TF, NO_KD, TEACHER
from cmkd.bench.store import CellKey, Store
from cmkd.cli import main
from cmkd.stats import interval

SC, ARCH = "toy", "S/S"
# Best-on-val test accuracy per seed (fractions). GOOD beats no-KD by +2, +4, +6 points (mean
# +4, std 2, 95 % t half-width 4.303 * 2 / sqrt 3 = 4.97: CI [-1.0, +9.0], contains 0);
# GREAT by +10, +11, +12 (CI [+8.5, +13.5], excludes 0); BAD by -10, -11, -12.
ACC = {
    TEACHER: [0.90, 0.92, 0.94],
    NO_KD: [0.50, 0.60, 0.70],
    "GOOD": [0.52, 0.64, 0.76],
    "GREAT": [0.60, 0.71, 0.82],
    "BAD": [0.40, 0.49, 0.58],
    CONTROL_TF: [0.55, 0.65, 0.75],
    CONTROL_CM: [0.50, 0.60, 0.70],
}
METHODS = ["GOOD", "GREAT", "BAD", CONTROL_TF, CONTROL_CM]


def _record(method: str, seed: int, acc: float, fit: float) -> dict:
    group = {TEACHER: "teacher-small_cnn", NO_KD: "student-small_cnn"}.get(method, ARCH)
    test = {"acc": acc, "f1_macro": acc - 0.01, "acc_per_class": {}}
    return {
        "scenario": SC,
        "group": group,
        "method": method,
        "seed": seed,
        "grid": "toy",
        "config_hash": "x",
        "config": {},
        "result": {
            "modality": "rgb",
            "seed": seed,
            "epochs": 2,
            # last-epoch weights 1 point below the best-on-val ones
            "best": {"epoch": 1, "val_acc": acc, "test": test},
            "last": {"epoch": 1, "test": {**test, "acc": acc - 0.01}},
            "checkpoint": f"/nonexistent/{method}/seed{seed}/checkpoints/best.ckpt",
            "fit_seconds": fit,
            "train_samples": 100,
        },
        "wall_seconds": fit + 1,
        "samples_per_second": 200.0,
        "teacher_share": 0.25 if method not in (TEACHER, NO_KD) else None,
        "peak_rss_mib": 1000.0,
    }


def make_store(root: Path, skip: set[tuple[str, int]] = frozenset()) -> Path:
    store = Store(root)
    for method, accs in ACC.items():
        for seed, acc in enumerate(accs):
            if (method, seed) in skip:
                continue
            rec = _record(method, seed, acc, fit=10.0 if method == NO_KD else 15.0)
            store.put(CellKey(rec["scenario"], rec["group"], method, seed), rec)
    grid = {
        "name": "toy",
        "description": "A hand-made store.",
        "command": "cmkd bench grid toy.yaml",
        "scenarios": {SC: {"title": "Toy scenario"}},
        "methods": {SC: METHODS},
        "architectures": [{"name": ARCH, "teacher": "small_cnn", "student": "small_cnn"}],
        "seeds": [0, 1, 2],
        "epochs": 2,
        "matcher_epochs": 1,
        "lr": 0.001,
        "paper": {f"{SC} {ARCH}": {"GREAT": 77.7}},
    }
    (root / "grid.json").write_text(json.dumps(grid))
    return root


def table_row(page: str, label: str) -> list[str]:
    line = next(ln for ln in page.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("report")
    out = write_report(make_store(tmp / "store"), tmp / "out" / "toy.md", plots=False)
    return out.read_text()


def test_mean_std_and_paired_delta_match_hand_values(page):
    assert "21 of 21 training cells finished (complete)" in page
    # no-KD 50, 60, 70: mean 60.0, sample std 10.0; last epoch one point lower.
    base = table_row(page, NO_KD)
    assert base[2:6] == ["3", "60.0 ± 10.0", "59.0 ± 10.0", "59.0 ± 10.0"]
    good = table_row(page, "GOOD")
    assert good[3] == "64.0 ± 12.0"
    # +2, +4, +6: mean 4, half-width t(0.975, 2) * 2 / sqrt(3) = 4.303 * 1.1547 = 4.968
    assert good[6] == "+4.0 [-1.0, +9.0] n=3"
    assert good[7] == "+4.0 [-1.0, +9.0] n=3"  # both sides lose the same point at the end
    # vs teacher-free (55, 65, 75): -3, -1, +1 -> mean -1, std 2 -> [-6.0, +4.0]
    assert good[8] == "-1.0 [-6.0, +4.0] n=3"
    # vs class-mean (= no-KD here)
    assert good[9] == "+4.0 [-1.0, +9.0] n=3"
    # fit time 15 s vs 10 s; teacher share 25 %; paper number only where grid.json has it
    assert good[11] == "1.50×" and good[14] == "25 %" and good[15] == "—"
    assert table_row(page, "GREAT")[15] == "77.7"


def test_interval_matches_hand_computation():
    mean, lo, hi = interval([0.02, 0.04, 0.06])
    assert mean == pytest.approx(4.0)
    assert hi - mean == pytest.approx(4.302653 * 2 / 3**0.5, rel=1e-5)
    one = Row("a", {0: _record("a", 0, 0.9, 1)})
    assert not wins(one, Row("b", {0: _record("b", 0, 0.1, 1)}))  # one pair: never a win


def test_wins_marker_only_where_the_interval_excludes_zero(page):
    assert table_row(page, "GREAT")[10] == "✓"
    assert table_row(page, "GOOD")[10] == ""  # +4 on average, but the CI contains 0
    assert table_row(page, "BAD")[10] == ""  # excludes 0, in the wrong direction
    summary = next(ln for ln in page.splitlines() if ln.startswith("*Summary:*"))
    assert "GREAT (+11.0)" in summary and "BAD (-11.0)" in summary
    assert "GOOD" not in summary.split("beats both controls")[0]
    # GREAT vs teacher-free: +5, +6, +7 and vs class-mean: +10, +11, +12 -> beats both
    assert summary.endswith("beats both controls (CI > 0 vs each): GREAT.")


def test_paired_difference_uses_only_common_seeds():
    a = Row("a", {0: _record("a", 0, 0.5, 1), 2: _record("a", 2, 0.7, 1)})
    b = Row("b", {1: _record("b", 1, 0.1, 1), 2: _record("b", 2, 0.6, 1)})
    assert paired(a, b) == pytest.approx([0.1])
    assert not wins(a, b)


def test_partial_store_reports_cells_done_of_total(tmp_path):
    root = make_store(tmp_path / "store", skip={("GREAT", 2), (NO_KD, 1), ("BAD", 0)})
    # a method dropped from the grid since it ran: its cell is neither counted nor shown
    Store(root).put(CellKey(SC, ARCH, "OLD", 0), _record("OLD", 0, 0.9, 1.0))
    page = write_report(root, tmp_path / "toy.md", plots=False).read_text()
    # 7 rows x 3 seeds = 21 training cells, 3 missing
    assert "18 of 21 training cells finished (**partial" in page
    assert "1 stored cell(s) no longer in the grid" in page and "| OLD |" not in page
    # GREAT has seeds 0, 1 but no-KD lacks seed 1: one common seed, so no interval
    great = table_row(page, "GREAT")
    assert great[2] == "2" and great[6] == "+10.0 n=1" and great[10] == ""


def test_record_only_plots_are_written_and_linked(tmp_path):
    page_path = write_report(make_store(tmp_path / "store"), tmp_path / "out" / "toy.md")
    page = page_path.read_text()
    for name in ("paired-differences", "accuracy-against-training-time"):
        png = tmp_path / "out" / "toy" / f"toy_s-s_{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"](toy/toy_s-s_{name}.png)" in page
    # No run folders: the plots that need them are not drawn (no crash), but the page links
    # them all the same: its text depends on the store alone.
    assert "](toy/toy_s-s_confusion-matrices.png)" in page
    assert not (tmp_path / "out" / "toy" / "toy_s-s_confusion-matrices.png").exists()
    # no method of the toy store kept a pair list: the store says so, the page notes it
    assert re.search(r"matched pairs: none \(no paired method run, seed 0\)", page)
    # every drawn figure has a caption saying what its marks are
    assert "*Dots: mean paired difference of test accuracy" in page


def test_forest_rows_pair_each_method_with_no_kd_and_both_controls(tmp_path):
    from cmkd.bench.report.page import grid_store
    from cmkd.bench.report.plots import forest_rows
    from cmkd.bench.report.tables import build_tables

    store = grid_store(make_store(tmp_path / "store"))
    table = build_tables(store["info"], store["cells"])[0]
    rows = forest_rows(table)
    bases = {(label, base) for label, base, _ in rows}
    assert ("GOOD", NO_KD) in bases and ("GOOD", "control: teacher-free") in bases
    # the controls are compared with no KD only, never with each other or themselves
    assert not any(label.startswith("control") and base != NO_KD for label, base in bases)
    good = next(d for label, base, d in rows if (label, base) == ("GOOD", NO_KD))
    assert [round(100 * x, 6) for x in good] == [2.0, 4.0, 6.0]


def test_the_page_renders_again_from_its_compact_store_alone(tmp_path):
    page = write_report(make_store(tmp_path / "store"), tmp_path / "out" / "toy.md", plots=False)
    store = read_store(page)
    assert store["kind"] == "grid" and len(store["cells"]) == 21
    assert "config" not in store["cells"][0] and "acc_per_class" not in json.dumps(store)
    moved = tmp_path / "elsewhere" / "toy.md"
    assert render_grid_page(store, moved) == page.read_text()
    # through the CLI, from the page alone (no grid folder)
    shutil.rmtree(tmp_path / "store")
    assert main(["report", str(page), "--page", str(moved), "--plots", "false"]) == 0
    assert moved.read_text() == page.read_text()
    assert moved.with_suffix(".json").read_text() == page.with_suffix(".json").read_text()


def test_a_compact_store_has_a_line_per_cell_and_run_folders_of_the_first_seed_only(tmp_path):
    page = write_report(make_store(tmp_path / "store"), tmp_path / "toy.md", plots=False)
    text = page.with_suffix(".json").read_text()
    store = json.loads(text)
    lines = text.splitlines()
    one_line = [json.loads(line.rstrip(",")) for line in lines if line.startswith("  {")]
    assert one_line == store["cells"]  # a diff shows the cells a rerun adds or changes
    first = store["info"]["seeds"][0]
    assert {c["seed"] for c in store["cells"]} > {first}
    for cell in store["cells"]:
        assert ("checkpoint" in cell["result"]) == (cell["seed"] == first)


def test_cli_writes_the_page_into_the_grid_folder(tmp_path, monkeypatch, capsys):
    root = make_store(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "store", "--plots", "false"]) == 0
    page = root / "toy.md"
    assert page.is_file() and "cmkd bench grid toy.yaml" in page.read_text()
    assert (root / "toy.json").is_file() and not (tmp_path / "benchmarks").exists()
    assert "Saved store/toy.md" in capsys.readouterr().out


def test_cli_without_a_store_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_summary_says_when_controls_cannot_be_tested(tmp_path):
    skip = {(CONTROL_CM, 1), (CONTROL_CM, 2)}  # class-mean finished for one seed only
    page = write_report(make_store(tmp_path / "store", skip=skip), tmp_path / "t.md", plots=False)
    page = page.read_text()
    assert "fewer than 2 seeds paired with both controls" in page
    assert "beats both controls (CI" not in page


def test_validation_curves_from_metrics_csv(tmp_path):
    root = make_store(tmp_path / "store")
    store = Store(root)
    for method in (NO_KD, "GOOD"):
        key = CellKey(SC, "student-small_cnn" if method == NO_KD else ARCH, method, 0)
        rec = store.get(key)
        run = tmp_path / "runs" / method.replace(" ", "_").replace(",", "")
        (run / "csv").mkdir(parents=True)
        # Lightning writes val and train metrics on separate rows; empty cells are skipped
        (run / "csv" / "metrics.csv").write_text(
            "epoch,step,train/loss,val/acc\n0,5,,0.3\n0,5,1.2,\n1,11,,0.5\n1,11,0.9,\n"
        )
        rec["result"]["checkpoint"] = str(run / "checkpoints" / "best.ckpt")
        store.put(key, rec)
    assert read_curve(tmp_path / "runs" / "GOOD" / "csv" / "metrics.csv") == ([0, 1], [0.3, 0.5])
    page = write_report(root, tmp_path / "out" / "toy.md").read_text()
    assert "](toy/toy_s-s_validation-curves.png)" in page
    # the curves are in the compact store: drawn again without the run folders
    curves = [c for c in read_store(tmp_path / "out" / "toy.md")["cells"] if "val_curve" in c]
    assert [c["val_curve"] for c in curves] == [[[0, 1], [0.3, 0.5]]] * 2
    assert (tmp_path / "out" / "toy" / "toy_s-s_validation-curves.png").is_file()


def test_images_and_pca():
    rng = np.random.default_rng(0)
    # band k around 100 k, except B01 and B09..B12 far brighter: shown are B04, B03, B02 as
    # red, green, blue, stretched between their own percentiles (red bright, blue dark)
    ms = 100 * np.arange(13, dtype=np.float32)[:, None, None] + rng.uniform(0, 10, (13, 8, 8))
    ms[[0, 8, 9, 10, 11, 12]] += 1e6
    img = to_image(ms)
    assert img.shape == (8, 8, 3) and img.min() >= 0 and img.max() <= 1
    r, g, b = (img[..., c].mean() for c in range(3))
    assert r > 0.9 and 0.3 < g < 0.7 and b < 0.1
    assert to_image(np.zeros((1, 4, 5), dtype=np.uint8)).shape == (4, 5)  # flat: no 0/0
    # points along (1, 1, 0) with a little noise: the first component is that direction
    t = np.linspace(-5, 5, 50)
    emb = np.stack([t, t, 0.01 * rng.standard_normal(50)], 1) + 7.0
    xy = pca_2d(emb)
    assert xy.shape == (50, 2)
    assert np.allclose(np.abs(xy[:, 0]), np.abs(t) * 2**0.5, atol=0.05)


def test_contrasts_give_a_minus_b_by_seed_and_skip_rows_a_scenario_lacks():
    from cmkd.bench.report.tables import Table, render_contrasts

    # a - b per seed: +2, +4 points; mean +3, t(0.975, 1) = 12.706, sd 1.414: half 12.7 points.
    a = Row("a", {s: _record("a", s, acc, 1) for s, acc in [(0, 0.72), (1, 0.74)]})
    b = Row("b", {s: _record("b", s, acc, 1) for s, acc in [(0, 0.70), (1, 0.70)]})
    table = Table(SC, {"name": ARCH}, [a, b])
    lines = render_contrasts(table, {"a over b": ["a", "b"], "absent": ["a", "oracle"]})
    assert len(lines) == 3  # header, rule, one contrast: 'absent' names a row not in the table
    assert lines[2].startswith("| a over b | a − b | +3.0 [-9.7, +15.7] n=2 | +3.0 [-9.7, +15.7]")
    assert lines[2].endswith("| 25.4 |")
    assert render_contrasts(table, {}) == []


def test_a_shared_teacher_counts_once_among_the_expected_cells():
    from cmkd.bench.report.tables import expected_cells

    info = {
        "scenarios": {"a": {}, "b": {}},
        "seeds": [0, 1, 2],
        "architectures": [{"name": "S/S", "teacher": "small_cnn", "student": "small_cnn"}],
        "methods": {"a": ["KD"], "b": ["KD"]},
        "teacher_seeds": {"a": [0]},
    }
    teachers = sorted((k[0], k[3]) for k in expected_cells(info) if k[2] == TEACHER)
    assert teachers == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]
    assert len(expected_cells(info)) == 4 + 2 * 3 * 2  # teachers + (no KD, KD) x seeds x 2


def test_architecture_contrasts_give_pair_a_minus_pair_b_for_every_shared_row():
    from cmkd.bench.report.tables import Table, render_architecture_contrasts

    def rows(accs: list[float]) -> list[Row]:
        return [
            Row(label, {s: _record(label, s, acc, 1) for s, acc in enumerate(accs)})
            for label in (NO_KD, "KD")
        ]

    # bf16 - fp32 per seed: +1, +3 points on both rows; mean +2, sd 1.414, half 12.7 points.
    bf16 = Table(SC, {"name": "bf16"}, rows([0.71, 0.73]))
    fp32 = Table(SC, {"name": "fp32"}, rows([0.70, 0.70]))
    lines = render_architecture_contrasts([fp32, bf16], {"bf16 - fp32": ["bf16", "fp32"]})
    assert len(lines) == 4  # header, rule, one line per shared row
    assert lines[2].startswith(f"| bf16 - fp32 | {NO_KD} | +2.0 [-10.7, +14.7] n=2 |")
    assert lines[3].startswith("| bf16 - fp32 | KD | +2.0 [-10.7, +14.7] n=2 |")
    assert render_architecture_contrasts([fp32], {"bf16 - fp32": ["bf16", "fp32"]}) == []
