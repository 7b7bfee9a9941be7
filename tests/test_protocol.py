"""A researcher's own protocol: SGD momentum and Nesterov, no input standardisation, and the
split an npz file carries (its own test, optionally val, rows), on real mfeat rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd.checkpoints import load_model
from cmkd.cli import main
from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.data.datamodule import prepare_data
from cmkd.errors import CmkdError
from cmkd.methods.classifier import ClassifierModule
from cmkd.recipes import module_args

QUIET = ["--run.progress_bar", "false", "--run.accelerator", "cpu", "--optim.epochs", "1"]


@pytest.fixture(scope="module")
def mfeat(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real Fourier view of UCI mfeat (2000 x 76), labels 0-9."""
    table = np.loadtxt(data_root / "mfeat" / "mfeat-fou.csv", delimiter=",", skiprows=1)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def _module(optim: OptimConfig, data: DataConfig | None = None) -> ClassifierModule:
    data = data or DataConfig(source="mfeat", options={"views": ["fou"]})
    prepared = prepare_data(data, 0)
    return ClassifierModule(**module_args(ModelConfig("mlp"), optim, data, prepared, "fou", 0))


# --- SGD momentum and Nesterov ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "momentum", "nesterov"),
    [
        ({}, 0.9, False),
        ({"momentum": 0.5, "nesterov": True}, 0.5, True),
        ({"momentum": 0}, 0, False),
    ],
)
def test_sgd_momentum_and_nesterov_reach_the_optimiser(
    data_root, options, momentum, nesterov
) -> None:
    group = _module(OptimConfig(optimizer="sgd", **options)).configure_optimizers().param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (momentum, nesterov)


def test_checkpoints_from_before_the_options_keep_momentum_09(data_root) -> None:
    module = _module(OptimConfig(optimizer="sgd"))
    for key in ("momentum", "nesterov"):
        del module.hparams.optim[key]
    group = module.configure_optimizers().param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.9, False)


def test_momentum_options_are_in_the_help_and_in_the_trained_checkpoint(
    data_root, tmp_path, capsys
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--optim.momentum" in help_text and "SGD only: momentum factor" in help_text
    assert "--optim.nesterov" in help_text and "SGD only: Nesterov momentum" in help_text
    args = ["train", "--modality", "fou", "--data.source", "mfeat", "--model.backbone", "mlp"]
    args += ["--optim.optimizer", "sgd", "--optim.momentum", "0.6", "--optim.nesterov", "true"]
    assert main([*args, *QUIET, "--run.output_dir", str(tmp_path)]) == 0
    ckpt = torch.load(
        tmp_path / "mfeat-fou-mlp" / "seed0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert (group["momentum"], group["nesterov"]) == (0.6, True)


# --- no standardisation ----------------------------------------------------------------------


def test_standardize_false_keeps_an_identity_standardisation(data_root, tmp_path) -> None:
    fitted = _module(OptimConfig()).model.normalize
    plain = _module(OptimConfig(), DataConfig(source="mfeat", standardize=False)).model.normalize
    assert fitted.mean.shape == plain.mean.shape == (76,)
    assert fitted.mean.abs().sum() > 0  # training statistics by default
    assert torch.equal(plain.mean, torch.zeros(76)) and torch.equal(plain.std, torch.ones(76))
    args = ["train", "--modality", "fou", "--data.source", "mfeat", "--model.backbone", "mlp"]
    assert (
        main([*args, "--data.standardize", "false", *QUIET, "--run.output_dir", str(tmp_path)]) == 0
    )
    model, hparams = load_model(tmp_path / "mfeat-fou-mlp" / "seed0", "last")
    assert (
        torch.equal(model.normalize.mean, torch.zeros(76))
        and hparams["data"]["standardize"] is False
    )
    x = torch.randn(3, 76)
    torch.testing.assert_close(model.normalize(x), x)


# --- the split an npz file carries -----------------------------------------------------------


def _carried(mfeat, tmp_path: Path, form: str, with_val: bool) -> tuple[Path, dict]:
    """Real mfeat rows as an npz carrying its split: every 4th row test, (every 4th + 1 val),
    as separate arrays ("parts") or as a split array. Returns the file and the ids per split."""
    x, y = mfeat
    row = np.arange(len(y))
    ids = np.array([f"r{i}" for i in row])
    which = np.where(row % 4 == 0, "test", np.where(with_val & (row % 4 == 1), "val", "train"))
    path = tmp_path / f"{form}.npz"
    if form == "split":
        np.savez(path, x_fou=x, y=y, ids=ids, split=which)
    else:
        arrays = {}
        for part, suffix in (("train", ""), ("val", "_val"), ("test", "_test")):
            rows = which == part
            if rows.any():
                arrays |= {f"x_fou{suffix}": x[rows], f"y{suffix}": y[rows]}
                arrays[f"ids{suffix}"] = ids[rows]
        np.savez(path, **arrays)
    return path, {part: set(ids[which == part]) for part in ("train", "val", "test")}


def _split_ids(path: Path, **config) -> dict[str, set]:
    prepared = prepare_data(DataConfig(source="npz", options={"path": str(path)}, **config), 3)
    return {s: set(prepared.rows("fou", s).ids) for s in ("train", "val", "test")}


@pytest.mark.parametrize("form", ["parts", "split"])
@pytest.mark.parametrize("split", ["auto", "official"])
def test_npz_with_its_own_test_and_val_rows_keeps_them(mfeat, tmp_path, form, split) -> None:
    path, expected = _carried(mfeat, tmp_path, form, with_val=True)
    assert _split_ids(path, split=split, val_fraction=0.3, test_fraction=0.3) == expected


@pytest.mark.parametrize("form", ["parts", "split"])
def test_npz_with_its_own_test_rows_draws_val_from_its_train_rows(mfeat, tmp_path, form) -> None:
    path, expected = _carried(mfeat, tmp_path, form, with_val=False)
    got = _split_ids(path, val_fraction=0.2)
    assert got["test"] == expected["test"]
    assert got["train"] | got["val"] == expected["train"] and not got["train"] & got["val"]
    # 150 training rows per class in the file; a fifth of each class becomes validation.
    assert len(got["val"]) == 10 * round(150 * 0.2)
    assert got == _split_ids(_carried(mfeat, tmp_path, "parts", False)[0], val_fraction=0.2)


def test_explicit_stratified_split_ignores_the_carried_one(mfeat, tmp_path) -> None:
    path, expected = _carried(mfeat, tmp_path, "split", with_val=True)
    got = _split_ids(path, split="stratified", val_fraction=0.1, test_fraction=0.1)
    assert len(got["test"]) == 10 * 20 and got["test"] != expected["test"]


def test_official_split_needs_one_to_exist(mfeat, tmp_path) -> None:
    x, y = mfeat
    np.savez(tmp_path / "plain.npz", x_fou=x, y=y)
    with pytest.raises(CmkdError, match="no official test split.*npz file that carries its own"):
        _split_ids(tmp_path / "plain.npz", split="official")


def test_training_on_an_npz_with_its_own_split(mfeat, tmp_path) -> None:
    path, expected = _carried(mfeat, tmp_path, "parts", with_val=True)
    args = ["train", "--modality", "fou", "--data.source", "npz", "--model.backbone", "mlp"]
    args += ["--data.options", json.dumps({"path": str(path)}), "--run.output_dir", str(tmp_path)]
    assert main([*args, *QUIET]) == 0
    results = json.loads((tmp_path / "npz-fou-mlp" / "seed0" / "results.json").read_text())
    assert results["train_samples"] == len(expected["train"])
