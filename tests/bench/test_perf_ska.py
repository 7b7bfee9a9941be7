"""The ska section's FLOP count (`cmkd.bench.perf.ska`; the section itself runs at toy size in
test_perf_sections.py; no timing is asserted: speed is measured by the benchmark)."""

from __future__ import annotations

import pytest
import torch

from cmkd.bench.perf.ska import GRID, attention_products, flop_share


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_flop_share_counts_what_ska_adds() -> None:
    """SKA's attention maps at the grid's width dwarf a small CNN's weights; at ResNet scale
    they are a sliver: the FLOP count says so without a clock."""
    small = flop_share("small_cnn", 8, GRID)
    assert small["ska_params"] == 4 * 256 * 256 > small["student_params"]
    assert 0 < small["ska_gflop"] and small["kd_gflop"] > 0
    # The attention's products alone, by the formula, are most of what the counter sees.
    products = attention_products(batch=8, tokens=16, width=128, dim=256, steps=1)
    assert 0.5 * small["ska_gflop"] < products["flop"] / 1e9 < small["ska_gflop"]
