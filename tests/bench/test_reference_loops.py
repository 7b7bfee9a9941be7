"""The reference loop of `cmkd bench perf`'s loops section does what the reference codes do,
on the real EuroSAT data: the SemBridge authors' backward runs through the teacher (their
teacher is never frozen and its outputs are not detached) without changing the student's
gradients or training the teacher; mdistiller's teacher runs under no_grad; the student-alone
floor never calls the teacher."""

from __future__ import annotations

import torch

from cmkd.bench.perf import reference_loops as loops

SEMBRIDGE, PLAIN = "SemBridge (KD + SKA)", "plain KD"


def _one_step(method: str, teacher_backward: bool, alone: bool = False):
    """One epoch of the reference loop on a fresh task with one batch of 64 samples; returns
    the task, the teacher's calls, its weights before, and the student's first-layer
    gradient."""
    task, data, table = loops._setup("small_cnn", 0, 64, method, "reference")
    data.sets["train"] = torch.utils.data.Subset(data.sets["train"], range(64))
    calls = []
    task.teacher.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    before = [p.detach().clone() for p in task.teacher.parameters()]
    torch.manual_seed(0)
    loops.reference_epochs(task, data, table, 1, teacher_backward, alone=alone)
    first = next(p for p in task.model.parameters() if p.ndim == 4)
    return task, calls, before, first.grad.clone()


def test_the_authors_loop_backpropagates_through_the_teacher_without_training_it() -> None:
    task, calls, before, grad = _one_step(SEMBRIDGE, teacher_backward=True)
    assert calls == [True]  # forward with autograd on, as train.py calls it
    teacher = list(task.teacher.parameters())
    assert all(p.grad is not None for p in teacher)  # the backward reached every layer
    assert all(torch.equal(p, b) for p, b in zip(teacher, before, strict=True))  # not stepped
    # The weight-0 link adds the backward pass only: the student's gradient is the one a
    # frozen teacher gives.
    _, frozen_calls, _, frozen_grad = _one_step(SEMBRIDGE, teacher_backward=False)
    assert frozen_calls == [False]
    torch.testing.assert_close(grad, frozen_grad)


def test_mdistillers_loop_runs_the_teacher_under_no_grad_and_the_floor_skips_it() -> None:
    assert not loops.METHODS[PLAIN].teacher_backward and loops.METHODS[SEMBRIDGE].teacher_backward
    task, calls, _, _ = _one_step(PLAIN, teacher_backward=False)
    assert calls == [False] and all(p.grad is None for p in task.teacher.parameters())
    _, alone_calls, _, grad = _one_step(PLAIN, teacher_backward=False, alone=True)
    assert alone_calls == [] and grad.abs().sum() > 0


def test_cmkd_runs_sembridge_as_shipped_and_the_reference_on_every_step() -> None:
    from cmkd.bench.perf.overhead import SHIPPED_SKA

    spec = loops.METHODS[SEMBRIDGE]
    ska = {t["name"]: t["params"] for t in spec.cmkd_terms}["ska"]
    reference_ska = {t["name"]: t["params"] for t in spec.reference_terms}["ska"]
    assert ska == SHIPPED_SKA and reference_ska.get("every", 1) == 1
    assert {k: v for k, v in ska.items() if k != "every"} == reference_ska


def test_the_floor_at_cmkds_defaults_steps_the_readied_student_in_its_precision() -> None:
    """The second floor runs the same student step on the network as cmkd's fit readies it:
    channels-last weights, matmul weight gradients, and the forward in bf16 autocast."""
    from cmkd.models.matmul_weight_grad import MatmulWeightGradConv2d

    task, data, table = loops._setup("small_cnn", 0, 64, PLAIN, "reference")
    data.sets["train"] = torch.utils.data.Subset(data.sets["train"], range(64))
    variant = " ".join(["bf16-mixed", loops.CHANNELS_LAST, loops.MATMUL_WEIGHT_GRAD])
    assert loops.ready(task, variant) == "bf16-mixed"
    convs = [m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(isinstance(m, MatmulWeightGradConv2d) for m in convs)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    dtypes = []
    task.model.network.classifier.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = [p.detach().clone() for p in task.model.parameters()]
    loops.reference_epochs(task, data, table, 1, False, alone=True, bf16=True)
    assert dtypes == [torch.bfloat16]
    assert any(not torch.equal(p, b) for p, b in zip(task.model.parameters(), before, strict=True))


def test_cmkds_epochs_standardise_the_training_split_once_as_its_fit_does() -> None:
    """cmkd's side runs as `cmkd distill` does on a CPU: the student's inputs standardised
    once for the run (cmkd.served), not once per batch; the data and task are left as found."""
    task, data, _ = loops._setup("small_cnn", 0, 64, PLAIN, "cmkd")
    calls = []
    task.model.normalize.register_forward_hook(lambda *_: calls.append(1))
    variant = loops.default_variant(task)
    assert loops.FUSED in variant.split(" ")  # run.fused_optimizer: auto, on a CPU
    times, _ = loops.cmkd_epochs(task, data, 2, variant)
    assert len(times) == 2 and len(data.train_dataloader()) == 4  # 221 patches, batch 64
    assert calls == [1]  # once for the run, not once for each of the 8 batches
    assert [g["fused"] for g in task.trainer.optimizers[0].param_groups] == [True]
    assert data.served is None and not task.inputs_standardized


def test_only_the_floor_at_cmkds_defaults_is_served_standardised_inputs_and_fused_adam(
    monkeypatch,
) -> None:
    """The reference loops and the fp32 floor standardise every batch and step Adam's loop as
    the reference codes do; the floor at cmkd's defaults takes the inputs as cmkd's fit serves
    them and the fused Adam step of `run.fused_optimizer: auto`."""
    seen = []

    def reference(task, data, table, epochs, backward, alone=False, bf16=False, fused=False):
        seen.append((alone, data.served is not None and task.inputs_standardized, fused))
        return [0.1] * epochs

    monkeypatch.setattr(loops, "reference_epochs", reference)
    monkeypatch.setattr(loops, "cmkd_epochs", lambda task, data, epochs, variant: ([0.1] * 2, 0))
    loops._compare(("small_cnn",), 2, 1, ("32-true",), 0, 64)
    # SemBridge: its reference loop; plain KD: its reference loop, then the two floors
    expected = [(False, False, False), (False, False, False), (True, False, False)]
    assert seen == [*expected, (True, True, True)]
