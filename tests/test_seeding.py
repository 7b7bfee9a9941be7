"""Same seed, same start: the trained network's initial weights and its first batches do not
depend on the recipe, the loss, the pairing or the teacher built before it (paired comparisons
over seeds then measure the method, not initialisation noise)."""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning.pytorch.callbacks import Callback

from cmkd.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    PairingConfig,
    TermConfig,
)
from cmkd.recipes import distill_student, train_classifier
from cmkd.seeding import seed_for, seeded

EUROSAT = DataConfig(source="eurosat_paired", batch_size=32)
TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16]})
KD = TermConfig("kd", 0.5, {"temperature": 4.0})


class FirstSteps(Callback):
    """The network's weights when training starts, the first two batches' sample rows and the
    first dropout/augmentation draw."""

    def on_train_start(self, trainer, module) -> None:
        self.weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.rows: list[torch.Tensor] = []
        self.draw = torch.rand(4)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if len(self.rows) < 2:
            self.rows.append(batch["index"].clone())


def _start(run, fn, *args) -> FirstSteps:
    probe = FirstSteps()
    fn(*args, callbacks=(probe,))
    return probe


def test_student_starts_the_same_in_every_recipe_and_method(quiet_run, data_root) -> None:
    optim = OptimConfig(epochs=1)
    teacher = train_classifier(
        EUROSAT, ModelConfig(backbone="small_cnn"), optim, replace(quiet_run, name="t"), "ms", 3
    )["checkpoint"]
    runs = {
        "train": (train_classifier, EUROSAT, TINY, optim, replace(quiet_run, name="a"), "rgb", 3),
    }
    methods = {
        "kd": DistillConfig(teacher=teacher, terms=[KD]),
        # FitNet owns a trainable regressor, SKA fixed random projections: built on their own
        # streams, they must not move the student's initialisation.
        "fitnet+ska": DistillConfig(
            teacher=teacher,
            terms=[
                TermConfig("fitnet", 1.0, {}),
                TermConfig("ska", 0.003, {"dim": 32, "heads": 4}),
            ],
        ),
        "kd class_random": DistillConfig(
            teacher=teacher, terms=[KD], pairing=PairingConfig("class_random")
        ),
    }
    for name, distill in methods.items():
        run = replace(quiet_run, name=name.replace(" ", "-"))
        runs[name] = (distill_student, EUROSAT, TINY, optim, run, distill, "rgb", 3)
    starts = {name: _start(quiet_run, args[0], *args[1:]) for name, args in runs.items()}
    ref = starts.pop("train")
    for name, probe in starts.items():
        assert probe.weights.keys() == ref.weights.keys(), name
        for key, value in ref.weights.items():
            assert torch.equal(probe.weights[key], value), f"{name}: {key} differs"
        assert all(torch.equal(a, b) for a, b in zip(probe.rows, ref.rows, strict=True)), name
        assert torch.equal(probe.draw, ref.draw), name
    # A different seed starts elsewhere (the check above can fail).
    other = _start(
        quiet_run,
        train_classifier,
        EUROSAT,
        TINY,
        optim,
        replace(quiet_run, name="b"),
        "rgb",
        4,
    )
    assert not all(torch.equal(other.weights[k], v) for k, v in ref.weights.items())


def test_seeded_block_leaves_the_global_stream_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with seeded(7, "network"):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded(7, "network"):
        assert torch.equal(torch.rand(3), inside)
    assert seed_for(7, "network") != seed_for(7, "term:kd") != seed_for(8, "network")
