"""Training inputs standardised once per fit (cmkd.served): the same batches, the same run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import cmkd
from cmkd import served
from cmkd.config import RunConfig
from cmkd.data.datamodule import StandardizedSplit

SMALL_CNN = cmkd.ModelConfig(backbone="small_cnn", options={"widths": [8, 16]})


def _ms(batch_size: int = 16) -> cmkd.DataModule:
    """A small real subset: 4 EuroSAT MS patches per class for training (13 x 64 x 64)."""
    return cmkd.DataModule.from_source(
        "eurosat_ms", "ms", batch_size=batch_size, train_per_class=4, seed=0
    )


def _ready(task: cmkd.ClassifierTask) -> cmkd.ClassifierTask:
    cmkd.use_fast_paths(task, RunConfig(accelerator="cpu"))  # channels-last, as a fit does
    return task


def test_the_served_split_is_the_networks_own_standardisation(data_root) -> None:
    dm = _ms()
    task = _ready(cmkd.ClassifierTask.for_data(dm, SMALL_CNN))
    raw = dm.sets["train"]
    split = StandardizedSplit(raw, task.model.standardize)
    rows = [7, 0, 31, 12, 5]
    got, want = split.__getitems__(rows), raw.batch(rows)
    assert torch.equal(got["ms"], task.model.standardize(want["ms"]))  # bit for bit
    assert got["ms"].is_contiguous(memory_format=torch.channels_last)
    assert not got["ms"].requires_grad
    assert torch.equal(got["label"], want["label"]) and torch.equal(got["index"], want["index"])
    # The forward pass on served inputs is the network's own on raw ones
    task.model.eval()
    with torch.no_grad():
        a, b = task.model.network(got["ms"]).logits, task.model(want["ms"]).logits
    assert torch.equal(a, b)


def test_the_loader_serves_inside_the_block_and_raw_outside(data_root) -> None:
    dm = _ms()
    task = _ready(cmkd.ClassifierTask.for_data(dm, SMALL_CNN))
    raw_batches = list(dm.train_dataloader())
    with cmkd.standardized_once(task, dm, "cpu") as serving:
        assert serving and task.inputs_standardized and dm.served is not None
        served_batches = list(dm.train_dataloader())
    assert dm.served is None and not task.inputs_standardized
    assert [len(b["label"]) for b in served_batches] == [len(b["label"]) for b in raw_batches]
    for s, r in zip(served_batches, raw_batches, strict=True):
        # the same rows in the same seeded order, the inputs standardised as the network would
        assert torch.equal(s["index"], r["index"]) and torch.equal(s["label"], r["label"])
        assert torch.equal(s["ms"], task.model.standardize(r["ms"]))
    assert all(isinstance(v, torch.Tensor) for v in list(dm.train_dataloader())[0].values())


def test_leaving_after_an_error_restores_the_data_and_the_task(data_root) -> None:
    dm = _ms()
    task = _ready(cmkd.ClassifierTask.for_data(dm, SMALL_CNN))
    with pytest.raises(RuntimeError, match="stop"):
        with cmkd.standardized_once(task, dm, "cpu"):
            raise RuntimeError("stop")
    assert dm.served is None and task.inputs_standardized is False
    assert dm.training_split() is dm.sets["train"]


def test_served_only_for_a_cmkd_task_on_the_cpu_under_the_size_cap(data_root, monkeypatch) -> None:
    dm = _ms()
    task = _ready(cmkd.ClassifierTask.for_data(dm, SMALL_CNN))
    assert served.serves(task, dm, "cpu")
    assert not served.serves(task, dm, "gpu")  # a GPU standardises a batch in microseconds
    assert not served.serves(torch.nn.Linear(2, 2), dm, "cpu")  # not a cmkd task
    assert not served.serves(task, object(), "cpu")  # not a cmkd DataModule
    copy_bytes = dm.sets["train"].x.numel() * 4  # float32 beside the raw split
    monkeypatch.setattr(served, "SERVED_MAX_BYTES", copy_bytes - 1)
    assert not served.serves(task, dm, "cpu")
    with cmkd.standardized_once(task, dm, "cpu") as serving:
        assert not serving and dm.served is None and not task.inputs_standardized
    # run.standardize_once: true serves whatever the device and size (the cap still set
    # below this copy here), false never
    assert served.serves(task, dm, "gpu", True) and served.serves(task, dm, "cpu", True)
    monkeypatch.undo()
    assert not served.serves(task, dm, "cpu", False)
    assert not served.serves(torch.nn.Linear(2, 2), dm, "cpu", True)


def test_a_run_refuses_an_unknown_standardize_once(data_root, quiet_run) -> None:
    from dataclasses import replace

    from cmkd.training import check_run

    data = cmkd.DataConfig(source="eurosat_ms")
    with pytest.raises(cmkd.CmkdError, match="run.standardize_once must be true, false or auto"):
        check_run(replace(quiet_run, standardize_once="yes"), cmkd.OptimConfig(), data)


def _fit(
    task: L.LightningModule, dm: cmkd.DataModule, serve: bool, precision: str = "32-true"
) -> dict[str, torch.Tensor]:
    """Two epochs through a plain Trainer, standardised once or per batch."""
    _ready(task)
    L.seed_everything(0, verbose=False)  # the augmentation's draws
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    device = "cpu" if serve else "gpu"
    with cmkd.standardized_once(task, dm, device, precision=precision) as serving:
        assert serving is serve
        if serve:  # under bf16-mixed a small CNN's inputs are served in bf16
            want = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
            assert dm.training_split().x.dtype == want
        trainer.fit(task, datamodule=dm)
    return {k: v.clone() for k, v in task.state_dict().items()}


@pytest.mark.parametrize(
    ("method", "precision"),
    [("no KD, augmented", "32-true"), ("KD", "32-true"), ("no KD, augmented", "bf16-mixed"),
     ("KD", "bf16-mixed")],
)  # fmt: skip
def test_a_served_fit_is_bit_identical_to_a_per_batch_one(
    data_root, method: str, precision: str
) -> None:
    # EuroSAT paired: the student on MS, a KD teacher on the RGB twins
    ms = cmkd.DataModule.from_source(
        "eurosat_paired", "ms", batch_size=16, train_per_class=4, seed=0
    )
    teacher = cmkd.ClassifierTask.for_data(ms.with_modality("rgb"), SMALL_CNN)

    def build() -> L.LightningModule:
        if method == "KD":
            return cmkd.DistillTask.for_data(
                ms, teacher, ms.with_modality("rgb"), terms=["kd"], model=SMALL_CNN
            )
        return cmkd.ClassifierTask.for_data(ms, SMALL_CNN, augment=True)

    start = build().state_dict()["model.network.classifier.weight"]
    per_batch, once = _fit(build(), ms, False, precision), _fit(build(), ms, True, precision)
    assert per_batch.keys() == once.keys()
    for key, value in per_batch.items():
        assert torch.equal(once[key], value), key
    # training moved the weights: the comparison is not of two untouched networks
    assert not torch.equal(once["model.network.classifier.weight"], start)


class _SkipFromInput(torch.nn.Module):
    """A convolution first, but the raw input is added to its output too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


@pytest.mark.parametrize(
    ("network", "casts"),
    [
        (torch.nn.Conv2d(3, 4, 3), True),
        (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)), True),  # an MLP
        (torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 3)), False),
        (_SkipFromInput(), False),
    ],
    ids=["conv", "flatten-linear", "batchnorm-first", "skip-from-input"],
)
def test_inputs_are_served_in_bf16_only_where_autocast_would_round_them_first(
    network: torch.nn.Module, casts: bool
) -> None:
    network.train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    assert served.first_layer_casts_input(network, x) is casts
    # the probe leaves the network as it was: mode, statistics, no hooks
    assert network.training and all(not m._forward_pre_hooks for m in network.modules())
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
