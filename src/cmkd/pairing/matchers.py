"""The built-in offline matchers behind `cmkd match --method NAME` (registry: `cmkd.pairing.base`).

Each pairs every student training sample with a same-class teacher training sample and returns
a `PairList`; the teacher's training samples are the candidates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cmkd.data.samples import Samples
from cmkd.pairing.base import register_matcher
from cmkd.pairing.pairs import PairList
from cmkd.pairing.pseudo_views import get_pseudo_view
from cmkd.pairing.ssm import ssm_pairs, train_matcher
from cmkd.pairing.strategies import ClassRandomPairing

if TYPE_CHECKING:
    from cmkd.config import MatchConfig, RunConfig


@register_matcher(
    "class_random", "a random same-class teacher sample (no pseudo-view exists, e.g. speech)"
)
def class_random(
    teacher_model, teacher: Samples, student: Samples, cfg: MatchConfig, seed: int, run: RunConfig
) -> PairList:
    rows = ClassRandomPairing(student.y, teacher.y, seed, student.classes).table_for(0)
    return PairList.from_table(rows, student, teacher, method="class_random")


@register_matcher(
    "ssm",
    "SemBridge's self-supervised matcher, trained on teacher samples and their pseudo-views "
    "in the student's modality; top-1 same-class cosine",
    needs_pseudo_view=True,
)
def ssm(
    teacher_model, teacher: Samples, student: Samples, cfg: MatchConfig, seed: int, run: RunConfig
) -> PairList:
    view = get_pseudo_view(cfg.pseudo_view).fit(teacher.x, student.x)
    matcher = train_matcher(
        teacher.x,
        view,
        backbone=cfg.backbone,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        run=run,
    )
    return ssm_pairs(matcher, teacher, student)


class TeacherSpace(torch.nn.Module):
    """Both sides embedded by the frozen teacher (the student side through a pseudo-view into
    the teacher's modality): the matcher when the student's modality can be mapped into the
    teacher's, but not the other way (an RGB teacher, an MS student)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def embed_a(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).embedding

    embed_b = embed_a


@register_matcher(
    "teacher_embedding",
    "top-1 same-class cosine in the frozen teacher's embedding space, the student seen through "
    "a pseudo-view into the teacher's modality",
    needs_pseudo_view=True,
)
def teacher_embedding(
    teacher_model, teacher: Samples, student: Samples, cfg: MatchConfig, seed: int, run: RunConfig
) -> PairList:
    from cmkd.training import device_of

    view = get_pseudo_view(cfg.pseudo_view).fit(student.x, teacher.x)
    as_teacher = Samples(view(student.x), student.y, student.ids, student.classes)
    space = TeacherSpace(teacher_model.to(device_of(run)).eval())
    return ssm_pairs(space, teacher, as_teacher, method="teacher_embedding")
