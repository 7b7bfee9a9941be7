"""One optimiser builder for every trained module: the same `optim` settings give the same
optimiser and schedule in supervised training, distillation and DisCoM-KD."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from cmkd.config import OptimConfig
from cmkd.errors import CmkdError
from cmkd.methods.classifier import ClassifierModule
from cmkd.methods.discomkd import DisComKDModule
from cmkd.optim import build_optimizer, lightning_optimizers

MLP = {"backbone": "mlp", "in_chans": 5, "options": {"hidden": [8]}}


def _classifier(optim: dict) -> ClassifierModule:
    network = {**MLP, "num_classes": 3, "pretrained": False, "embedding_dim": None}
    return ClassifierModule(network, "v", ["a", "b", "c"], optim)


def _discomkd(optim: dict) -> DisComKDModule:
    return DisComKDModule({"v0": MLP, "v1": MLP}, ["a", "b", "c"], optim, {"latent_dim": 4})


MODULES = {"classifier": _classifier, "discomkd": _discomkd}


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_every_module_honours_momentum_nesterov_and_the_schedule(make) -> None:
    optim = OptimConfig(
        optimizer="sgd",
        lr=0.05,
        weight_decay=1e-4,
        momentum=0.5,
        nesterov=True,
        scheduler="cosine",
        epochs=7,
    )
    module = make(asdict(optim))
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert (group["momentum"], group["nesterov"]) == (0.5, True)
    assert (group["lr"], group["weight_decay"]) == (0.05, 1e-4)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 7
    assert {id(p) for p in group["params"]} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_settings_saved_before_momentum_existed_keep_sgds_old_momentum(make) -> None:
    legacy = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "epochs": 3}
    optimizer = make(legacy).configure_optimizers()  # no scheduler: the optimiser itself
    (group,) = optimizer.param_groups
    assert (group["momentum"], group["nesterov"]) == (0.9, False)


def test_only_trainable_parameters_and_known_optimizers() -> None:
    frozen, trained = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    frozen.requires_grad_(False)
    optimizer, scheduler = build_optimizer([frozen, trained], OptimConfig(optimizer="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW) and scheduler is None
    assert optimizer.param_groups[0]["params"] == [trained]
    assert "momentum" not in optimizer.param_groups[0]  # SGD's options go to SGD only
    with pytest.raises(CmkdError, match="unknown optim.optimizer 'lbfgs'"):
        lightning_optimizers([trained], {**asdict(OptimConfig()), "optimizer": "lbfgs"})


def _adam_steps(fused: bool | str, steps: int = 5) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A small channels-last network's weights before and after `steps` Adam steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    net.to(memory_format=torch.channels_last)
    start = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    optimizer, _ = build_optimizer(net.parameters(), OptimConfig(weight_decay=1e-2), fused)
    assert all(bool(g["fused"]) is (fused is not False) for g in optimizer.param_groups)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return start, [p.detach().clone() for p in net.parameters()]


def test_fused_optimiser_is_the_default_on_a_cpu_and_the_same_update() -> None:
    start, fused = _adam_steps("auto")
    _, loop = _adam_steps(False)
    for before, a, b in zip(start, fused, loop, strict=True):
        assert not a.equal(before)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same update, to rounding
    assert all(a.equal(b) for a, b in zip(_adam_steps(True)[1], fused, strict=True))


def test_fused_optimiser_setting_is_checked() -> None:
    with pytest.raises(CmkdError, match="run.fused_optimizer must be true, false or auto"):
        build_optimizer([torch.nn.Parameter(torch.ones(2))], OptimConfig(), "yes")


@pytest.mark.parametrize("make", MODULES.values(), ids=MODULES.keys())
def test_a_task_steps_fused_unless_told_not_to(make) -> None:
    """README, From Python: `task.fused_optimizer = False` gives torch's default loop."""
    module = make(asdict(OptimConfig()))
    assert [g["fused"] for g in module.configure_optimizers().param_groups] == [True]
    module.fused_optimizer = False
    assert not any(g["fused"] for g in module.configure_optimizers().param_groups)
