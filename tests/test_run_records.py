"""What a run leaves behind can be trusted: its config.yaml reruns it exactly, its files honour
the umask, a checkpoint rebuilds its network without the file its initial weights came from,
and a teacher is recorded by an absolute path."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

from cmkd.checkpoints import load_model
from cmkd.cli import main

QUIET = ["--run.progress_bar", "false", "--run.accelerator", "cpu"]
MFEAT = ["--data.source", "mfeat", "--model.backbone", "mlp", "--optim.epochs", "2", *QUIET]


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _same_weights(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def runs(data_root: Path, tmp_path_factory) -> dict[str, Path]:
    """A teacher (train) and a KD student (distill) on real mfeat views, each run through
    the CLI, the distill one from another folder with a relative teacher path."""
    out = tmp_path_factory.mktemp("records")
    base = ["--run.output_dir", str(out), *MFEAT]
    assert main(["train", "--modality", "fou", "--run.name", "teacher", *base]) == 0
    cwd = os.getcwd()
    os.chdir(out)
    try:
        distill = ["distill", "--modality", "fac", "--distill.teacher", "teacher/seed0"]
        assert main([*distill, "--run.name", "student", *base]) == 0
    finally:
        os.chdir(cwd)
    return {"train": out / "teacher" / "seed0", "distill": out / "student" / "seed0"}


@pytest.mark.parametrize("command", ["train", "distill"])
def test_saved_config_reruns_the_run_exactly(runs, command, tmp_path, monkeypatch) -> None:
    original = runs[command]
    saved = yaml.safe_load((original / "config.yaml").read_text())
    assert saved["command"] == command  # the record of the command stays in the file
    monkeypatch.chdir(tmp_path)  # from anywhere: the teacher path is absolute
    assert main([command, "--config", str(original / "config.yaml"), "--run.name", "again"]) == 0
    again = Path(saved["run"]["output_dir"]) / "again" / "seed0"
    a, b = _results(original), _results(again)
    for which in ("best", "last"):
        assert a[which]["test"] == b[which]["test"] and a[which]["epoch"] == b[which]["epoch"]
    last = Path("checkpoints") / "last.ckpt"
    assert _same_weights(original / last, again / last)
    shutil.rmtree(again.parent)


def test_teacher_is_recorded_by_its_absolute_path(runs) -> None:
    student = runs["distill"]
    teacher = str(runs["train"].resolve())
    config = yaml.safe_load((student / "config.yaml").read_text())
    hparams = torch.load(
        student / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )["hyper_parameters"]
    # config.yaml keeps what was given (a run folder here), made absolute; results.json and the
    # checkpoint name the very file the weights came from (its SHA-256 sits beside it).
    assert config["distill"]["teacher"] == teacher
    best = str(Path(teacher) / "checkpoints" / "best.ckpt")
    recorded = [_results(student)["teacher_checkpoint"], hparams["teacher_checkpoint"]]
    assert recorded == [best] * 2, recorded
    assert len(hparams["teacher_sha256"]) == 64


def test_every_file_honours_the_umask(data_root, tmp_path) -> None:
    """umask 002 gives group-writable files (664) and folders (775): a file written 600 (a
    bare mkstemp) or 644 would show up here."""
    out = tmp_path / "runs"
    old = os.umask(0o002)
    try:
        base = ["--run.output_dir", str(out), *MFEAT, "--optim.epochs", "1"]
        assert main(["train", "--modality", "fou", "--run.name", "t", *base]) == 0
        distill = ["distill", "--modality", "fac", "--distill.teacher", str(out / "t" / "seed0")]
        # class_random pairing writes pairs.json; quality weights write quality.npz.
        extra = ["--distill.pairing.strategy", "class_random", "--distill.quality.source"]
        assert main([*distill, *extra, "confidence", "--run.name", "s", *base]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "results.json", "best.ckpt", "last.ckpt", "metrics.csv"} <= names
    assert {"pairs.json", "quality.npz"} <= names
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o775 if (out / p).is_dir() else 0o664)}
    assert wrong == {}


def test_checkpoint_loads_after_its_initial_weights_move(data_root, tmp_path, capsys) -> None:
    """A network started from local weights (model.options.checkpoint_path) keeps loading
    once that file is gone: the checkpoint stores what rebuilds it, config.yaml the origin."""
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0, global_pool="").state_dict(), weights)
    options = json.dumps({"checkpoint_path": str(weights)})
    args = ["train", "--modality", "rgb", "--data.source", "eurosat_rgb", "--optim.epochs", "1"]
    args += ["--data.options", "{per_class_limit: 5}", "--model.backbone", "resnet18"]
    args += ["--model.options", options, "--run.output_dir", str(tmp_path / "runs"), *QUIET]
    assert main(args) == 0
    run = tmp_path / "runs" / "eurosat_rgb-rgb-resnet18" / "seed0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["options"] == {"checkpoint_path": str(weights)}  # the record
    weights.rename(tmp_path / "moved.pth")
    model, hparams = load_model(run)
    assert "checkpoint_path" not in hparams["network"]["options"]
    assert hparams["network"]["pretrained"] is False
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert "val/acc" in capsys.readouterr().out
