"""Every section of `cmkd bench perf` runs at toy sizes on the real data and reports what its
page section shows; the page renders all of them, in page order, and renders again from its
store alone (`cmkd report`). No timing is asserted: speed is measured by the benchmark, not by
tests."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cmkd.bench.pagestore import publish, store_path
from cmkd.bench.perf import (
    micro,
    overhead,
    reference_loops,
    runloop,
    runloop_distill,
    ska,
    weight_grad,
)
from cmkd.bench.perf.ddp import ddp_accuracy
from cmkd.bench.perf.loading import data_rates
from cmkd.bench.perf.overhead import SHIPPED_SKA
from cmkd.bench.perf.page import SECTIONS, render
from cmkd.bench.perf.run import SECTIONS as MEASURED
from cmkd.bench.perf.run import _machine, perf
from cmkd.bench.perf.threads import threads_under_load
from cmkd.cli import main
from cmkd.errors import CmkdError
from cmkd.precision import resolve_precision

TINY_SKA = {"grid": {"dim": 16, "heads": 4}, "every 2": {"dim": 16, "heads": 4, "every": 2}}


def _toy_sections(folder: Path) -> dict[str, Any]:
    """Each section's measurement at toy sizes (the same functions `perf` calls)."""
    return {
        "help": lambda: runloop.help_times(repeats=1),
        "runloop": lambda: runloop.fit_vs_plain(repeats=1, epochs=20, output_dir=folder / "fit"),
        "loops": lambda: reference_loops.loops(("small_cnn",), epochs=2, repeats=1, busy=1),
        "overhead": lambda: overhead.distill_overhead(
            3,
            1,
            output_dir=str(folder / "oh"),
            only=["KD (teacher cache)", "SemBridge (KD + SKA + DynM)"],
        ),
        "ska": lambda: ska.measure(
            repeats=2,
            steps=2,
            epochs=2,
            epoch_repeats=1,
            scenarios=(("small_cnn", 4, TINY_SKA, False), ("small_cnn", 4, TINY_SKA, True)),
            output_dir=str(folder / "ska"),
        ),  # fmt: skip
        "precision": lambda: {
            **runloop_distill.precision_steps(
                (("small_cnn", "small_cnn"),),
                repeats=1,
                steps=1,
                epoch_repeats=1,
                output_dir=folder / "costs",
            ),
            "sources": runloop_distill.bf16_by_source(
                (("fsdd", "audio", "small_cnn"), ("mfeat", "fac", "mlp")),
                repeats=2,
                steps=1,
                batch_size=8,
            ),
        },  # fmt: skip
        "weight_grad": lambda: weight_grad.weight_grad_costs(
            ("resnet18",), batch=2, size=32, repeats=1
        ),
        "optimizer": lambda: micro.optimizer_steps("small_cnn", repeats=2, steps=2),
        "threads": lambda: threads_under_load(busy=0, repeats=1, steps=1),
        "checkpoints": lambda: runloop_distill.checkpoint_costs(
            ("small_cnn",), teacher="small_cnn", epochs=1, output_dir=folder / "costs"
        ),
        "dynm": lambda: micro.dynm_speed(
            100, 300, 1000, 1200, classes=5, repeats=1, big_chunks=(64,)
        ),
        "coral": lambda: micro.coral_cost(d=256, b=32, repeats=1),
        "data": lambda: data_rates(limit=8, repeats=1, batch_size=4),
        "ddp": lambda: ddp_accuracy(seeds=(0,), epochs=1, output_dir=str(folder / "ddp")),
    }


@pytest.fixture(scope="module")
def toy_store(data_root, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("perf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store: dict[str, Any] = {"kind": "perf", "command": "cmkd bench perf", "machine": _machine()}
    store["ran"] = {}
    for name, measure in _toy_sections(folder).items():
        start = time.perf_counter()
        store[name] = measure()
        store["ran"][name] = {"load": [1.0, 1.5], "minutes": (time.perf_counter() - start) / 60}
    torch.set_num_threads(threads)
    # overhead_large is the overhead measurement at a larger backbone (too slow for a test):
    # its page section is rendered from the small one's numbers.
    store["overhead_large"] = store["overhead"]
    store["ran"]["overhead_large"] = store["ran"]["overhead"]
    store["bf16_accuracy"] = {"source": "a grid", "seeds": [0, 1], "fp32": [0.8, 0.7],
                              "bf16": [0.81, 0.7]}  # fmt: skip
    store["ska_every_accuracy"] = {"source": "a grid", "seeds": [0, 1], "exact": [0.8, 0.7],
                                   "approx": [0.8, 0.71], "rows": ["every 5", "every step"],
                                   "scenarios": ["a", "b"]}  # fmt: skip
    store.update({"load_average_end": [1.0, 1.0, 1.0], "minutes": 1.0, "finished": "now"})
    return json.loads(json.dumps(store))  # as the store file holds it


def test_every_section_reports_what_its_page_section_shows(toy_store) -> None:
    s = toy_store
    assert set(SECTIONS) <= set(s)
    # help: both commands answer without importing torch (they read signatures only).
    assert s["help"]["imports_torch"] == {"cmkd --help": False, "cmkd train --help": False}
    assert {"python (bare start-up)", "cmkd train --help"} <= set(s["help"]["seconds"])
    # runloop: every variant against the plain loop of its repeat; the commands fit alike.
    fit = s["runloop"]
    assert list(fit["in_process"])[0] == "plain PyTorch loop" and len(fit["in_process"]) == 6
    assert fit["in_process"]["plain PyTorch loop"]["ratio"]["median"] == 1.0
    assert fit["in_process"]["cmkd (defaults)"]["epochs_per_lightning_epoch"] == 1
    assert (
        fit["in_process"]["cmkd, validate and checkpoint every 20 epochs"][
            "epochs_per_lightning_epoch"
        ]
        == 20
    )
    commands = fit["commands"]
    assert set(commands) == {"plain PyTorch script", "cmkd train"}
    assert all(0 <= e["test_acc"] <= 1 and e["ratio"]["n"] == 1 for e in commands.values())
    # loops: cmkd's defaults for the network and fp32 are measured, as found and under load,
    # both methods (a small CNN: bf16 where this CPU has it, channels-last, fused Adam).
    lo = s["loops"]
    auto = resolve_precision("auto", "cpu")
    assert set(lo["conditions"]) == {"+0 busy", "+1 busy"}
    for c in lo["conditions"].values():
        assert len(c["rows"]) == 2
        for row in c["rows"].values():
            default = f"{auto} channels-last matmul-weight-grad fused-adam"
            assert row["default_variant"] == default
            assert set(row["speedup"]) == {"32-true", default}
        # The student-alone floors (fp32, at cmkd's defaults) are timed once per backbone,
        # with plain KD.
        for key in ("student_alone_epoch_s", "student_alone_defaults_epoch_s"):
            floors = {name: row[key] for name, row in c["rows"].items()}
            assert floors["small_cnn SemBridge (KD + SKA)"] is None
            assert floors["small_cnn plain KD"] > 0
    assert s["overhead"]["sembridge"]["amortised_epoch_ratio_vs_kd"] > 0
    steps = s["ska"]["steps"][0]
    assert steps["feature_map"] == [128, 4, 4] and set(steps["arms"]) == set(TINY_SKA)
    # The second scenario steps as cmkd's fit does here; SKA alone is timed in fp32 only.
    fp32, defaults = s["ska"]["steps"]
    assert (fp32["precision"], fp32["at_defaults"], defaults["at_defaults"]) == (
        "32-true",
        False,
        True,
    )
    assert defaults["precision"].split(" ")[0] == resolve_precision("auto", "cpu")
    assert len(s["ska"]["ska_alone"]) == 1
    assert set(s["ska"]["epoch"]["ratio"]) == {"grid", f"grid, every {SHIPPED_SKA['every']}"}
    pair = s["precision"]["pairs"]["small_cnn -> small_cnn"]
    assert pair["fp32"]["vs_fp32"]["median"] == 1.0 and "bf16 channels-last" in pair
    assert pair["bf16 channels-last matmul-weight-grad"]["vs_fp32"]["median"] > 0
    # precision by source: auto's rule beside each measured ratio (a CNN yes, a small MLP no)
    by_source = s["precision"]["sources"]
    assert by_source["fsdd"]["input_shape"] == [1, 32, 48] and by_source["fsdd"]["bf16_served"]
    assert by_source["fsdd"]["auto_picks_bf16"] and not by_source["mfeat"]["auto_picks_bf16"]
    assert all(e["bf16_vs_fp32"]["n"] == 2 and e["fp32_seconds"]["median"] > 0
               for e in by_source.values())  # fmt: skip
    # weight_grad: resnet18's 20 convolutions; at a 32 x 32 input the last stage's maps are
    # 1 x 1, where the rule takes the product in both dtypes; the stem stays with oneDNN.
    wg = s["weight_grad"]
    assert sum(r["count"]["resnet18"] for r in wg["shapes"].values()) == 20
    stem, *rows = wg["shapes"].values()
    assert not stem["fp32"]["rule_takes_product"] and not stem["bf16"]["rule_takes_product"]
    last = next(r for r in rows if r["input"] == [512, 1, 1] and r["kernel"] == [3, 3])
    assert last["fp32"]["rule_takes_product"] and last["bf16"]["rule_takes_product"]
    assert all(t["native_ms"] > 0 and t["rule_ms"] > 0 for t in wg["totals"]["resnet18"].values())
    assert set(wg["gradient_difference"]["resnet18"]) == {
        "fp32 product vs torch",
        "bf16 product vs torch",
        "bf16 torch vs fp32 torch",
    }
    # optimizer: both layouts timed; the fused step is the loop's update to float rounding
    opt = s["optimizer"]
    assert set(opt["layouts"]) == {"standard", "channels-last"} and opt["parameters"] > 0
    assert all(v["loop_ms"] > 0 and v["fused_ms"] > 0 for v in opt["layouts"].values())
    assert 0 <= opt["max_difference"] < 1e-5
    assert set(s["threads"]["conditions"]) == {"+0 busy, default", "+0 busy, PASSIVE"}
    ckpt = s["checkpoints"]["students"]["small_cnn"]
    # cmkd 0.1 kept the teacher's weights in last.ckpt; now it is referenced by path.
    assert ckpt["now"]["last_mb"] < ckpt["before"]["last_mb"]
    assert s["dynm"]["speedup"] > 0 and s["coral"]["speedup"] > 0
    assert s["data"]["rgb"]["samples"] == 8
    assert [r["seed"] for r in s["ddp"]["runs"]["2 DDP processes"]] == [0]


def test_the_page_shows_every_section_in_order_and_renders_again_from_its_store(
    toy_store, tmp_path
) -> None:
    page = publish(tmp_path / "performance.md", toy_store, render)
    text = page.read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["The issues' aims", *(title for title, _, _ in SECTIONS.values())]
    assert "Sections not in this store" not in text
    # each measured section says the load it ran under (the two accuracy checks come from grids)
    ran = text.count("load average (1 min) 1.00 at its start, 1.50 at its end")
    assert ran == len(MEASURED) == len(SECTIONS) - 2
    verdicts = re.findall(r"\| (met|\*\*not met\*\*|not measured) \|$", text, re.M)
    assert verdicts and "not measured" not in verdicts  # every aim has its numbers
    # the loops verdicts show both floors beside the ratios they bound
    sembridge = next(line for line in text.splitlines() if "SemBridge (KD + SKA) epoch at" in line)
    assert re.search(r"\(student alone x[\d.]+, at cmkd's defaults x[\d.]+\)", sembridge)
    # `cmkd report` renders the same page from the store alone
    page.unlink()
    assert main(["report", str(store_path(page)), "--plots", "false"]) == 0
    assert page.read_text() == text


def test_perf_runs_the_chosen_sections_and_records_the_load_of_each(data_root, tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        report = perf(sections=("help",), repeats=1, page=tmp_path / "p.md", runs_dir=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert set(report["ran"]) == {"help"} and report["ran"]["help"]["minutes"] > 0
    assert len(report["ran"]["help"]["load"]) == 2
    text = (tmp_path / "p.md").read_text()
    assert "## Start-up: `cmkd --help`" in text and "## Checkpoint costs" not in text
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "perf"


def _precision_grid_store() -> dict[str, Any]:
    """A grid's compact store as configs/bench/precision.yaml writes it: pairs fp32 and bf16,
    one scenario, teacher, no-KD and KD cells; seed 2 has not finished its bf16 KD."""
    archs = [
        {"name": "fp32", "teacher": "small_cnn", "student": "small_cnn", "precision": "32-true"},
        {"name": "bf16", "teacher": "small_cnn", "student": "small_cnn", "precision": "bf16-mixed"},
    ]
    info = {
        "scenarios": {"s": {}},
        "methods": {"s": ["KD"]},
        "architectures": archs,
        "precision": "32-true",
        "seeds": [0, 1, 2],
        "architecture_contrasts": {"bf16 - fp32": ["bf16", "fp32"]},
    }
    acc = {  # (group, method) -> accuracy per seed
        ("teacher-small_cnn", "teacher"): [0.90, 0.80, 0.85],
        ("student-small_cnn", "student, no KD"): [0.70, 0.60, 0.65],
        ("fp32", "KD"): [0.74, 0.62, 0.66],
        ("teacher-small_cnn@bf16-mixed", "teacher"): [0.91, 0.80, 0.85],
        ("student-small_cnn@bf16-mixed", "student, no KD"): [0.70, 0.58, 0.65],
        ("bf16", "KD"): [0.75, 0.63],
    }
    cells = [
        {"scenario": "s", "group": g, "method": m, "seed": seed,
         "result": {"best": {"test": {"acc": a}}, "last": {"test": {"acc": a}}}}
        for (g, m), values in acc.items()
        for seed, a in enumerate(values)
    ]  # fmt: skip
    return {"kind": "grid", "info": info, "cells": cells}


def test_the_bf16_check_pairs_every_model_of_a_seed_at_both_precisions(tmp_path) -> None:
    from cmkd.bench.perf.accuracy import bf16_accuracy

    grid = tmp_path / "precision.json"
    grid.write_text(json.dumps(_precision_grid_store()))
    got = bf16_accuracy(grid)
    assert got["seeds"] == [0, 1] and got["models"] == 3  # seed 2 lacks a bf16 KD cell
    assert got["pairs"] == ["bf16", "fp32"]
    assert got["bf16"] == pytest.approx([(0.91 + 0.70 + 0.75) / 3, (0.80 + 0.58 + 0.63) / 3])
    assert got["fp32"] == pytest.approx([(0.90 + 0.70 + 0.74) / 3, (0.80 + 0.60 + 0.62) / 3])


HELP = {"seconds": {}, "imports_torch": {}, "repeats": 1, "load": [1.0]}


def test_perf_adds_the_bf16_check_and_keeps_the_sections_it_does_not_measure(tmp_path) -> None:
    grid, page = tmp_path / "precision.json", tmp_path / "perf.md"
    grid.write_text(json.dumps(_precision_grid_store()))
    earlier = {"kind": "perf", "command": "cmkd bench perf --page perf.md", "finished": "then",
               "machine": _machine(), "ran": {"help": {"load": [1.0, 1.5], "minutes": 0.1}},
               "help": HELP}  # fmt: skip
    publish(page, earlier, lambda store, _: "")
    report = perf(sections=(), page=page, runs_dir=str(tmp_path), accuracy_grid=grid)
    assert report["help"] == HELP and report["bf16_accuracy"]["seeds"] == [0, 1]
    assert report["ran"]["help"]["command"] == "cmkd bench perf --page perf.md"
    text = page.read_text()
    assert "Measured by an earlier run: `cmkd bench perf --page perf.md` (then)" in text
    assert "## Accuracy: bf16 against fp32" in text
    earlier["machine"] = {**earlier["machine"], "cpu_model": "another CPU"}
    publish(page, earlier, lambda store, _: "")
    with pytest.raises(CmkdError, match="measured on another machine"):
        perf(sections=(), page=page, runs_dir=str(tmp_path))


def test_the_ska_every_check_pairs_both_rows_over_every_scenario(tmp_path) -> None:
    from cmkd.bench.perf.accuracy import ska_every_accuracy

    rows = ["KD + SemBridge, SKA every 5", "KD + SemBridge"]
    info = {
        "scenarios": {"a": {}, "b": {}},
        "methods": {"a": rows, "b": rows},
        "architectures": [{"name": "S/S", "teacher": "small_cnn", "student": "small_cnn"}],
        "seeds": [0, 1],
        "contrasts": {"every 5 - every step": rows},
    }
    acc = {  # (scenario, row) -> accuracy per seed; seed 1 of b has no every-5 cell yet
        ("a", rows[0]): [0.80, 0.70],
        ("a", rows[1]): [0.78, 0.71],
        ("b", rows[0]): [0.60],
        ("b", rows[1]): [0.64, 0.50],
    }
    cells = [
        {"scenario": sc, "group": "S/S", "method": m, "seed": seed,
         "result": {"best": {"test": {"acc": a}}}}
        for (sc, m), values in acc.items()
        for seed, a in enumerate(values)
    ]  # fmt: skip
    grid = tmp_path / "ska-every.json"
    grid.write_text(json.dumps({"kind": "grid", "info": info, "cells": cells}))
    got = ska_every_accuracy(grid)
    assert got["seeds"] == [0] and got["rows"] == rows and got["scenarios"] == ["a", "b"]
    assert got["approx"] == pytest.approx([(0.80 + 0.60) / 2])
    assert got["exact"] == pytest.approx([(0.78 + 0.64) / 2])
    info["contrasts"] = {}
    grid.write_text(json.dumps({"kind": "grid", "info": info, "cells": cells}))
    with pytest.raises(CmkdError, match="contrasts"):
        ska_every_accuracy(grid)
