"""Faults: a run killed with SIGKILL mid-epoch resumes to the uninterrupted run's result,
checkpoints are written atomically, and truncated or tampered files are clear errors (or, for
the decode cache, rebuilt) without running any code they hold."""

from __future__ import annotations

import io
import json
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.training import AtomicCheckpointIO

EPOCHS = 3
TRAIN_ARGS = [
    "train",
    "--modality=ms",
    "--data.source=eurosat_paired",
    "--data.batch_size=8",
    "--model.backbone=small_cnn",
    '--model.options={"widths": [8, 16, 16]}',
    f"--optim.epochs={EPOCHS}",
    "--run.accelerator=cpu",
    "--run.progress_bar=false",
    "--seed=0",
]


def _args(out: Path, name: str, *extra: str) -> list[str]:
    return [*TRAIN_ARGS, f"--run.output_dir={out}", f"--run.name={name}", *extra]


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


KILL_EPOCH, KILL_STEP = 1, 5  # the victim: see killed_run in conftest.py


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, data_root, killed_run, record_epochs
) -> None:
    from cmkd.cli import main

    out = tmp_path / "runs"
    last = out / "killed" / "seed0" / "checkpoints" / "last.ckpt"
    victim = killed_run(_args(out, "killed"), KILL_EPOCH, KILL_STEP)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The uninterrupted reference, in this process while the victim runs.
        assert main(_args(out, "full")) == 0
        stderr = victim.communicate(timeout=180)[1].decode()
        assert victim.returncode == -signal.SIGKILL, f"not killed: {stderr[-2000:]}"
        run_dir = last.parents[1]
        assert not (run_dir / "results.json").exists()
        # The last checkpoint is whole: it loads, and it is the epoch before the kill.
        saved = _checkpoint_epoch(last)
        assert saved == KILL_EPOCH - 1
        # The resumed run trains only the epochs after the checkpoint (a rerun from scratch
        # would end with the same weights too, so this is checked on its own).
        epochs_run = record_epochs()
        assert main(_args(out, "killed", "--run.resume=true")) == 0
        assert epochs_run == list(range(saved + 1, EPOCHS))
    finally:
        torch.set_num_threads(threads)
        if victim.poll() is None:
            victim.kill()

    a = torch.load(out / "full" / "seed0" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    assert not list(last.parent.glob(".*.tmp"))  # a killed writer's temp file is cleared
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    ra = json.loads((out / "full" / "seed0" / "results.json").read_text())
    rb = json.loads((run_dir / "results.json").read_text())
    for part in ("best", "last"):
        assert ra[part]["test"] == rb[part]["test"]
        assert ra[part]["epoch"] == rb[part]["epoch"]


def test_checkpoint_writer_never_leaves_a_partial_file(tmp_path, monkeypatch) -> None:
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io_plugin.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as a plain open() would make it

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # stands in for a kill between the first and the last byte

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io_plugin.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    # The previous checkpoint is intact and no temp file is left behind.
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    # A temp file left by a SIGKILLed writer is cleared by the next save.
    (path.parent / ".last.ckpt.abc.tmp").write_bytes(b"junk")
    io_plugin.save_checkpoint({"epoch": 3, "w": torch.zeros(3)}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_resuming_from_a_damaged_checkpoint_is_a_clear_error(quiet_run, data_root) -> None:
    from dataclasses import replace

    from cmkd.config import DataConfig, ModelConfig, OptimConfig
    from cmkd.recipes import train_classifier

    data = DataConfig(source="mfeat", options={"views": ["fac", "pix"]}, batch_size=64)
    model = ModelConfig(backbone="mlp", options={"hidden": [16]})
    result = train_classifier(data, model, OptimConfig(epochs=1), quiet_run, "fac", 0)
    last = Path(result["checkpoint"]).with_name("last.ckpt")
    raw = last.read_bytes()
    for damaged in (raw[: len(raw) // 2], b"garbage" * 100):
        last.write_bytes(damaged)
        with pytest.raises(CmkdError, match="cannot resume: .*last.ckpt is not a readable"):
            train_classifier(
                data, model, OptimConfig(epochs=2), replace(quiet_run, resume=True), "fac", 0
            )


def test_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    from cmkd.recipes import load_model

    path = tmp_path / "model.ckpt"
    buf = io.BytesIO()
    torch.save({"hyper_parameters": {}, "state_dict": {"model.w": torch.ones(100)}}, buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CmkdError, match="not a readable cmkd checkpoint"):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "pickled", "empty"])
def test_damaged_decode_cache_is_rebuilt_without_running_its_code(
    tmp_path, monkeypatch, damage
) -> None:
    from cmkd.data.cache import cache_path, cached_arrays

    monkeypatch.setenv("CMKD_CACHE", str(tmp_path))
    key = {"test": damage}
    good = {"x": np.arange(4000, dtype=np.float32).reshape(40, 100)}
    builds = []

    def build():
        builds.append(1)
        return good

    cached_arrays("faults", key, build)
    path = cache_path("faults", key)
    raw = path.read_bytes()
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "flipped":  # a changed byte inside the array: the zip CRC catches it
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif damage == "pickled":  # an object array whose unpickling would create `marker`
        buf = io.BytesIO()
        np.savez(buf, x=np.array([_Payload(str(marker))], dtype=object))
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = cached_arrays("faults", key, build)
    assert any("rebuilding corrupt cache file" in str(w.message) for w in caught)
    assert len(builds) == 2 and not marker.exists()
    np.testing.assert_array_equal(again["x"], good["x"])
    # The rebuilt file is whole again: the next read is a hit.
    cached_arrays("faults", key, build)
    assert len(builds) == 2


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pair_list():
    from cmkd.pairing.pairs import PairList

    return PairList(
        student_ids=["a", "b", "c"],
        teacher_ids=["t1", "t2", "t1"],
        classes=["x", "y"],
        student_labels=[0, 1, 0],
        teacher_labels=[0, 1, 0],
        method="test",
        scores=[0.1, 0.2, 0.3],
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "not valid JSON"),
        ("binary", "not valid JSON"),
        ("not a list", "not a cmkd pair list"),
        ("short column", "inconsistent pair list"),
        ("crossing", "pair crosses classes"),
        ("wrong type", "pair list"),
    ],
)
def test_damaged_pair_list_is_a_clear_error(tmp_path, damage, message) -> None:
    from cmkd.pairing.pairs import PairList

    path = tmp_path / "pairs.json"
    _pair_list().save(path)
    text = path.read_text()
    doc = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "binary":
        path.write_bytes(b"\x80\x81\xfe\xff" * 10)
    elif damage == "not a list":
        path.write_text("[1, 2, 3]")
    elif damage == "short column":
        doc["teacher_ids"] = doc["teacher_ids"][:2]
        path.write_text(json.dumps(doc))
    elif damage == "crossing":
        doc["teacher_labels"][0] = 1
        doc["student_labels"][0] = 0
        path.write_text(json.dumps(doc))
    else:
        doc["student_labels"] = {"a": "b"}
        path.write_text(json.dumps(doc))
    with pytest.raises(CmkdError, match=message):
        PairList.load(path)
