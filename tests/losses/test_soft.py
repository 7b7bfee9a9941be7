"""Soft constraints (feature margin, classifier level), per-sample forms, against hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.losses import build_term
from cmkd.losses.logits import kd_loss, logits_mse
from cmkd.losses.soft import am_softmax, feature_distance, margin_loss, tolerant_logit_loss
from cmkd.models.outputs import ModelOutput


def test_feature_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    assert torch.allclose(feature_distance(a, b, "cosine"), torch.tensor([1.0, 0.0]), atol=1e-6)
    # l2 is the mean squared difference over dims: (1 + 4) / 2 and 0.
    assert torch.allclose(feature_distance(a, b, "l2"), torch.tensor([2.5, 0.0]))
    with pytest.raises(CmkdError, match="distance"):
        feature_distance(a, b, "l1")


def test_margin_loss_zero_inside_and_distance_gradient_outside():
    d = torch.tensor([0.1, 0.2, 0.5, 1.3], requires_grad=True)
    loss = margin_loss(d, 0.3)
    assert torch.allclose(loss, torch.tensor([0.0, 0.0, 0.2, 1.0]))
    loss.sum().backward()
    assert torch.equal(d.grad, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_margin_gradient_flows_to_student_only_outside_margin():
    torch.manual_seed(0)
    t = torch.randn(4, 3)
    s = t.clone()
    s[2:] = torch.randn(2, 3) * 5  # far away
    s.requires_grad_(True)
    d = feature_distance(t, s, "l2")
    margin = float(d[2:].min()) / 2
    margin_loss(d, margin).sum().backward()
    assert torch.all(s.grad[:2] == 0)
    # Outside the margin the gradient is the l2 distance's: 2 (s - t) / D.
    assert torch.allclose(s.grad[2:], 2 * (s[2:] - t[2:]).detach() / 3, atol=1e-6)


def _outputs(b=5, ds=6, dt=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = ModelOutput(torch.randn(b, k, generator=g), torch.randn(b, ds, generator=g))
    teacher = ModelOutput(torch.randn(b, k, generator=g), torch.randn(b, dt, generator=g))
    batch = {"label": torch.randint(0, k, (b,), generator=g)}
    return student, teacher, batch


class _Net(torch.nn.Module):
    def __init__(self, dim, k=3):
        super().__init__()
        self.embedding_dim = dim
        self.classifier = torch.nn.Linear(dim, k)


def test_soft_feature_hard_ablation_is_mse_of_projection():
    student, teacher, batch = _outputs()
    term = build_term("soft_feature", _Net(6), _Net(4), margin=0.0, distance="l2")
    expected = F.mse_loss(term.projection(teacher.embedding), student.embedding)
    assert torch.allclose(term(student, teacher, batch), expected)
    assert torch.allclose(term.per_sample(student, teacher, batch).mean(), expected)
    # without the projection (equal widths) it is the classic hard constraint MSE(f_T, f_S)
    student, teacher, batch = _outputs(ds=4)
    plain = build_term("soft_feature", _Net(4), _Net(4), margin=0.0, distance="l2",
                       projection="none")  # fmt: skip
    expected = F.mse_loss(teacher.embedding, student.embedding)
    assert torch.allclose(plain(student, teacher, batch), expected)


def test_soft_feature_is_zero_when_within_margin():
    student, teacher, batch = _outputs(ds=4)
    term = build_term("soft_feature", _Net(4), _Net(4), margin=0.5, projection="none")
    close = ModelOutput(student.logits, teacher.embedding * 2.0)  # same direction: cos = 1
    assert float(term(close, teacher, batch)) == 0.0
    assert float(term.diagnostics()["inside_margin"]) == 1.0
    with pytest.raises(CmkdError, match="equal widths"):
        build_term("soft_feature", _Net(6), _Net(4), projection="none")


def test_soft_feature_projection_is_trained_and_teacher_detached():
    student, teacher, batch = _outputs()
    teacher.embedding.requires_grad_(True)
    student.embedding.requires_grad_(True)
    term = build_term("soft_feature", _Net(6), _Net(4), margin=0.0)
    term(student, teacher, batch).backward()
    assert teacher.embedding.grad is None
    assert student.embedding.grad is not None
    assert term.projection.weight.grad is not None


def test_am_softmax_hand_value():
    e = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    y = torch.tensor([0])
    s, m = 10.0, 0.3
    logits = torch.tensor([s * (1 - m), 0.0])
    expected = -logits[0] + torch.logsumexp(logits, 0)
    assert torch.allclose(am_softmax(e, w, y, s, m), expected[None], atol=1e-6)
    # margin 0 is a cosine softmax
    assert torch.allclose(am_softmax(e, w, y, s, 0.0), F.cross_entropy(torch.tensor([[s, 0.0]]), y))


def test_tolerant_logit_loss_hand_value():
    zs = torch.tensor([[1.0, -2.0, 0.5]])
    zt = torch.tensor([[0.0, 0.0, 0.0]])
    # |diff| = 1, 2, 0.5; minus 0.75 -> 0.25, 1.25, 0; squared mean = (0.0625 + 1.5625) / 3
    assert torch.allclose(tolerant_logit_loss(zs, zt, 0.75), torch.tensor([1.625 / 3]))
    assert torch.allclose(tolerant_logit_loss(zs, zt, 0.0).mean(), logits_mse(zs, zt))


def test_soft_classifier_uses_frozen_teacher_classifier_and_hard_ablation():
    student, teacher, batch = _outputs(ds=4, dt=4)
    t_net = _Net(4)
    term = build_term(
        "soft_classifier", _Net(4), t_net, am_weight=0.0, tolerance=0.0, adapter="none"
    )
    z = t_net.classifier(student.embedding)
    assert torch.allclose(term(student, teacher, batch), logits_mse(z, teacher.logits), atol=1e-6)
    # the teacher's classifier is a buffer copy: not a parameter, so never optimised
    names = [n for n, _ in term.named_parameters()]
    assert names == []
    full = build_term("soft_classifier", _Net(6), t_net, scale=8.0, margin=0.1, tolerance=0.5)
    h = full.adapter(student.embedding.new_ones(5, 6))
    out = ModelOutput(student.logits, student.embedding.new_ones(5, 6))
    expected = am_softmax(h, t_net.classifier.weight, batch["label"], 8.0, 0.1) + (
        tolerant_logit_loss(t_net.classifier(h), teacher.logits, 0.5)
    )
    assert torch.allclose(full.per_sample(out, teacher, batch), expected, atol=1e-6)
    assert [n for n, _ in full.named_parameters()] == ["adapter.weight", "adapter.bias"]


def test_soft_classifier_needs_a_linear_teacher_classifier():
    class NoHead(torch.nn.Module):
        embedding_dim = 4

    with pytest.raises(CmkdError, match="linear `classifier`"):
        build_term("soft_classifier", _Net(4), NoHead())


def test_per_sample_forms_average_to_the_batch_loss():
    student, teacher, batch = _outputs(ds=4, dt=4)
    for name, params in (("kd", {"temperature": 3.0}), ("lskd", {}), ("logits", {})):
        term = build_term(name, _Net(4), _Net(4), **params)
        per = term.per_sample(student, teacher, batch)
        assert per.shape == (5,)
        assert torch.allclose(per.mean(), term(student, teacher, batch), atol=1e-6), name
    kd = build_term("kd", _Net(4), _Net(4), temperature=2.0)
    assert math.isclose(
        float(kd.per_sample(student, teacher, batch).mean()),
        float(kd_loss(student.logits, teacher.logits, 2.0)),
        rel_tol=1e-5,
    )


def test_has_per_sample_only_where_the_form_matches_forward():
    student, teacher, batch = _outputs(ds=4, dt=4)
    assert build_term("kd", _Net(4), _Net(4)).has_per_sample
    assert build_term("soft_feature", _Net(4), _Net(4)).has_per_sample
    assert not build_term("rkd", _Net(4), _Net(4)).has_per_sample
    with pytest.raises(CmkdError, match="no per-sample form"):
        build_term("rkd", _Net(4), _Net(4)).per_sample(student, teacher, batch)
    from cmkd.losses.logits import KD

    class Changed(KD):  # changes forward, inherits per_sample: must not claim one
        def forward(self, student, teacher, batch):
            return super().forward(student, teacher, batch) * 2

    assert not Changed().has_per_sample


def test_fitnet_per_sample_matches(network_pair):
    (s_net, s_x), (t_net, t_x), _ = network_pair
    on = "embedding" if None in (s_net.feature_channels, t_net.feature_channels) else "feature_map"
    term = build_term("fitnet", s_net, t_net, on=on).eval()
    s_out, t_out = s_net(s_x), t_net(t_x)
    per = term.per_sample(s_out, t_out, {})
    assert per.shape == (len(s_x),)
    assert torch.allclose(per.mean(), term(s_out, t_out, {}), atol=1e-5)
