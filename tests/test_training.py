"""End to end on small real data: supervised training, paired distillation, resume, evaluate."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cmkd.checkpointing import file_sha256
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TermConfig
from cmkd.data.datamodule import ModalityDataModule, prepare_data
from cmkd.errors import CmkdError
from cmkd.recipes import distill_student, evaluate_checkpoint, load_model, train_classifier

MFEAT = DataConfig(source="mfeat", options={"views": ["fac", "pix"]}, batch_size=64)
MLP = ModelConfig(backbone="mlp", options={"hidden": [64]})
EUROSAT = DataConfig(source="eurosat_paired", batch_size=64)
TINY_CNN = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})


def test_supervised_training_learns_on_real_digits(quiet_run, data_root) -> None:
    result = train_classifier(MFEAT, MLP, OptimConfig(epochs=8), quiet_run, "fac", seed=0)
    # 10 classes, 400 test rows: chance is 10 %; a linear-ish model on profile correlations
    # reaches > 90 % in a few epochs, so 80 % is a loose floor that still proves learning.
    assert result["best"]["test"]["acc"] > 0.8
    assert set(result["best"]["test"]["acc_per_class"]) == {str(d) for d in range(10)}
    run_dir = Path(quiet_run.output_dir) / "mfeat-fac-mlp" / "seed0"
    for name in (
        "config.yaml",
        "results.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    # last.ckpt is the final epoch (a resume starts there), whichever epoch was best.
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 7
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == result["best"]["epoch"]
    assert json.loads((run_dir / "results.json").read_text()) == result


def test_paired_distillation_on_eurosat_twins(quiet_run, data_root) -> None:
    optim = OptimConfig(epochs=2)
    teacher = train_classifier(EUROSAT, TINY_CNN, optim, replace(quiet_run, name="t"), "ms", 0)
    distill = DistillConfig(
        teacher=teacher["checkpoint"], terms=[TermConfig("kd", 0.5, {"temperature": 4.0})]
    )
    result = distill_student(
        EUROSAT, TINY_CNN, optim, replace(quiet_run, name="s"), distill, "rgb", 0
    )
    assert 0.0 <= result["best"]["test"]["acc"] <= 1.0 and result["modality"] == "rgb"
    # The KD term was optimised and logged under its own name.
    run_dir = Path(quiet_run.output_dir) / "s" / "seed0"
    header = next(csv.reader(open(run_dir / "csv" / "metrics.csv")))
    assert {"train/ce", "train/kd", "train/loss", "val/acc"} <= set(header)
    # The frozen teacher is referenced (its file and that file's hash), not copied: no
    # teacher weights in the student's checkpoints (changed on purpose, issue #19).
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    assert hparams["terms"][0]["name"] == "kd" and hparams["ce_weight"] == 0.5
    assert "teacher" not in hparams and "teacher_inputs" not in hparams
    assert hparams["teacher_checkpoint"] == str(Path(teacher["checkpoint"]).resolve())
    assert hparams["teacher_sha256"] == file_sha256(teacher["checkpoint"])
    assert not [k for k in ckpt["state_dict"] if k.startswith("teacher.")]
    assert "optimizer_states" not in ckpt  # best.ckpt: weights only


def test_teacher_cache_equals_recomputed_outputs_and_teacher_gets_no_gradient(
    quiet_run, data_root
) -> None:
    from cmkd.methods.distill import DistillModule
    from cmkd.pairing.strategies import IdentityPairing
    from cmkd.recipes import module_args

    prepared = prepare_data(MFEAT, 0)
    teacher = train_classifier(
        MFEAT, MLP, OptimConfig(epochs=1), quiet_run, "fac", 0, prepared=prepared
    )
    t_model, _ = load_model(teacher["checkpoint"])
    t_rows = prepared.rows("fac", "train")
    module = DistillModule(
        **module_args(MLP, OptimConfig(), MFEAT, prepared, "pix", 0),
        teacher=t_model,
        teacher_inputs=torch.from_numpy(t_rows.x),
        pairing=IdentityPairing(prepared.rows("pix", "train").ids, t_rows.ids),
        terms=[{"name": "kd", "weight": 1.0}],
    )
    module.on_fit_start()
    batch = next(iter(ModalityDataModule(prepared, "pix", 32, 0).train_dataloader()))
    cached = module.teacher_outputs(batch).logits
    with torch.no_grad():
        direct = t_model(torch.from_numpy(t_rows.x[batch["index"].numpy()])).logits
    torch.testing.assert_close(cached, direct)
    loss = sum(module.training_losses(batch).values())
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None for p in module.model.parameters())


class _Interrupt(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


def test_resume_after_interruption_matches_an_uninterrupted_run(quiet_run, data_root) -> None:
    optim = OptimConfig(epochs=4)
    full = train_classifier(MFEAT, MLP, optim, replace(quiet_run, name="full"), "fac", 0)
    crashed = replace(quiet_run, name="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_classifier(MFEAT, MLP, optim, crashed, "fac", 0, callbacks=(_Interrupt(),))
    with pytest.raises(CmkdError, match="already holds a run"):
        train_classifier(MFEAT, MLP, optim, crashed, "fac", 0)
    resumed = train_classifier(MFEAT, MLP, optim, replace(crashed, resume=True), "fac", 0)
    a = torch.load(full["checkpoint"].replace("best", "last"), weights_only=False)
    b = torch.load(resumed["checkpoint"].replace("best", "last"), weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value)
    assert resumed["last"]["test"] == full["last"]["test"]


def test_evaluate_reproduces_the_run_and_teacher_split_is_checked(quiet_run, data_root) -> None:
    result = train_classifier(MFEAT, MLP, OptimConfig(epochs=2), quiet_run, "fac", 0)
    scores = evaluate_checkpoint(result["checkpoint"], "test")
    assert scores["test/acc"] == pytest.approx(result["best"]["test"]["acc"])
    with pytest.raises(CmkdError, match="samples of the student.s (val|test) split"):
        distill_student(
            MFEAT,
            MLP,
            OptimConfig(epochs=1),
            quiet_run,
            DistillConfig(teacher=result["checkpoint"]),
            "pix",
            seed=1,
        )
    with pytest.raises(CmkdError, match="does not exist"):
        load_model("/nonexistent.ckpt")


class _Payload:
    """Unpickling this would create a file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_untrusted_or_truncated_checkpoints_are_refused_without_running_code(tmp_path) -> None:
    from cmkd.errors import CmkdError
    from cmkd.recipes import load_model

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": _Payload(str(marker)), "state_dict": {}}, evil)
    with pytest.raises(CmkdError, match="not a readable cmkd checkpoint"):
        load_model(evil)
    assert not marker.exists()
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CmkdError, match="not a readable cmkd checkpoint"):
        load_model(truncated)
