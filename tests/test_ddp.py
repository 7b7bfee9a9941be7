"""Two DDP processes on the CPU (gloo): SemBridge-style distillation from a pair-list file with
DynM re-matching at epochs 1 and 2. Every rank must hold the same pair table when training
starts and after every re-match (rank 0's table is broadcast, even when rank 1's own matches
differ, as they may across devices), and each rank must train on its own shard of the student
samples, so this is a real data-parallel run and not two copies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from cmkd.config import DataConfig, ModelConfig, OptimConfig
from cmkd.recipes import match_pairs, train_classifier

TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})
MS = DataConfig(source="eurosat_ms", batch_size=64)
RGB = {"source": "eurosat_rgb", "options": {"subset": "unpaired", "per_class_limit": 12}}

# Every rank runs this file: Lightning's DDP launcher re-runs the command with the rank in the
# environment, so the run-folder set-up and data preparation must be rank-safe.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    from lightning.pytorch.callbacks import Callback

    from cmkd.config import (
        DataConfig, DistillConfig, ModelConfig, OptimConfig, PairingConfig, RunConfig,
        TermConfig,
    )
    from cmkd.recipes import distill_student

    args = json.loads(sys.argv[1])

    if os.environ.get("LOCAL_RANK", "0") == "1":
        # Rank 1 sees noisy student logits (a stand-in for float reductions that differ across
        # devices): its own re-match differs, and only rank 0's broadcast table may survive.
        from cmkd.pairing.rematch import DynamicMatching

        plain = DynamicMatching._logits

        def noisy(self, model, x, device):
            z = plain(self, model, x, device)
            return z + 5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))

        DynamicMatching._logits = noisy

    class Rows(Callback):
        # the student rows this rank trained on, per epoch
        def __init__(self):
            self.rows = {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            rows = batch["index"].tolist()
            self.rows.setdefault(str(trainer.current_epoch), []).extend(rows)

        def on_train_end(self, trainer, module):
            out = Path(args["rows_dir"]) / f"rank{trainer.global_rank}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"world_size": trainer.world_size, "rows": self.rows}))

    distill = DistillConfig(
        teacher=args["teacher"],
        terms=[TermConfig("kd", 0.5, {"temperature": 4.0})],
        pairing=PairingConfig("matched", pairs=args["pairs"], dynamic=True, schedule=[1, 2]),
    )
    run = RunConfig(
        output_dir=args["output_dir"], name="ddp", accelerator="cpu", devices=2,
        strategy="ddp", progress_bar=False,
    )
    distill_student(
        DataConfig(**args["data"]), ModelConfig(**args["model"]), OptimConfig(epochs=3),
        run, distill, "rgb", 0, callbacks=(Rows(),),
    )
    """
)


def test_every_ddp_rank_holds_the_same_pairs(quiet_run, data_root, tmp_path) -> None:
    teacher = train_classifier(
        MS, TINY, OptimConfig(epochs=1), replace(quiet_run, name="t"), "ms", 0
    )["checkpoint"]
    pair_file = tmp_path / "pairs.json"
    match_pairs(teacher, DataConfig(**RGB), "rgb", 0, pair_file, method="class_random")
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    args = {
        "teacher": teacher,
        "pairs": str(pair_file),
        "data": RGB,
        "model": {"backbone": TINY.backbone, "options": TINY.options},
        "output_dir": str(tmp_path / "runs"),
        "rows_dir": str(tmp_path / "rows"),
    }
    # One thread per rank: two ranks on two cores. A session of its own, so that a hung run
    # (rank 1 is rank 0's child) is ended whole.
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the 2-process DDP run did not finish in 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp" / "seed0"
    audits = [json.loads((run_dir / "pairs-digests" / f"rank{r}.json").read_text()) for r in (0, 1)]
    events = [[(t["event"], t["epoch"]) for t in a["tables"]] for a in audits]
    assert events[0] == events[1] == [("start", 0), ("rematch", 1), ("rematch", 2)]
    assert all(a["world_size"] == 2 for a in audits)
    for t0, t1 in zip(audits[0]["tables"], audits[1]["tables"], strict=True):
        assert t0["sha256"] == t1["sha256"], (t0, t1)
    # rank 1's own (noisy) matches differed from rank 0's: the broadcast made them agree
    local = [[t["local_sha256"] for t in a["tables"][1:]] for a in audits]
    assert local[0] != local[1] and local[0] == [t["sha256"] for t in audits[0]["tables"][1:]]
    # the pair list was loaded as is, and re-matching did change it (so equal digests mean
    # something): at least one re-match moved pairs, and the table after it is a new one
    changed = [t["changed"] for t in audits[0]["tables"][1:]]
    assert changed[0] > 0, changed
    digests = [t["sha256"] for t in audits[0]["tables"]]
    assert digests[1] != digests[0]
    assert (run_dir / "results.json").is_file() and (run_dir / "pairs.json").is_file()
    # each rank trained on its own half of the 80 student rows, every epoch
    rows = [json.loads((tmp_path / "rows" / f"rank{r}.json").read_text())["rows"] for r in (0, 1)]
    for epoch in ("0", "1", "2"):
        r0, r1 = set(rows[0][epoch]), set(rows[1][epoch])
        assert len(rows[0][epoch]) == len(rows[1][epoch]) == 40
        assert not r0 & r1 and r0 | r1 == set(range(80))
    # ... in an order that changes from epoch to epoch (the seeded shuffle's set_epoch)
    assert rows[0]["0"] != rows[0]["1"]
    print("digests", digests, "changed", changed)


def test_cli_takes_the_ddp_settings(capsys) -> None:
    from cmkd.cli import main

    argv = ["distill", "--modality", "rgb", "--run.devices", "4", "--run.strategy", "ddp"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--run.num_nodes", "2", "--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "devices: 4" in out and "strategy: ddp" in out and "num_nodes: 2" in out
