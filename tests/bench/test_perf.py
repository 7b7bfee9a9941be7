"""`cmkd bench perf` at toy sizes: every part runs and returns its ratios (no timing is
asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd.bench.machine import machine, peak_memory
from cmkd.bench.perf.loading import data_rates
from cmkd.bench.perf.micro import _logits, coral_cost, dynm_speed, min_kl_authors, min_kl_loop
from cmkd.bench.perf.overhead import summarise_overhead
from cmkd.bench.perf.page import render
from cmkd.bench.perf.timing import timed_epochs
from cmkd.pairing.dynamic import min_kl_match


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops on a shared machine: one thread avoids threads spinning against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_per_sample_loop_finds_the_pairs_of_the_chunked_matcher() -> None:
    zs, ys = _logits(150, 5, 0)
    zt, yt = _logits(400, 5, 1)
    chunked = min_kl_match(zs, zt, ys, yt, chunk_size=64)
    for matcher in (min_kl_loop, min_kl_authors):
        pairs = matcher(zs, zt, ys, yt)
        assert torch.equal(yt[pairs], ys)  # same class
        assert (pairs == chunked).float().mean() > 0.99  # float ties aside


def test_dynm_and_coral_report_ratios_and_memory() -> None:
    dynm = dynm_speed(100, 300, 1000, 1200, classes=5, repeats=1, big_chunks=(64, 512))
    assert dynm["speedup"] > 0 and dynm["speedup_vs_tight_loop"] > 0
    assert min(dynm["same_pairs_fraction"].values()) > 0.99
    assert dynm["big_size"] == [1000, 1200, 5] and set(dynm["big"]) == {"64", "512"}
    assert all(v["median_s"] > 0 for v in dynm["big"].values())
    coral = coral_cost(d=256, b=32, repeats=1)
    assert coral["speedup"] > 0 and coral["relative_difference"] < 1e-4
    # 100 MB: above glibc's largest mmap threshold (32 MB), so fresh pages, whatever ran before
    with peak_memory() as memory:
        torch.ones(25_000_000).sum()
    if memory["added_mib"] is not None:  # Linux
        assert memory["added_mib"] > 50 and memory["peak_rss_mib"] > memory["added_mib"]


def test_data_rates_compare_cache_and_decoding(data_root) -> None:
    rates = data_rates(limit=8, repeats=1, batch_size=4)
    for key in ("ms", "rgb"):
        assert rates[key]["samples"] == 8
        assert rates[key]["cache_over_decode"] > 0


def _run(epoch: list[float], step: list[float], fill: float | None = None) -> dict:
    return {
        "epoch_seconds": epoch,
        "step_seconds": step,
        "samples_per_epoch": 100,
        "fit_seconds": sum(epoch),
        "teacher_seconds": fill,
        "test_acc": 0.5,
    }


def test_a_cost_paid_on_one_step_in_k_counts_in_its_proportion() -> None:
    # SemBridge's SKA on one step in 10, 7 steps an epoch: 7 of the 10 timed epochs hold one
    # SKA step (+0.7 s), 3 none. A median epoch would count it on every epoch (x1.7); the mean
    # counts it 7 times in 10 epochs: 1 + 0.49.
    epochs = timed_epochs(5, samples=221, batch_size=32, every=10, untimed=2)
    assert epochs == 12  # 2 untimed + 10 epochs of 7 steps: 7 whole cycles of 10 steps
    with_ska = [9.0, 1.7, 9.0, 1.7, 1.0, 1.7, 1.7, 1.0, 1.7, 1.7, 1.0, 1.7]
    runs = {
        "no KD": [_run([9.0] + [1.0] * 11, [9.0] + [1.0] * 11)],
        "KD (teacher cache)": [_run([9.0] + [1.0] * 11, [9.0] + [1.0] * 11, 1.0)],
        "SemBridge (KD + SKA + DynM)": [_run(with_ska, with_ska, 1.0)],
    }
    out = summarise_overhead(runs, rematch_epoch=2)
    assert out["epoch_statistic"] == "mean"
    assert out["sembridge"]["epoch_ratio_vs_kd"] == pytest.approx(1.49)
    # Other sizes: the fewest epochs at least asked for whose timed part is whole cycles.
    assert timed_epochs(5, samples=221, batch_size=64, every=10, untimed=1) == 6  # 4 steps
    assert timed_epochs(5, samples=221, batch_size=32, every=1, untimed=2) == 5
    assert timed_epochs(30, samples=100, batch_size=10, every=5, untimed=1) == 30  # 2 cycles each


def test_overhead_ratios_leave_out_warm_up_and_rematch_epochs() -> None:
    runs = {
        "no KD": [_run([9, 1, 1, 1, 1], [9, 0.5, 0.5, 0.5, 0.5])] * 2,
        "KD (teacher cache)": [_run([9, 1.1, 1.1, 1.1, 1.1], [9, 0.6, 0.6, 0.6, 0.6], 2.0)],
        "SemBridge (KD + SKA + DynM)": [
            _run([9, 1.2, 3.2, 1.2, 1.2], [9, 0.7, 0.7, 0.7, 0.7], 2.0)
        ],
    }
    out = summarise_overhead(runs, rematch_epoch=2)
    kd, sb = out["methods"]["KD (teacher cache)"], out["methods"]["SemBridge (KD + SKA + DynM)"]
    assert kd["epoch_ratio"] == pytest.approx(1.1) and kd["step_ratio"] == pytest.approx(1.2)
    assert kd["teacher_seconds"] == 2.0 and kd["epoch_ratio_range"] == pytest.approx([1.1, 1.1])
    assert sb["epoch_ratio"] == pytest.approx(1.2)
    assert out["sembridge"]["rematch_extra_s"] == pytest.approx(2.0)
    assert out["sembridge"]["epoch_ratio_vs_kd"] == pytest.approx(1.2 / 1.1)
    assert out["sembridge"]["amortised_epoch_ratio_vs_kd"] == pytest.approx((1.2 + 0.05) / 1.1)
    overhead = {
        **out,
        "train_samples": 100,
        "batch_size": 32,
        "teacher": "t",
        "student": "s",
        "epochs": 5,
        "repeats": 1,
        "rematch_epoch": 2,
        "teacher_step_samples_per_s": 1000.0,
    }
    one = [{"seed": s, "best": 0.70, "last": 0.60, "wall_s": 10.0} for s in (0, 1)]
    two = [{"seed": 0, "best": 0.72, "last": 0.60, "wall_s": 20.0}]
    two.append({"seed": 1, "best": 0.74, "last": 0.62, "wall_s": 30.0})
    page = render(
        {
            "command": "cmkd bench perf",
            "finished": "now",
            "minutes": 1.0,
            "machine": machine(),
            "load_average_end": [1.0, 1.0, 1.0],
            "overhead": overhead,
            "overhead_large": {**overhead, "student": "big"},
            "ddp": {
                "config": "c.yaml",
                "epochs": 3,
                "batch_size": 32,
                "runs": {"1 process": one, "2 DDP processes": two},
            },
        }
    )
    assert page.startswith("# Performance") and "`cmkd bench perf`" in page
    assert "| KD (teacher cache) | 1.100 | 1.10 | 1.10-1.10 |" in page
    assert "## Distillation overhead per epoch (larger backbone)" in page
    assert "teacher t (MS), student big (RGB)" in page
    # The SemBridge / KD aims are the issue's, at small_cnn and resnet18 only: none for the
    # students "s" and "big".
    assert "| #19 | SemBridge epoch <=" not in page
    assert "| #8 | KD (teacher cache) epoch <= 1.10x no KD | x1.10 | met |" in page
    # Paired differences +2 and +4 points (mean +3, t interval 3 +- 12.71 * sqrt(2) / sqrt(2)).
    assert "| Δ, best on val | +3.0 [-9.7, +15.7] | | |" in page
    assert "| 2 DDP processes | 73.0 ± 1.4 | 61.0 ± 1.4 | 25.0 |" in page
    assert not any(math.isnan(v) for v in machine()["load_average"])


def test_the_overhead_sembridge_arm_runs_ska_as_the_shipped_sembridge_configs() -> None:
    # The page's SemBridge / KD ratio speaks for the configs users run: same SKA options.
    from pathlib import Path

    import yaml

    from cmkd.bench.perf.overhead import SHIPPED_SKA

    shipped = sorted((Path(__file__).parents[2] / "configs/eurosat_asym").glob("sembridge_*.yaml"))
    assert shipped
    for path in shipped:
        terms = yaml.safe_load(path.read_text())["distill"]["terms"]
        assert [t["params"] for t in terms if t["name"] == "ska"] == [SHIPPED_SKA], path.name


def test_the_every_grid_checks_the_shipped_ska_schedule() -> None:
    # The perf page's SKA every-k accuracy check reads the grid's first contrast: its cheaper
    # row must run SKA as the shipped SemBridge configs do, its other row on every step.
    from pathlib import Path

    import yaml

    from cmkd.bench.perf.overhead import SHIPPED_SKA

    grid = yaml.safe_load((Path(__file__).parents[2] / "configs/bench/ska-every.yaml").read_text())
    approx, exact = next(iter(grid["contrasts"].values()))

    def ska(row: str) -> dict:
        (params,) = [t["params"] for t in grid["methods"][row]["terms"] if t["name"] == "ska"]
        return params

    assert ska(approx) == SHIPPED_SKA
    assert ska(exact).get("every", 1) == 1
    assert {**ska(exact), "every": 1} == {**SHIPPED_SKA, "every": 1}
