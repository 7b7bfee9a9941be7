"""`cmkd.bench.perf_ska` at toy sizes: every part runs and reports what it says (no timing is
asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import pytest
import torch

from cmkd.bench.perf_ska import (
    GRID,
    attention_products,
    flop_share,
    render_ska,
    ska_alone,
    step_overhead,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_step_overhead_times_every_arm_against_kd_and_renders() -> None:
    arms = {"grid": {"dim": 16, "heads": 4}, "every 2": {"dim": 16, "heads": 4, "every": 2}}
    step = step_overhead("small_cnn", 4, arms, repeats=2, steps=2)
    assert step["feature_map"] == [128, 4, 4] and set(step["arms"]) == set(arms)
    for arm in step["arms"].values():
        for clock in ("wall", "cpu"):
            r = arm["ratio"][clock]
            assert 0 < r["min"] <= r["median"] <= r["max"]
    alone = ska_alone("small_cnn", 4, {"dim": 16, "heads": 4}, steps=2)
    flops = flop_share("small_cnn", 4, {"dim": 16, "heads": 4})
    products = attention_products(batch=4, width=8, dim=16, steps=2)
    report = {
        "torch": torch.__version__,
        "threads": 1,
        "cpus": 2,
        "steps": [step],
        "ska_alone": [alone],
        "flops": [flops],
        "attention_products": [products],
    }
    text = "\n".join(render_ska(report))
    assert "every 2: dim 16, heads 4, every 2" in text and f"{alone['cpu_ms']:.2f}" in text
    assert f"{flops['ska_gflop']:.3f}" in text


def test_flop_share_counts_what_ska_adds() -> None:
    """SKA's attention maps at the grid's width dwarf a small CNN's weights; at ResNet scale
    they are a sliver: the FLOP count says so without a clock."""
    small = flop_share("small_cnn", 8, GRID)
    assert small["ska_params"] == 4 * 256 * 256 > small["student_params"]
    assert 0 < small["ska_gflop"] and small["kd_gflop"] > 0
    # The attention's products alone, by the formula, are most of what the counter sees.
    products = attention_products(batch=8, tokens=16, width=128, dim=256, steps=1)
    assert 0.5 * small["ska_gflop"] < products["flop"] / 1e9 < small["ska_gflop"]
