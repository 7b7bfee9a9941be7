"""Unpaired (zip) distillation end to end on a small real subset: an MS teacher on the EuroSAT
twins teaches RGB patches that have no MS twin, each student sample taught by a teacher sample
drawn without looking at labels (the DisCoM-KD way of training without pairs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    TermConfig,
)
from cmkd.pairing.strategies import UnpairedZipPairing
from cmkd.recipes import distill_student, train_classifier

TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})
MS = DataConfig(source="eurosat_ms", batch_size=64)
RGB = DataConfig(source="eurosat_rgb", options={"subset": "unpaired", "per_class_limit": 12})


class _SeenPairs(Callback):
    """Records, for every training batch, the student rows and the teacher rows they got."""

    def __init__(self) -> None:
        self.student: list[np.ndarray] = []
        self.teacher: list[np.ndarray] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        rows = batch["index"]
        self.student.append(rows.numpy())
        self.teacher.append(module.pairing.teacher_rows(rows, trainer.current_epoch).numpy())


def test_unpaired_zip_distillation_runs_and_ignores_labels(quiet_run, data_root) -> None:
    teacher = train_classifier(
        MS, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "ms", 0
    )["checkpoint"]
    distill = DistillConfig(
        teacher=teacher,
        terms=[TermConfig("kd", 0.5, {"temperature": 4.0})],
        pairing=PairingConfig("unpaired"),
    )
    seen = _SeenPairs()
    result = distill_student(
        RGB,
        TINY,
        OptimConfig(epochs=1),
        replace(quiet_run, name="s"),
        distill,
        "rgb",
        0,
        callbacks=(seen,),
    )
    assert result["pairing"] == "unpaired" and 0 <= result["best"]["test"]["acc"] <= 1
    student, taught_by = np.concatenate(seen.student), np.concatenate(seen.teacher)
    assert np.array_equal(np.sort(student), np.arange(80))  # one epoch over all 80 students
    # 80 students, 221 MS teachers: the epoch-0 permutation truncated, no teacher repeated
    expected = UnpairedZipPairing(80, 221, seed=0).table_for(0)
    assert np.array_equal(taught_by, expected[student]) and len(set(taught_by)) == 80
    # labels played no part: with 10 classes most pairs cross classes
    from cmkd.data.datamodule import prepare_data

    s_y = prepare_data(RGB, 0).rows("rgb", "train").y
    t_y = prepare_data(MS, 0).rows("ms", "train").y
    assert (t_y[taught_by] != s_y[student]).mean() > 0.6
    # a pair list never crosses classes, so the run keeps none
    assert not (Path(result["checkpoint"]).parents[1] / "pairs.json").exists()
