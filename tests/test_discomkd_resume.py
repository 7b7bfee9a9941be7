"""DisCoM-KD on the run path of every recipe: checked before its run folder exists, last.ckpt
with the full training state, and a run killed with SIGKILL mid-epoch that resumes to the
uninterrupted run's weights, selection and exported students, bit for bit."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.data.multimodal import ModalitySpec
from cmkd.errors import CmkdError
from cmkd.methods.discomkd import BEST_KEY, DisComConfig, DisComKDModule, train_discomkd

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "discomkd" / "mfeat2.yaml"
EPOCHS = 4
KILL_EPOCH, KILL_STEP = 2, 5  # 11 steps per epoch (1,400 digits, batches of 128); see killed_run


def _config(tmp_path: Path) -> Path:
    """mfeat2.yaml made small and random enough to test a resume: narrower MLPs with dropout
    (the global generators must continue), a strong reversal on the DANN schedule (the step
    count must continue) and a learning rate at which the students' best epochs come before
    the kill (the selection must continue)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for modality in cfg["modalities"]:
        modality["model"]["options"] = {"hidden": [64, 32], "dropout": 0.3}
    cfg["optim"] = {"lr": 0.1, "epochs": EPOCHS}
    cfg["discomkd"].update(grl_schedule="dann", grl_factor=10.0)
    path = tmp_path / "mfeat2-resume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _args(config: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        "discomkd",
        f"--config={config}",
        "--run.accelerator=cpu",
        "--run.progress_bar=false",
        "--run.checkpoint_every=1",
        f"--run.output_dir={out}",
        f"--run.name={name}",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, data_root, killed_run, record_epochs
) -> None:
    from cmkd.cli import main

    config, out = _config(tmp_path), tmp_path / "runs"
    killed, full = out / "killed" / "seed0", out / "full" / "seed0"
    last = killed / "checkpoints" / "last.ckpt"
    victim = killed_run(_args(config, out, "killed"), KILL_EPOCH, KILL_STEP)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(config, out, "full")) == 0  # the reference, while the victim runs
        stderr = victim.communicate(timeout=300)[1].decode()
        assert victim.returncode == -signal.SIGKILL, f"not killed: {stderr[-2000:]}"
        assert not (killed / "results.json").exists()
        saved = torch.load(last, map_location="cpu", weights_only=True)
        # The resume point: the epoch before the kill, with the optimiser's state and every
        # modality's selection so far.
        assert saved["epoch"] == KILL_EPOCH - 1 and saved["optimizer_states"]
        assert set(saved[BEST_KEY]) == {"fou", "zer"}
        reference = json.loads((full / "results.json").read_text())["modalities"]
        # The settings must make the test need the saved selection: a student whose best epoch
        # lies before the resume point (lost with it, its export would differ).
        assert any(r["best"]["epoch"] < KILL_EPOCH for r in reference.values()), reference

        epochs_run = record_epochs()
        assert main(_args(config, out, "killed", "--run.resume=true")) == 0
        assert epochs_run == list(range(KILL_EPOCH, EPOCHS))  # only the epochs after it
    finally:
        torch.set_num_threads(threads)
        if victim.poll() is None:
            victim.kill()

    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    assert not list(last.parent.glob(".*.tmp"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert rb["modalities"].keys() == ra["modalities"].keys()
    for name, r in ra["modalities"].items():
        for part in ("best", "last"):
            assert rb["modalities"][name][part] == r[part], (name, part)
        for suffix in (".safetensors", ".json"):
            exported = Path(r["export"]).with_suffix(suffix).read_bytes()
            assert Path(rb["modalities"][name]["export"]).with_suffix(suffix).read_bytes() == (
                exported
            ), (name, suffix)


# --- checked before the run folder exists ---------------------------------------------------

MLP = ModelConfig(backbone="mlp", options={"hidden": [16]})
MFEAT = DataConfig(source="mfeat", val_fraction=0.1, test_fraction=0.2)


def _specs(**changes) -> list[ModalitySpec]:
    return [ModalitySpec(name, replace(MFEAT, **changes), MLP) for name in ("fou", "zer")]


@pytest.mark.parametrize(
    ("specs", "cfg", "run_changes", "message"),
    [
        (
            [ModalitySpec("fou", MFEAT, ModelConfig(backbone="small_cnn")), *_specs()[1:]],
            DisComConfig(latent_dim=8),
            {},
            "modality 'fou': backbone 'small_cnn' cannot take its inputs of shape",
        ),
        (_specs(val_fraction=0.0), DisComConfig(), {}, "modality 'fou' has no val rows"),
        (_specs(), DisComConfig(batch_size=0), {}, "discomkd.batch_size must be >= 1"),
        (_specs(), DisComConfig(weights={"cl": float("nan")}), {}, "weights.cl must be a finite"),
        (_specs(), DisComConfig(), {"devices": 2}, "DisCoM-KD trains on one device"),
        (_specs(), DisComConfig(), {"resume": True}, "nothing to resume"),
        (_specs(), DisComConfig(), {"val_every": 0}, "run.val_every must be an integer >= 1"),
    ],
    ids=["backbone", "no-val", "batch", "weight", "devices", "resume", "val-every"],
)
def test_bad_input_is_one_error_and_leaves_no_run_folder(
    specs, cfg, run_changes, message, quiet_run, data_root
) -> None:
    run = replace(quiet_run, **run_changes)
    with pytest.raises(CmkdError, match=message):
        train_discomkd(specs, cfg, OptimConfig(epochs=1), run, seed=0)
    assert not Path(run.output_dir).exists()


# --- initialisation by (seed, role) ---------------------------------------------------------


def _students(names: list[str], seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    networks = {n: {"backbone": "mlp", "in_chans": 6, "options": {"hidden": [8]}} for n in names}
    module = DisComKDModule(networks, ["a", "b"], {}, {"latent_dim": 4}, seed=seed)
    return {n: module.students[n].state_dict() for n in names}


def test_a_modalitys_student_starts_the_same_beside_any_other_modalities() -> None:
    alone_first = _students(["x", "y"])
    reordered = _students(["z", "w", "y", "x"])
    torch.manual_seed(123)  # the global generator does not matter either
    again = _students(["y", "x"])
    for name in ("x", "y"):
        for key, value in alone_first[name].items():
            assert torch.equal(reordered[name][key], value), (name, key)
            assert torch.equal(again[name][key], value), (name, key)
    # Different modalities and seeds start differently (the roles do separate the streams).
    weight = "classifier.weight"
    assert weight in alone_first["x"]
    assert not torch.equal(alone_first["x"][weight], alone_first["y"][weight])
    assert not torch.equal(_students(["x"], seed=1)["x"][weight], alone_first["x"][weight])


# --- the rest of the training state -----------------------------------------------------------


def test_a_non_finite_loss_stops_the_joint_training() -> None:
    networks = {n: {"backbone": "mlp", "in_chans": 6, "options": {"hidden": [8]}} for n in "xy"}
    module = DisComKDModule(networks, ["a", "b"], {"lr": 0.5}, {"latent_dim": 4, "augment": False})
    batch = {n: {n: torch.randn(4, 6), "label": torch.tensor([0, 1, 0, 1])} for n in "xy"}
    module.weights["orth"] = float("nan")
    with pytest.raises(CmkdError, match=r"training loss is nan at epoch 0, step 3.*optim.lr 0.5"):
        module.training_step(batch, 3)


def test_the_random_generators_continue_from_a_checkpoint(tmp_path) -> None:
    """What last.ckpt holds of torch's, numpy's and Python's generators puts them back where
    they were, through a weights-only load."""
    import random

    import numpy as np

    from cmkd.checkpointing import RandomStates

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"random": RandomStates().state_dict()}, tmp_path / "state.pt")

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # a fresh process's generators
    state = torch.load(tmp_path / "state.pt", weights_only=True)["random"]
    RandomStates().load_state_dict(state)
    assert draws() == expected
