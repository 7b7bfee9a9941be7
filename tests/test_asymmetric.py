"""Asymmetric distillation end to end on small real subsets: teacher and student share only
labels. Digits (speech -> images, class-random pairs) and EuroSAT MS -> unpaired RGB (SSM pair
list, then SemBridge: DynM re-matching and SKA)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd.cli import main
from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    TermConfig,
)
from cmkd.errors import CmkdError
from cmkd.pairing.pairs import PairList
from cmkd.recipes import distill_student, match_pairs, train_classifier

TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})
KD = [TermConfig("kd", 0.5, {"temperature": 4.0})]
MS = DataConfig(source="eurosat_ms", batch_size=64)
RGB = DataConfig(source="eurosat_rgb", options={"subset": "unpaired", "per_class_limit": 12})


def _header(result: dict) -> list[str]:
    run_dir = Path(result["checkpoint"]).parents[1]
    return next(csv.reader(open(run_dir / "csv" / "metrics.csv")))


def test_spoken_digits_teach_mnist_with_class_random_pairs(quiet_run, data_root) -> None:
    fsdd = DataConfig(
        source="fsdd", split="official", val_fraction=0.1, test_fraction=0.1, train_per_class=10
    )
    teacher = train_classifier(
        fsdd, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "audio", 0
    )
    mnist = DataConfig(source="mnist", train_per_class=5, val_fraction=0.05, test_fraction=0.05)
    distill = DistillConfig(
        teacher=teacher["checkpoint"], terms=KD, pairing=PairingConfig("class_random")
    )
    result = distill_student(
        mnist, TINY, OptimConfig(epochs=2), replace(quiet_run, name="s"), distill, "image", 0
    )
    assert result["pairing"] == "class_random" and 0 <= result["best"]["test"]["acc"] <= 1
    pairs = PairList.load(Path(result["checkpoint"]).parents[1] / "pairs.json")
    assert len(pairs) == 50 and np.array_equal(pairs.student_labels, pairs.teacher_labels)


def test_sembridge_pipeline_on_unpaired_eurosat(quiet_run, data_root, tmp_path, capsys) -> None:
    teacher = train_classifier(
        MS, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "ms", 0
    )["checkpoint"]
    pair_file = tmp_path / "pairs.json"
    pairs = match_pairs(
        teacher,
        RGB,
        "rgb",
        0,
        pair_file,
        pseudo_view="eurosat_ms_to_rgb",
        backbone="small_cnn",
        epochs=1,
        progress=False,
    )
    assert pair_file.is_file() and np.array_equal(pairs.student_labels, pairs.teacher_labels)
    distill = DistillConfig(
        teacher=teacher,
        terms=[*KD, TermConfig("ska", 0.003, {"dim": 32, "heads": 4})],
        pairing=PairingConfig("matched", pairs=str(pair_file), dynamic=True, schedule=[1]),
    )
    result = distill_student(
        RGB, TINY, OptimConfig(epochs=2), replace(quiet_run, name="sb"), distill, "rgb", 0
    )
    header = _header(result)
    assert "pairing/changed" in header and any(c.startswith("train/ska") for c in header)
    # The re-matched table is training state: it is in the checkpoint a resume starts from.
    last = torch.load(Path(result["checkpoint"]).with_name("last.ckpt"), weights_only=False)
    saved = PairList.load(Path(result["checkpoint"]).parents[1] / "pairs.json")
    assert len(last["pairing"]["table"]) == len(saved) == 80
    assert main(["pairs", "show", str(Path(result["checkpoint"]).parents[1])]) == 0
    assert "coverage" in capsys.readouterr().out.lower()


def test_teacher_trained_on_the_students_test_samples_is_refused(quiet_run, data_root) -> None:
    teacher = train_classifier(
        MS, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "ms", 0
    )["checkpoint"]
    # The RGB twins of the MS patches: the student's test patches are the teacher's training
    # patches seen in another modality.
    twins = DataConfig(source="eurosat_rgb", options={"subset": "paired"})
    distill = DistillConfig(teacher=teacher, terms=KD, pairing=PairingConfig("class_random"))
    with pytest.raises(CmkdError, match="samples of the student's (val|test) split"):
        distill_student(twins, TINY, OptimConfig(epochs=1), quiet_run, distill, "rgb", seed=1)


def test_oracle_bank_pairs_each_ms_sample_with_its_true_rgb_twin(quiet_run, data_root) -> None:
    from lightning.pytorch.callbacks import Callback

    from cmkd.bench.scenarios import SCENARIOS, oracle
    from cmkd.data.datamodule import ModalityDataset, prepare_data

    class Capture(Callback):
        def on_fit_start(self, trainer, module) -> None:
            self.inputs = module.teacher_inputs.clone()

    teacher = train_classifier(
        RGB, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "rgb", 0
    )["checkpoint"]
    capture = Capture()
    distill = replace(
        oracle(DistillConfig(terms=KD), SCENARIOS["eurosat_rgb_to_ms"]), teacher=teacher
    )
    distill_student(
        MS,
        TINY,
        OptimConfig(epochs=1),
        replace(quiet_run, name="o"),
        distill,
        "ms",
        0,
        callbacks=(capture,),
    )
    twins = prepare_data(DataConfig(source="eurosat_paired"), 0)
    assert np.array_equal(
        twins.rows("rgb", "train").ids, prepare_data(MS, 0).rows("ms", "train").ids
    )
    expected = ModalityDataset(twins.rows("rgb", "train"), "rgb").x
    assert torch.equal(capture.inputs, expected)
