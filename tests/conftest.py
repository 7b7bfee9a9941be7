"""Shared fixtures: the real data root, a private decode cache, quiet run settings."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cmkd.config import RunConfig
from cmkd.data.root import resolve_data_root


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point CMKD_CACHE at a session temp dir so tests never read or write ~/.cache."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMKD_CACHE", str(tmp_path_factory.mktemp("cmkd-cache")))
        yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = resolve_data_root()
    if not (root / "eurosat").is_dir():
        pytest.skip(f"real data not found under {root} (set $CMKD_DATA or add ../shared/data)")
    return root


@pytest.fixture
def quiet_run(tmp_path: Path) -> RunConfig:
    """Run settings for tests: CPU, no progress bar, outputs in tmp_path."""
    return RunConfig(output_dir=str(tmp_path / "runs"), accelerator="cpu", progress_bar=False)


# A `cmkd` command with a callback that SIGKILLs its own process after step {step} of epoch
# {epoch}. Nothing can catch SIGKILL, so this is as abrupt as a kill from outside, but it lands
# mid-epoch whatever the machine's speed (a watcher that kills "a moment after" a checkpoint
# appears misses the epoch on a loaded machine).
_VICTIM = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
from cmkd import training
from cmkd.cli import main

class Kill(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == {epoch} and batch_idx == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

build = training.build_trainer
training.build_trainer = lambda run_dir, run, plan, callbacks=(): build(
    run_dir, run, plan, [*callbacks, Kill()]
)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def killed_run() -> Callable[..., subprocess.Popen]:
    """Start `cmkd ARGS` in a child process that kills itself (SIGKILL) after step `step` of
    epoch `epoch`; one thread, so that a resume can be compared bit for bit."""

    def start(args: list[str], epoch: int, step: int) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        script = _VICTIM.format(epoch=epoch, step=step)
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    return start


@pytest.fixture
def record_epochs(monkeypatch) -> Callable[[], list[int]]:
    """Call it to have every Trainer built from then on (cmkd.training.build_trainer) append
    each epoch it starts to the list it returns: a resumed run must start after its checkpoint."""

    def start() -> list[int]:
        from lightning.pytorch.callbacks import Callback

        from cmkd import training

        epochs: list[int] = []

        class _Epochs(Callback):
            def on_train_epoch_start(self, trainer, module) -> None:
                epochs.append(trainer.current_epoch)

        build = training.build_trainer
        monkeypatch.setattr(
            training,
            "build_trainer",
            lambda run_dir, run, plan, callbacks=(): build(
                run_dir, run, plan, [*callbacks, _Epochs()]
            ),
        )
        return epochs

    return start
