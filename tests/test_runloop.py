"""The run loop (issues #15, #16, #19): epochs without a validation or test split, validation
and checkpoint intervals, blocks of data epochs per Lightning epoch, what checkpoints hold,
non-finite losses, run names that stay inside output_dir, precision, layout and threads."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cmkd.checkpointing import AtomicCheckpointIO, file_sha256
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig
from cmkd.epochs import default_interval, plan_epochs
from cmkd.errors import CmkdError
from cmkd.recipes import distill_student, train_classifier

MFEAT = DataConfig(source="mfeat", options={"views": ["fac", "pix"]}, batch_size=64)
# 1,200 training rows in 10 batches of 128 (the last one short): a "tiny" epoch, run in blocks.
MFEAT_128 = replace(MFEAT, batch_size=128)
KAR = DataConfig(source="mfeat", options={"views": ["kar"]}, batch_size=128)
MLP = ModelConfig(backbone="mlp", options={"hidden": [16]})


@pytest.fixture
def one_thread():
    """Bit-equal comparisons need one reduction order: one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _run_dir(run: RunConfig, name: str) -> Path:
    return Path(run.output_dir) / name / "seed0"


# --- the plan ---------------------------------------------------------------------------------


def test_default_interval_leaves_short_runs_alone_and_caps_long_ones() -> None:
    assert [default_interval(e) for e in (1, 30, 50, 51, 100, 1000)] == [1, 1, 1, 2, 2, 20]
    plan = plan_epochs(10, val_every=4, checkpoint_every=4)
    # After the epochs that end a multiple of 4, and always after the last.
    assert [e for e in range(10) if plan.validates(e)] == [3, 7, 9]
    assert [e for e in range(10) if plan.checkpoints(e)] == [3, 7, 9]
    blocks = plan_epochs(10, val_every=4, checkpoint_every=4, blocks=True)
    assert blocks.block == 4 and blocks.lightning_epochs == 3
    assert [list(blocks.data_epochs(j)) for j in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [blocks.validates(j) for j in range(3)] == [True, True, True]
    mixed = plan_epochs(12, val_every=4, checkpoint_every=6, blocks=True)
    assert mixed.block == 2 and [j for j in range(6) if mixed.validates(j)] == [1, 3, 5]
    assert [j for j in range(6) if mixed.checkpoints(j)] == [2, 5]
    assert not plan_epochs(5, validation=False).validates(4)
    with pytest.raises(CmkdError, match="val_every"):
        plan_epochs(5, val_every=0)


# --- blocks of data epochs --------------------------------------------------------------------


def _train_twice(run: RunConfig, optim: OptimConfig, data=MFEAT_128) -> tuple:
    blocked = train_classifier(data, MLP, optim, replace(run, name="blocks"), "fac", 0)
    single_run = replace(run, name="single", epoch_blocks=False)
    single = train_classifier(data, MLP, optim, single_run, "fac", 0)
    return blocked, single


def test_blocks_of_data_epochs_train_bit_equal_to_one_lightning_epoch_each(
    quiet_run, data_root, one_thread
) -> None:
    # 1,200 training rows in batches of 128 (a short last batch), Adam with a cosine schedule:
    # the order, the steps and the schedule must be the same, bit for bit.
    optim = OptimConfig(epochs=10, scheduler="cosine")
    run = replace(quiet_run, val_every=4, checkpoint_every=4)
    blocked, single = _train_twice(run, optim)
    assert blocked["run"]["epochs_per_lightning_epoch"] == 4
    assert single["run"]["epochs_per_lightning_epoch"] == 1
    a = _ckpt(_run_dir(run, "blocks") / "checkpoints" / "last.ckpt")
    b = _ckpt(_run_dir(run, "single") / "checkpoints" / "last.ckpt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=0, atol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for part in ("best", "last"):
        assert blocked[part] == single[part]
    assert blocked["best"]["epoch"] in (3, 7, 9)
    # Both validated after the same data epochs: 3, 7 and the last.
    for name in ("blocks", "single"):
        lines = (_run_dir(run, name) / "csv" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
        assert [int(float(r["epoch"])) for r in rows if r["val/acc"]] == [3, 7, 9]
        trained = [int(float(r["epoch"])) for r in rows if r["train/loss"]]
        assert trained == ([3, 7, 9] if name == "blocks" else list(range(10)))


def test_epochs_of_many_steps_keep_one_lightning_epoch_each(quiet_run, data_root) -> None:
    # 19 batches of 64 per epoch: per-step progress is worth more than the blocks would save.
    run = replace(quiet_run, val_every=2)
    result = train_classifier(MFEAT, MLP, OptimConfig(epochs=4), run, "fac", 0)
    assert result["run"]["epochs_per_lightning_epoch"] == 1 and result["run"]["val_every"] == 2


class _CrashAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_run_in_blocks_resumes_to_the_uninterrupted_result(
    quiet_run, data_root, one_thread
) -> None:
    optim = OptimConfig(epochs=9, scheduler="cosine", optimizer="sgd", lr=0.05)
    run = replace(quiet_run, val_every=3)
    full = train_classifier(MFEAT_128, MLP, optim, replace(run, name="full"), "fac", 0)
    crashed = replace(run, name="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_classifier(MFEAT_128, MLP, optim, crashed, "fac", 0, callbacks=(_CrashAt(2),))
    last = _run_dir(run, "crashed") / "checkpoints" / "last.ckpt"
    assert _ckpt(last)["epoch"] == 1  # the second block (data epochs 3-5) is the resume point
    # Lightning's epoch 1 means data epochs 3-5 only in blocks of 3: counted another way, the
    # resume would shift every schedule, so it is refused.
    other = replace(crashed, resume=True, epoch_blocks=False)
    with pytest.raises(CmkdError, match="3 data epochs per Lightning epoch, this run would use 1"):
        train_classifier(MFEAT_128, MLP, optim, other, "fac", 0)
    resumed = train_classifier(MFEAT_128, MLP, optim, replace(crashed, resume=True), "fac", 0)
    a, b = _ckpt(_run_dir(run, "full") / "checkpoints" / "last.ckpt"), _ckpt(last)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    assert resumed["best"] == full["best"] and resumed["last"] == full["last"]


# --- no validation split, no test split -------------------------------------------------------


def test_no_validation_split_keeps_the_last_epoch_and_says_so(quiet_run, data_root) -> None:
    data = replace(MFEAT, val_fraction=0.0)
    result = train_classifier(data, MLP, OptimConfig(epochs=3), quiet_run, "fac", 0)
    assert result["selection"] == "last epoch (no validation split)"
    assert "best" not in result
    assert result["last"]["epoch"] == 2 and result["last"]["test"]["acc"] > 0.5
    run_dir = _run_dir(quiet_run, "mfeat-fac-mlp")
    assert result["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()
    assert json.loads((run_dir / "results.json").read_text()) == result
    # As a teacher, its folder points to the weights it kept.
    with pytest.raises(CmkdError, match="no best.ckpt .*teacher_weights last"):
        distill_student(MFEAT, MLP, OptimConfig(epochs=1), quiet_run,
                        DistillConfig(teacher=str(run_dir)), "pix", 0)  # fmt: skip


def test_no_test_split_trains_and_scores_nothing(quiet_run, data_root) -> None:
    data = replace(MFEAT, test_fraction=0.0)
    result = train_classifier(data, MLP, OptimConfig(epochs=2), quiet_run, "fac", 0)
    assert result["evaluation"] == "none (no test split)"
    assert "test" not in result["last"] and "test" not in result["best"]
    assert result["best"]["val_acc"] > 0.5
    neither = replace(MFEAT, val_fraction=0.0, test_fraction=0.0)
    run = replace(quiet_run, name="neither")
    result = train_classifier(neither, MLP, OptimConfig(epochs=2), run, "fac", 0)
    assert result["train_samples"] == 2000 and "best" not in result
    assert "test" not in result["last"] and Path(result["checkpoint"]).is_file()


def test_cli_prints_a_run_without_validation_or_test_split(tmp_path, data_root, capsys) -> None:
    from cmkd.cli import main

    args = [
        "train",
        "--modality=kar",
        "--data.source=mfeat",
        '--data.options={"views": ["kar"]}',
        "--data.val_fraction=0",
        "--data.test_fraction=0",
        "--model.backbone=linear",
        "--optim.epochs=1",
        f"--run.output_dir={tmp_path}",
        "--run.accelerator=cpu",
        "--run.progress_bar=false",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "none (no test split)" in out and "last epoch (no validation split)" in out


# --- the linear model -------------------------------------------------------------------------


def test_linear_backbone_is_one_layer_whose_embedding_is_the_input(data_root) -> None:
    from cmkd.models.backbones import create_network

    net = create_network("linear", 64, 10)
    assert sum(p.numel() for p in net.parameters()) == 64 * 10 + 10
    x = torch.randn(5, 64)
    out = net(x)
    assert torch.equal(out.embedding, x) and out.feature_map is None
    torch.testing.assert_close(out.logits, net.classifier(x))
    same = create_network("mlp", 64, 10, hidden=[])
    assert [type(m) for m in same.modules()] == [type(m) for m in net.modules()]
    with pytest.raises(CmkdError, match="no pretrained weights"):
        create_network("linear", 64, 10, pretrained=True)


def test_linear_model_learns_the_karhunen_loeve_view(quiet_run, data_root) -> None:
    model = ModelConfig(backbone="linear")
    result = train_classifier(KAR, model, OptimConfig(epochs=5, lr=0.01), quiet_run, "kar", 0)
    # 64 Karhunen-Loeve coefficients are nearly linearly separable: > 90 % within 5 epochs;
    # chance is 10 %.
    assert result["best"]["test"]["acc"] > 0.9


# --- checkpoints ------------------------------------------------------------------------------


def test_best_is_weights_only_last_holds_the_training_state(quiet_run, data_root) -> None:
    run = replace(quiet_run, checkpoint_every=2)
    train_classifier(MFEAT, MLP, OptimConfig(epochs=3), run, "fac", 0)
    folder = _run_dir(run, "mfeat-fac-mlp") / "checkpoints"
    best, last = _ckpt(folder / "best.ckpt"), _ckpt(folder / "last.ckpt")
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert last["optimizer_states"] and last["epoch"] == 2
    assert (folder / "best.ckpt").stat().st_size < (folder / "last.ckpt").stat().st_size
    with pytest.raises(CmkdError, match="weights only"):
        from cmkd.checkpointing import check_resume_checkpoint

        check_resume_checkpoint(folder / "best.ckpt")


def test_checkpoints_are_fsynced_only_when_asked(tmp_path, monkeypatch) -> None:
    import cmkd.io

    synced: list[Path] = []
    monkeypatch.setattr(cmkd.io, "_fsync", lambda path: synced.append(Path(path)))
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, tmp_path / "a.ckpt")
    assert synced == []
    AtomicCheckpointIO(durable=True).save_checkpoint({"epoch": 0}, tmp_path / "b.ckpt")
    # The temp file before its rename, then the folder that holds the rename.
    assert [p.name.startswith(".b.ckpt.") for p in synced] == [True, False]
    assert synced[1] == tmp_path


def test_async_checkpoints_are_whole_and_resume(quiet_run, data_root, one_thread) -> None:
    optim = OptimConfig(epochs=4)
    run = replace(quiet_run, async_checkpoints=True)
    full = train_classifier(MFEAT, MLP, optim, replace(run, name="full"), "fac", 0)
    crashed = replace(run, name="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_classifier(MFEAT, MLP, optim, crashed, "fac", 0, callbacks=(_CrashAt(2),))
    resumed = train_classifier(MFEAT, MLP, optim, replace(crashed, resume=True), "fac", 0)
    assert resumed["last"] == full["last"] and resumed["best"] == full["best"]


def _teacher_and_distill(run: RunConfig, epochs: int = 3):
    teacher = train_classifier(MFEAT, MLP, OptimConfig(epochs=1), replace(run, name="t"), "fac")
    distill = DistillConfig(teacher=teacher["checkpoint"])
    return teacher, distill, OptimConfig(epochs=epochs)


def test_student_checkpoints_reference_the_teacher_and_refuse_a_changed_one(
    quiet_run, data_root
) -> None:
    teacher, distill, optim = _teacher_and_distill(quiet_run)
    student = replace(quiet_run, name="s")
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill_student(MFEAT, MLP, optim, student, distill, "pix", callbacks=(_CrashAt(2),))
    last = _run_dir(quiet_run, "s") / "checkpoints" / "last.ckpt"
    ckpt = _ckpt(last)
    assert not [k for k in ckpt["state_dict"] if k.startswith("teacher.")]
    assert ckpt["hyper_parameters"]["teacher_sha256"] == file_sha256(teacher["checkpoint"])
    # The teacher file is rewritten with other weights: resuming would distil from another
    # teacher than the one the run started with.
    original = Path(teacher["checkpoint"]).read_bytes()
    changed = _ckpt(Path(teacher["checkpoint"]))
    for key in changed["state_dict"]:
        if key.endswith("classifier.weight"):
            changed["state_dict"][key] = changed["state_dict"][key] + 1.0
    torch.save(changed, teacher["checkpoint"])
    resume = replace(student, resume=True)
    with pytest.raises(CmkdError, match="teacher checkpoint changed"):
        distill_student(MFEAT, MLP, optim, resume, distill, "pix")
    Path(teacher["checkpoint"]).write_bytes(original)
    result = distill_student(MFEAT, MLP, optim, resume, distill, "pix")
    assert result["last"]["epoch"] == 2 and 0 <= result["best"]["test"]["acc"] <= 1


# --- failures ---------------------------------------------------------------------------------


class _PoisonAt(Callback):
    """Makes the network's output NaN from epoch `epoch` on (a stand-in for divergence)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(module.model.parameters()).fill_(float("nan"))


def test_a_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    quiet_run, data_root
) -> None:
    with pytest.raises(CmkdError, match=r"at epoch 2, step 0: .*optim\.lr") as err:
        train_classifier(
            MFEAT, MLP, OptimConfig(epochs=4), quiet_run, "fac", callbacks=(_PoisonAt(2),)
        )
    assert "\n" not in str(err.value)
    last = _ckpt(_run_dir(quiet_run, "mfeat-fac-mlp") / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_cli_lr_1e30_is_a_one_line_error_and_the_rerun_is_not_blocked(
    tmp_path, data_root, capsys
) -> None:
    from cmkd.cli import main

    args = [
        "train",
        "--modality=fac",
        "--data.source=mfeat",
        '--data.options={"views": ["fac"]}',
        "--model.backbone=mlp",
        "--optim.epochs=2",
        f"--run.output_dir={tmp_path}",
        "--run.name=big-lr",
        "--run.accelerator=cpu",
        "--run.progress_bar=false",
    ]
    assert main([*args, "--optim.lr=1e30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmkd: error: the training loss is") and "\n" not in err
    assert "epoch 0" in err and "lower --optim.lr" in err.lower()
    # Nothing worth keeping was written (no checkpoint): the corrected rerun just runs.
    assert main([*args, "--optim.lr=1e-3"]) == 0
    assert (tmp_path / "big-lr" / "seed0" / "results.json").is_file()


def test_a_folder_without_checkpoints_does_not_block_but_a_finished_run_does(
    quiet_run, data_root
) -> None:
    run = replace(quiet_run, name="x")
    folder = _run_dir(run, "x")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("left by a failed start\n")
    (folder / "csv").mkdir()
    train_classifier(MFEAT, MLP, OptimConfig(epochs=1), run, "fac", 0)
    with pytest.raises(CmkdError, match="already holds a run"):
        train_classifier(MFEAT, MLP, OptimConfig(epochs=1), run, "fac", 0)
    other = replace(quiet_run, name="y")
    _run_dir(other, "y").mkdir(parents=True)
    (_run_dir(other, "y") / "notes.txt").write_text("the user's own file")
    with pytest.raises(CmkdError, match="already holds a run"):
        train_classifier(MFEAT, MLP, OptimConfig(epochs=1), other, "fac", 0)


@pytest.mark.parametrize("name", ["../../x", "../x", "/tmp/x", "", "  ", ".", "a/../../b", "~/x"])
def test_run_names_cannot_leave_output_dir(tmp_path, name, data_root) -> None:
    out = tmp_path / "runs"
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep").write_text("must survive")
    run = RunConfig(str(out), name=name, accelerator="cpu", progress_bar=False, overwrite=True)
    with pytest.raises(CmkdError, match="run.name"):
        train_classifier(MFEAT, MLP, OptimConfig(epochs=1), run, "fac", 0)
    assert not out.exists() and (victim / "keep").read_text() == "must survive"


def test_child_path_allows_subfolders_and_refuses_links_out(tmp_path) -> None:
    from cmkd.paths import child_path

    assert child_path(tmp_path, "bench/kd") == tmp_path / "bench" / "kd"
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path / "out")
    with pytest.raises(CmkdError, match="outside"):
        child_path(root, "escape/run")


# --- precision, layout, threads ---------------------------------------------------------------


def test_precision_auto_follows_the_hardware(monkeypatch) -> None:
    from cmkd import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert precision.resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert precision.resolve_precision("16-mixed", "cpu") == "16-mixed"
    # bf16 only for networks that gain from it: fully connected ones from 1M trainable
    # parameters on, convolutional ones at any size
    small, large = torch.nn.Linear(998, 1000), torch.nn.Linear(1000, 1000)
    assert precision.resolve_precision("auto", "cpu", small) == "32-true"  # 998,000 + 1,000
    assert precision.resolve_precision("auto", "cpu", large) == "bf16-mixed"  # 1,001,000
    large.requires_grad_(False)  # a frozen teacher's weights do not count
    assert precision.resolve_precision("auto", "cpu", large) == "32-true"
    assert precision.resolve_precision("32-true", "cpu", large) == "32-true"
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))  # 242 parameters
    assert precision.resolve_precision("auto", "cpu", conv) == "bf16-mixed"
    conv[0].requires_grad_(False)  # a frozen convolution (a teacher's) does not count either
    assert precision.resolve_precision("auto", "cpu", conv) == "32-true"


def test_auto_precision_and_layout_are_the_defaults_used_and_recorded(quiet_run, data_root) -> None:
    from cmkd.models.matmul_weight_grad import MatmulWeightGradConv2d
    from cmkd.precision import resolve_precision

    assert (quiet_run.precision, quiet_run.channels_last) == ("auto", "auto")
    assert quiet_run.matmul_weight_grad == quiet_run.fused_optimizer == "auto"

    seen = {}

    class _Look(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            conv = next(p for p in module.model.parameters() if p.ndim == 4)
            seen["channels_last"] = conv.is_contiguous(memory_format=torch.channels_last)
            seen["precision"] = trainer.precision
            seen["matmul_weight_grad"] = any(
                isinstance(m, MatmulWeightGradConv2d) for m in module.model.modules()
            )
            seen["standardized_once"] = module.inputs_standardized  # cmkd.served
            seen["fused"] = [g["fused"] for g in trainer.optimizers[0].param_groups]

    data = DataConfig(source="eurosat_paired", batch_size=64)
    model = ModelConfig(backbone="small_cnn", options={"widths": [8, 16]})
    run = quiet_run
    result = train_classifier(
        data, model, OptimConfig(epochs=1), run, "rgb", 0, callbacks=(_Look(),)
    )
    # A small CNN: channels-last, and bf16 where this CPU computes it natively
    assert result["run"]["precision"] == seen["precision"] == resolve_precision("auto", "cpu")
    assert result["run"]["channels_last"] is True and seen["channels_last"]
    # On a CPU, convolutions use the product weight gradient where it pays (no small_cnn layer does)
    assert result["run"]["matmul_weight_grad"] is True and seen["matmul_weight_grad"]
    # On a CPU the training split is standardised once per fit, not once per batch
    assert result["run"]["inputs_standardized_once"] is True and seen["standardized_once"]
    # On a CPU the optimiser steps with torch's fused kernel
    assert result["run"]["fused_optimizer"] is True and seen["fused"] == [True]
    assert 0 <= result["best"]["test"]["acc"] <= 1
    # A 1.3M-parameter MLP: bf16 where this CPU computes it natively; no convolutions, no layout
    large = ModelConfig(backbone="mlp", options={"hidden": [1024, 1024]})
    flat = train_classifier(MFEAT, large, OptimConfig(epochs=1), replace(run, name="m"), "fac", 0)
    assert flat["run"]["precision"] == resolve_precision("auto", "cpu")
    assert flat["run"]["channels_last"] is flat["run"]["matmul_weight_grad"] is False
    loop = replace(run, name="loop", fused_optimizer=False)
    unfused = train_classifier(MFEAT, large, OptimConfig(epochs=1), loop, "fac", 0)
    assert unfused["run"]["fused_optimizer"] is False and flat["run"]["fused_optimizer"] is True


def test_thread_policy(monkeypatch, quiet_run, data_root) -> None:
    from cmkd import threads

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.6, 0.0, 0.0))
    assert threads.idle_cores(cores=4) == 1  # 0.4 idle: still one thread
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert threads.idle_cores(cores=4) == 4
    assert threads.choose_threads("auto", default=2) == 2  # never above torch's default
    assert threads.choose_threads(3, default=2) == 3 and threads.choose_threads(None, 2) is None
    with pytest.raises(CmkdError, match="run.threads"):
        threads.choose_threads(0, default=2)
    before = torch.get_num_threads()
    result = train_classifier(
        MFEAT, MLP, OptimConfig(epochs=1), replace(quiet_run, threads=1), "fac", 0
    )
    assert result["run"]["threads"] == 1 and torch.get_num_threads() == before


def test_passive_openmp_wait_is_set_before_torch_loads_in_the_cli() -> None:
    import subprocess
    import sys

    code = (
        "import os, sys; import cmkd.cli; "
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stderr


def test_epoch_mean_logging_weighs_batches_by_size(quiet_run, data_root) -> None:
    module_logs = []

    class _Record(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            module_logs.append((float(outputs["loss"]), len(batch["label"])))

    train_classifier(MFEAT, MLP, OptimConfig(epochs=1), quiet_run, "fac", 0, callbacks=(_Record(),))
    expected = sum(v * n for v, n in module_logs) / sum(n for _, n in module_logs)
    lines = (_run_dir(quiet_run, "mfeat-fac-mlp") / "csv" / "metrics.csv").read_text()
    header, *rows = [line.split(",") for line in lines.splitlines()]
    logged = [float(r[header.index("train/loss")]) for r in rows if r[header.index("train/loss")]]
    assert len(module_logs) == math.ceil(1200 / 64) and logged == [pytest.approx(expected)]
