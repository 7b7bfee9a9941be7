"""Each loss config in configs/eurosat_paired/losses runs end to end on the real EuroSAT twins
(one short epoch with tiny networks; the full comparison is `cmkd bench losses`)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.config_files import load_distill_section
from cmkd.data.datamodule import prepare_data
from cmkd.recipes import distill_student, train_classifier

DATA = DataConfig(source="eurosat_paired", batch_size=64)
TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})
CONFIGS = sorted((Path(__file__).parents[1] / "configs/eurosat_paired/losses").glob("*.yaml"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_root):
    from cmkd.config import RunConfig

    out = tmp_path_factory.mktemp("runs")
    run = RunConfig(output_dir=str(out), accelerator="cpu", progress_bar=False, name="t")
    prepared = prepare_data(DATA, 0)
    return prepared, train_classifier(
        DATA, TINY, OptimConfig(epochs=1), run, "ms", 0, prepared=prepared
    )["checkpoint"]


def test_there_is_a_config_per_registered_loss() -> None:
    from cmkd.losses import LOSSES

    assert {p.stem for p in CONFIGS} == set(LOSSES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_loss_config_distils_end_to_end(path: Path, teacher, quiet_run) -> None:
    prepared, checkpoint = teacher
    distill = replace(load_distill_section(path), teacher=checkpoint)
    result = distill_student(
        DATA, TINY, OptimConfig(epochs=1), quiet_run, distill, "rgb", 0, prepared=prepared
    )
    assert 0.0 <= result["last"]["test"]["acc"] <= 1.0
    run_dir = Path(result["checkpoint"]).parents[1]
    header = next(csv.reader(open(run_dir / "csv" / "metrics.csv")))
    for term in distill.terms:
        assert any(col.startswith(f"train/{term.name}") for col in header), term.name
