"""Every registered distillation term, between two different real networks on real data:
a finite scalar, gradients for the student and the term's own adapters, none for the teacher."""

from __future__ import annotations

import pytest
import torch

from cmkd.data.normalize import Standardize
from cmkd.data.sources import load_source
from cmkd.losses import LOSSES, TermContext, build_term
from cmkd.models.backbones import create_network


@pytest.fixture(scope="module")
def twin_batch(data_root):
    """16 EuroSAT twins: 13-band MS for the teacher, RGB for the student, standardised."""
    data = load_source("eurosat_paired", data_root)
    rows = torch.arange(0, 369, 23)[:16]
    ms = torch.from_numpy(data["ms"].x[rows.numpy()].astype("float32"))
    rgb = torch.from_numpy(data["rgb"].x[rows.numpy()]).float()
    return {
        "ms": Standardize.fit(ms)(ms),
        "rgb": Standardize.fit(rgb)(rgb),
        "label": torch.from_numpy(data["rgb"].y[rows.numpy()]),
        "index": torch.arange(16),
    }


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_term_contract_across_different_networks(name: str, twin_batch) -> None:
    torch.manual_seed(0)
    # Different widths, channel counts and feature-map sizes on the two sides.
    teacher = create_network("small_cnn", 13, 10, widths=(8, 16, 32))
    student = create_network("small_cnn", 3, 10, widths=(16, 24), stem_stride=1)
    term = build_term(name, student, teacher, TermContext(num_train=16, max_epochs=4))
    term.train()
    term.on_epoch_start(2, 4)
    # The teacher keeps requires_grad here, so a term that forgot to detach would leak into it.
    value = term(student(twin_batch["rgb"]), teacher(twin_batch["ms"]), twin_batch)
    total = sum(value.values()) if isinstance(value, dict) else value
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters()), "teacher received a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for pname, p in term.named_parameters():
        assert p.grad is not None, f"{name}: its trainable {pname} got no gradient"
