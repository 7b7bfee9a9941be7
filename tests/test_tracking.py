"""run.track_test: the test score of every validated epoch (authors'-protocol reporting only)
is recorded without changing the run: same selection, same weights, same scores."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.recipes import train_classifier

MFEAT = DataConfig(source="mfeat", options={"views": ["fac"]}, batch_size=64)
MLP = ModelConfig(backbone="mlp", options={"hidden": [32]})


def test_tracking_records_every_epoch_and_changes_nothing(quiet_run, data_root) -> None:
    optim = OptimConfig(epochs=4)
    plain = train_classifier(MFEAT, MLP, optim, replace(quiet_run, name="a"), "fac", 0)
    tracked = train_classifier(
        MFEAT, MLP, optim, replace(quiet_run, name="b", track_test=True), "fac", 0
    )
    assert "test_by_epoch" not in plain and "best_on_test" not in plain
    for which in ("best", "last"):
        assert tracked[which]["test"] == plain[which]["test"]
    assert tracked["best"]["epoch"] == plain["best"]["epoch"]
    curve = dict(tracked["test_by_epoch"])
    assert sorted(curve) == [0, 1, 2, 3]
    # The tracker's score of the last epoch is the last-epoch test accuracy itself.
    assert curve[3] == pytest.approx(tracked["last"]["test"]["acc"], abs=1e-6)
    chosen = tracked["best_on_test"]
    assert chosen["test"]["acc"] == max(curve.values()) == curve[chosen["epoch"]]
    # Picking on test can only look better than the fairly chosen epoch.
    assert chosen["test"]["acc"] >= tracked["best"]["test"]["acc"] - 1e-6
    assert "authors' protocol" in chosen["note"]
