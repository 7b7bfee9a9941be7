"""Soft-constrained CMKD end to end on small real data: margin + classifier-level terms, quality
weights, a corrupted share of the teacher's inputs, and what the run writes."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cmkd.config import (
    CorruptionConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    QualityConfig,
    TermConfig,
)
from cmkd.errors import CmkdError
from cmkd.methods.quality import auroc
from cmkd.recipes import distill_student, train_classifier

MFEAT = DataConfig(source="mfeat", options={"views": ["fac", "pix"]}, batch_size=64)
MLP = ModelConfig(backbone="mlp", options={"hidden": [64]})
SOFT = [
    TermConfig("soft_feature", 1.0, {"margin": 0.2}),
    TermConfig("soft_classifier", 0.5, {"tolerance": 1.0}),
    TermConfig("kd", 0.5, {"temperature": 4.0}),
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_root):
    from cmkd.config import RunConfig

    run = RunConfig(
        output_dir=str(tmp_path_factory.mktemp("t")), accelerator="cpu", progress_bar=False
    )
    return train_classifier(MFEAT, MLP, OptimConfig(epochs=6), run, "fac", seed=0)


def test_soft_cmkd_with_quality_weights_on_corrupted_teacher_inputs(quiet_run, teacher):
    distill = DistillConfig(
        teacher=teacher["checkpoint"],
        pairing=PairingConfig("class_random"),
        terms=SOFT,
        quality=QualityConfig(source="confidence"),
        corruption=CorruptionConfig(kind="blank", fraction=0.25, severity=0.5, seed=1),
    )
    run = replace(quiet_run, name="soft")
    result = distill_student(MFEAT, MLP, OptimConfig(epochs=2), run, distill, "pix", 0)
    assert 0.0 <= result["best"]["test"]["acc"] <= 1.0
    run_dir = Path(quiet_run.output_dir) / "soft" / "seed0"
    header = set(next(csv.reader(open(run_dir / "csv" / "metrics.csv"))))
    assert {"train/soft_feature", "train/soft_classifier", "train/kd"} <= header
    assert {"train/quality/min", "train/quality/max", "train/soft_feature/inside_margin"} <= header
    corrupted = json.loads((run_dir / "corruption.json").read_text())
    q = np.load(run_dir / "quality.npz")
    n = len(q["ids"])
    assert corrupted["n"] == n and len(corrupted["corrupted_ids"]) == round(0.25 * n)
    assert set(q["ids"][q["corrupted"]]) == set(corrupted["corrupted_ids"])
    assert str(q["source"]) == "confidence"
    used = q["times_used"] > 0
    assert used.any()
    # Every batch's weights average 1, so the count-weighted mean of the per-row means is 1.
    total = (q["mean_weight"][used] * q["times_used"][used]).sum() / q["times_used"][used].sum()
    assert abs(total - 1.0) < 1e-5  # float32 accumulators
    # Blanking half the features of a clean-trained teacher's inputs costs it ~40 points of
    # accuracy there (measured: 97 % clean, 54 % blanked) and lowers its confidence on the true
    # class: confidence must rank corrupted samples below clean ones (AUROC for "is clean" 0.9
    # measured; Gaussian noise separates far less), and the realised weights follow.
    assert auroc(q["confidence"], ~q["corrupted"]) > 0.8
    assert np.nanmean(q["mean_weight"][q["corrupted"]]) < np.nanmean(
        q["mean_weight"][~q["corrupted"]]
    )


def test_quality_weights_refuse_terms_without_per_sample_values(quiet_run, teacher):
    distill = DistillConfig(
        teacher=teacher["checkpoint"],
        terms=[TermConfig("rkd", 1.0), TermConfig("kd", 0.5)],
        quality=QualityConfig(source="norm"),
    )
    with pytest.raises(CmkdError, match="term 'rkd' has none"):
        distill_student(MFEAT, MLP, OptimConfig(epochs=1), quiet_run, distill, "pix", 0)


def test_bench_summarises_weight_separation_and_plots(tmp_path):
    from cmkd.bench.softcmkd import plot_weights, quality_records, quality_table, separation

    bad = np.array([True, True, False, False, False])
    record = {
        "corrupted": bad,
        "correct": np.array([0.0, 1.0, 1.0, 1.0, 0.0]),
        "confidence": np.array([0.2, 0.3, 0.9, 0.8, 0.4]),  # separates perfectly
        "norm": np.array([5.0, 4.0, 1.0, 2.0, 3.0]),  # the wrong way round
        "dropout": np.array([0.5, 0.5, 0.5, 0.5, 0.5]),  # no information
        "mean_weight": np.array([0.4, 0.6, 1.3, np.nan, 1.1]),
        "times_used": np.array([2.0, 1.0, 3.0, 0.0, 1.0]),
    }
    s = separation(record)
    assert s["acc_clean"] == 2 / 3 and s["acc_corrupted"] == 0.5
    assert s["auroc_confidence"] == 1.0 and s["auroc_norm"] == 0.0 and s["auroc_dropout"] == 0.5
    assert s["w_corrupted"] == 0.5 and abs(s["w_clean"] - 1.2) < 1e-12  # unused row left out
    table = quality_table([s, s], "confidence")
    assert "| 66.7 ± 0.0 | 50.0 ± 0.0 | 1.00 ± 0.00 | 0.00 ± 0.00 | 0.50 ± 0.00 |" in table
    plot_weights({"a": [record], "b": [record]}, tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
    # records are found through the checkpoints listed in a comparison's store
    run = tmp_path / "runs" / "x" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    np.savez(run / "quality.npz", **record)
    listing = {"runs": {"+ quality weights": [{"checkpoint": str(run / "checkpoints/best.ckpt")}]}}
    found = quality_records(listing, "+ quality weights")
    assert len(found) == 1 and np.array_equal(found[0]["corrupted"], bad)


def test_bench_page_command_names_only_changed_arguments():
    from cmkd.bench.commands import command_line, softcmkd

    given = dict(scenarios=["eurosat_paired"], seeds=[0, 1, 2], epochs=3, fraction=0.3,
                 quality_source="confidence", backbone="small_cnn",
                 conditions=["clean", "corrupted"], output_dir="runs/bench/softcmkd",
                 page="benchmarks/softcmkd.md")  # fmt: skip
    assert command_line("bench softcmkd", softcmkd, given) == (
        "cmkd bench softcmkd --scenarios '[eurosat_paired]' --epochs 3 "
        "--page benchmarks/softcmkd.md"
    )
    given["scenario_seeds"] = {"eurosat_paired": 65}
    assert command_line("bench softcmkd", softcmkd, given).endswith(
        "--page benchmarks/softcmkd.md --scenario_seeds '{eurosat_paired: 65}'"
    )


@pytest.mark.parametrize("bad", [{"mnist_to_fsdd": 20}, {"eurosat_paired": 1}])
def test_bench_scenario_seeds_are_checked_before_anything_runs(tmp_path, bad):
    from cmkd.bench.commands import softcmkd

    with pytest.raises(CmkdError, match="scenario_seeds"):
        softcmkd(scenarios=["eurosat_paired"], scenario_seeds=bad, output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_bench_effects_are_paired_differences(tmp_path):
    from cmkd.bench.softcmkd import CLASSIFIER, HARD, MARGIN, QUALITY, effects_table

    def runs(*accs):
        return [{"best": {"test": {"acc": a}}} for a in accs]

    listing = {
        HARD: runs(0.50, 0.60),
        MARGIN: runs(0.55, 0.64),  # +5 and +4 points: mean +4.5
        CLASSIFIER: runs(0.55, 0.64),
        QUALITY: runs(0.55, 0.64),
        f"{HARD}, corrupted": runs(0.40, 0.50),  # -10 and -10 vs clean
    }
    table = effects_table(listing, ["clean", "corrupted"])
    assert f"| {MARGIN} − {HARD} | +4.5 [-1.9, +10.9] | — |" in table
    assert f"| {HARD} | -10.0 [-10.0, -10.0] |" in table
