"""CRD: the InfoNCE value by hand, queue and bank updates, alignment, and real networks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmkd.errors import CmkdError
from cmkd.losses.base import LOSSES, TermContext, build_term
from cmkd.losses.contrastive import CRD, crd_loss, info_nce
from cmkd.models.outputs import ModelOutput


def out(e: torch.Tensor) -> ModelOutput:
    return ModelOutput(torch.zeros(len(e), 2), e)


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=1)


def identity_heads(term: CRD) -> CRD:
    """Heads that pass unit embeddings through unchanged, so memories hold the inputs."""
    with torch.no_grad():
        for head in (term.head_s, term.head_t):
            head.weight.copy_(torch.eye(head.weight.shape[0]))
            head.bias.zero_()
    return term


def test_info_nce_and_symmetric_crd_by_hand() -> None:
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # Logits (1, 0) at T = 1: -log(e / (e + 1)).
    assert info_nce(a, a, b, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # At T = 0.5 the logits double; excluding the only negative leaves nothing to contrast.
    assert info_nce(a, a, b, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert info_nce(a, a, b, 1.0, torch.tensor([[True]])).item() == pytest.approx(0.0)
    # Symmetric: student anchors vs teacher negatives plus teacher anchors vs student ones.
    s, t, neg_s, neg_t = unit(3, 4), unit(3, 4), unit(5, 4), unit(5, 4)
    expected = info_nce(s, t, neg_t, 0.07) + info_nce(t, s, neg_s, 0.07)
    torch.testing.assert_close(crd_loss(s, t, neg_s, neg_t, 0.07), expected)


def test_queue_is_fifo_and_wraps() -> None:
    torch.manual_seed(0)
    term = identity_heads(CRD(4, 4, feat_dim=4, queue_size=5)).train()
    (s1, t1), (s2, t2) = (unit(3, 4), unit(3, 4)), (unit(3, 4), unit(3, 4))
    term(out(s1), out(t1), {})
    assert int(term.ptr) == 3
    term(out(s2), out(t2), {})
    # Rows 0-2 from batch 1, then 3, 4 and (wrapping) 0 from batch 2.
    torch.testing.assert_close(term.memory_t, torch.stack([t2[2], t1[1], t1[2], t2[0], t2[1]]))
    torch.testing.assert_close(term.memory_s, torch.stack([s2[2], s1[1], s1[2], s2[0], s2[1]]))
    assert int(term.ptr) == 1
    before = term.memory_t.clone()
    term.eval()(out(s1), out(t1), {})
    torch.testing.assert_close(term.memory_t, before)  # no update outside training
    assert "memory_t" in dict(term.named_buffers()) and "memory_t" not in dict(
        term.named_parameters()
    )


def test_bank_momentum_updates_only_the_batch_slots() -> None:
    torch.manual_seed(1)
    term = identity_heads(CRD(4, 4, num_train=6, feat_dim=4, memory="bank")).train()
    old_s, old_t = term.memory_s.clone(), term.memory_t.clone()
    s, t, index = unit(2, 4), unit(2, 4), torch.tensor([4, 1])
    term(out(s), out(t), {"index": index})
    for old, new, bank in ((old_s, s, term.memory_s), (old_t, t, term.memory_t)):
        expected = old.clone()
        expected[index] = F.normalize(0.5 * old[index] + 0.5 * new, dim=1)
        torch.testing.assert_close(bank, expected)


def test_bank_leaves_the_samples_own_slot_out_of_its_negatives() -> None:
    torch.manual_seed(2)
    term = identity_heads(CRD(4, 4, num_train=6, feat_dim=4, memory="bank")).eval()
    s, t = unit(1, 4), unit(1, 4)
    others = torch.tensor([0, 1, 3, 4, 5])
    expected = crd_loss(s, t, term.memory_s[others], term.memory_t[others], 0.07)
    torch.testing.assert_close(term(out(s), out(t), {"index": torch.tensor([2])}), expected)


@pytest.mark.parametrize("memory", ["queue", "bank"])
def test_loss_is_lower_when_student_aligns_with_its_teacher(memory: str) -> None:
    torch.manual_seed(3)
    term = identity_heads(CRD(16, 16, num_train=64, feat_dim=16, memory=memory, queue_size=64))
    term.eval()
    t, batch = unit(8, 16), {"index": torch.arange(8)}
    aligned = term(out(t.clone()), out(t), batch)
    random = term(out(unit(8, 16)), out(t), batch)
    assert aligned.item() < 0.1 < random.item()


def test_bad_memory_options_are_user_errors() -> None:
    with pytest.raises(CmkdError, match="memory: bank needs the training-set size"):
        CRD(4, 4, num_train=0, memory="bank")
    with pytest.raises(CmkdError, match="memory must be 'queue' or 'bank'"):
        CRD(4, 4, memory="fifo")
    assert "Tian et al. 2020" in LOSSES["crd"].description


# --- on real networks -----------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["queue", "bank"])
def test_crd_on_real_networks(memory: str, network_pair) -> None:
    (student, xs), (teacher, xt), _ = network_pair
    context = TermContext(num_train=6)
    term = build_term("crd", student, teacher, context, memory=memory, feat_dim=8, queue_size=16)
    value = term(student(xs), teacher(xt), {"index": torch.arange(6)})
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert all(p.grad is not None for p in student.features.parameters())
    assert all(p.grad is not None for p in term.parameters())  # both projection heads
    assert all(p.grad is None for p in teacher.parameters())
    assert term.needs == {"embedding"}
    with pytest.raises(CmkdError, match="num_train is 0"):
        build_term("crd", student, teacher, TermContext(), memory="bank")
