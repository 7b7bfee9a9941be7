"""The two controls of a fair comparison (teacher_target class_mean and teacher_free): their
targets against a straightforward reference, inside a real distillation run (spoken digits
teacher -> MNIST student, class-random pairs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, PairingConfig
from cmkd.errors import CmkdError
from cmkd.recipes import distill_student, train_classifier

TINY = ModelConfig(backbone="small_cnn", options={"widths": [8, 16, 16]})
FSDD = DataConfig(
    source="fsdd", split="official", val_fraction=0.1, test_fraction=0.1, train_per_class=10
)
MNIST = DataConfig(source="mnist", train_per_class=5, val_fraction=0.05, test_fraction=0.05)


class _Capture(Callback):
    """Keeps the teacher targets of the first training batch, with what they must equal."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.labels = batch["label"].clone()
            self.target = module.teacher_outputs(batch).logits.clone()
            self.cache = module.cache.logits.clone()
            self.teacher_labels = module.teacher_labels.clone()


@pytest.fixture(scope="module")
def fsdd_teacher(tmp_path_factory, data_root) -> str:
    from cmkd.config import RunConfig

    run = RunConfig(
        output_dir=str(tmp_path_factory.mktemp("runs")), accelerator="cpu", progress_bar=False
    )
    return train_classifier(FSDD, TINY, OptimConfig(epochs=1), run, "audio", 0)["checkpoint"]


def _distill(teacher: str, quiet_run, target: str, **kw) -> _Capture:
    capture = _Capture()
    distill = DistillConfig(
        teacher=teacher, pairing=PairingConfig("class_random"), teacher_target=target, **kw
    )
    distill_student(
        MNIST,
        TINY,
        OptimConfig(epochs=1),
        replace(quiet_run, name=target),
        distill,
        "image",
        0,
        callbacks=(capture,),
    )
    return capture


def test_class_mean_target_is_the_teachers_mean_logits_of_the_students_class(
    fsdd_teacher, quiet_run
) -> None:
    c = _distill(fsdd_teacher, quiet_run, "class_mean")
    cache, t_labels = c.cache.numpy(), c.teacher_labels.numpy()
    reference = np.stack([cache[t_labels == y].mean(0) for y in c.labels.numpy()])
    np.testing.assert_allclose(c.target.numpy(), reference, rtol=1e-5, atol=1e-6)
    # Same class, same target: nothing about the individual teacher sample survives.
    same = c.labels == c.labels[0]
    assert torch.equal(c.target[same], c.target[0].expand(int(same.sum()), -1))


def test_teacher_free_target_is_a_hand_made_soft_label(fsdd_teacher, quiet_run) -> None:
    c = _distill(fsdd_teacher, quiet_run, "teacher_free", teacher_free_confidence=0.8)
    p = c.target.softmax(1)
    expected = torch.full_like(p, 0.2 / 9)
    expected[torch.arange(len(p)), c.labels] = 0.8
    torch.testing.assert_close(p, expected)


def test_teacher_free_refuses_feature_terms(fsdd_teacher, quiet_run) -> None:
    from cmkd.config import TermConfig

    with pytest.raises(CmkdError, match="teacher_free"):
        _distill(fsdd_teacher, quiet_run, "teacher_free", terms=[TermConfig("rkd")])
