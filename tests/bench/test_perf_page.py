"""The perf page's aims: each verdict follows the store's numbers across the aim's bound
(never written by hand), an aim without its section reads "not measured", and the page names
the sections a store lacks."""

from __future__ import annotations

from cmkd.bench.perf.aims import aims
from cmkd.bench.perf.page import SECTIONS, render
from cmkd.bench.perf.run import SECTIONS as MEASURED


def _s(x: float) -> dict[str, float]:
    return {"median": x, "min": x, "max": x, "n": 1}


def _verdicts(report: dict) -> dict[str, str]:
    """{aim text: verdict} (aims are unique per row)."""
    return {row[1]: row[3] for row in aims(report)}


def _find(verdicts: dict[str, str], *words: str) -> str:
    found = [v for aim, v in verdicts.items() if all(w in aim for w in words)]
    assert len(found) == 1, (words, list(verdicts))
    return found[0]


def _loops(sembridge: dict[str, float], kd: dict[str, float]) -> dict:
    """A loops entry at small_cnn: speedups per condition at cmkd's defaults for it (fp32,
    channels-last) and a slow plain fp32 that the verdict must not read."""

    def row(method: str, x: float) -> dict:
        default = "32-true channels-last"
        speedup = {default: x, "32-true": 0.5}
        return {"backbone": "small_cnn", "method": method, "speedup": speedup,
                "default_variant": default}  # fmt: skip

    return {
        "auto_precision": "bf16-mixed",
        "conditions": {
            condition: {
                "rows": {
                    "small_cnn SemBridge (KD + SKA)": row(
                        "SemBridge (KD + SKA)", sembridge[condition]
                    ),
                    "small_cnn plain KD": row("plain KD", kd[condition]),
                }
            }
            for condition in sembridge
        },
    }


def test_every_verdict_follows_the_numbers_across_its_bound() -> None:
    report = {
        "help": {"seconds": {"cmkd --help": _s(1.9), "cmkd train --help": _s(2.1)}},
        "runloop": {
            "in_process": {"cmkd (defaults)": {"ratio": _s(2.9)}},
            "commands": {"cmkd train": {"ratio": _s(3.1)}},
        },
        # SemBridge >= 3x as found but not under load; plain KD >= 1.3x in both.
        "loops": _loops({"+0 busy": 3.5, "+2 busy": 2.9}, {"+0 busy": 1.4, "+2 busy": 1.31}),
        "overhead": {
            "student": "small_cnn",
            "methods": {"KD (teacher cache)": {"epoch_ratio": 1.12}},
            "sembridge": {"amortised_epoch_ratio_vs_kd": 1.09},
        },
        "overhead_large": {
            "student": "resnet18",
            "sembridge": {"amortised_epoch_ratio_vs_kd": 1.06},
        },
        "bf16_accuracy": {
            "seeds": [0, 1, 2],
            "fp32": [0.8, 0.7, 0.9],
            "bf16": [0.802, 0.7, 0.901],  # +0.2, 0, +0.1 points: [-0.15, +0.35]
        },
    }
    v = _verdicts(report)
    assert _find(v, "`cmkd --help`") == "met"
    assert _find(v, "`cmkd train --help`") == "**not met**"
    assert _find(v, "linear fit", "in process") == "met"
    assert _find(v, "linear fit", "as commands") == "**not met**"
    assert _find(v, "SemBridge (KD + SKA) epoch", "small_cnn") == "**not met**"
    assert _find(v, "plain KD epoch", "small_cnn") == "met"
    assert _find(v, "SemBridge epoch <= 1.10x", "small_cnn") == "met"
    assert _find(v, "SemBridge epoch <= 1.05x", "resnet18") == "**not met**"
    assert _find(v, "KD (teacher cache) epoch") == "**not met**"
    assert _find(v, "bf16-mixed costs no accuracy") == "met"
    # Across the bound the other way: every verdict turns.
    report["help"]["seconds"] = {"cmkd --help": _s(2.0), "cmkd train --help": _s(0.5)}
    report["runloop"]["in_process"]["cmkd (defaults)"]["ratio"] = _s(3.01)
    report["runloop"]["commands"]["cmkd train"]["ratio"] = _s(3.0)
    report["loops"] = _loops({"+0 busy": 3.0, "+2 busy": 4.0}, {"+0 busy": 1.29, "+2 busy": 2.0})
    report["overhead"]["sembridge"]["amortised_epoch_ratio_vs_kd"] = 1.11
    report["overhead"]["methods"]["KD (teacher cache)"]["epoch_ratio"] = 1.10
    report["overhead_large"]["sembridge"]["amortised_epoch_ratio_vs_kd"] = 1.05
    report["bf16_accuracy"]["bf16"] = [0.7, 0.58, 0.8]  # 10-12 points lower
    v = _verdicts(report)
    assert _find(v, "`cmkd --help`") == "**not met**"
    assert _find(v, "`cmkd train --help`") == "met"
    assert _find(v, "linear fit", "in process") == "**not met**"
    assert _find(v, "linear fit", "as commands") == "met"
    assert _find(v, "SemBridge (KD + SKA) epoch", "small_cnn") == "met"
    assert _find(v, "plain KD epoch", "small_cnn") == "**not met**"
    assert _find(v, "SemBridge epoch <= 1.10x", "small_cnn") == "**not met**"
    assert _find(v, "SemBridge epoch <= 1.05x", "resnet18") == "met"
    assert _find(v, "KD (teacher cache) epoch") == "met"
    assert _find(v, "bf16-mixed costs no accuracy") == "**not met**"
    report["bf16_accuracy"]["bf16"] = [0.9, 0.8, 1.0]  # 10 points higher: not within +-1 either
    assert _find(_verdicts(report), "bf16-mixed costs no accuracy") == "**not met**"


def test_the_ska_every_check_is_met_only_within_one_point() -> None:
    close = {"ska_every_accuracy": {"seeds": [0, 1, 2], "exact": [0.8, 0.7, 0.9],
                                    "approx": [0.802, 0.7, 0.901]}}  # fmt: skip
    assert _find(_verdicts(close), "SKA on every k-th step") == "met"
    close["ska_every_accuracy"]["approx"] = [0.78, 0.66, 0.9]  # 0 to 4 points lower
    assert _find(_verdicts(close), "SKA on every k-th step") == "**not met**"


def test_aims_without_their_sections_are_not_measured() -> None:
    rows = aims({})
    assert rows and all(row[3] == "not measured" for row in rows)
    one_seed = {"bf16_accuracy": {"seeds": [0], "fp32": [0.8], "bf16": [0.8]}}
    assert _find(_verdicts(one_seed), "bf16-mixed") == "not measured"  # no interval from 1 seed


def test_the_page_names_the_sections_a_store_lacks_and_runs_them_in_page_order() -> None:
    # Every measured section has its place on the page, in the same order.
    assert [k for k in SECTIONS if k in MEASURED] == list(MEASURED)
    machine = {"cpus": 2, "cpu_model": "cpu", "torch": "2", "torch_threads": 1,
               "python": "3", "platform": "linux", "load_average": [1.0, 1.0, 1.0]}  # fmt: skip
    report = {"command": "cmkd bench perf", "finished": "now", "minutes": 1.0,
              "machine": machine, "load_average_end": [1.0, 1.0, 1.0]}  # fmt: skip
    page = render(report)
    assert f"Sections not in this store: {', '.join(SECTIONS)}." in page
    assert page.count("| not measured |") == len(aims({}))


def test_the_step_row_under_a_sembridge_aim_times_the_ska_that_sembridge_ran() -> None:
    def arm(options: dict, ratio: float) -> dict:
        return {"options": options, "ratio": {"cpu": _s(ratio)}}

    every = {"dim": 256, "every": 10}
    report = {
        "overhead": {"student": "small_cnn", "sembridge": {"amortised_epoch_ratio_vs_kd": 1.08},
                     "sembridge_ska": every,
                     "methods": {"KD (teacher cache)": {"epoch_ratio": 1.0}}},
        "overhead_large": {"student": "resnet18",  # a store from before sembridge_ska
                           "sembridge": {"amortised_epoch_ratio_vs_kd": 1.02}},
        "ska": {"steps": [
            {"backbone": "small_cnn", "batch": 32, "precision": "32-true", "at_defaults": False,
             "arms": {"grid": arm({"dim": 256}, 1.5), "grid, every 10": arm(every, 1.06)}},
            {"backbone": "small_cnn", "batch": 32, "precision": "bf16-mixed", "at_defaults": True,
             "arms": {"grid": arm({"dim": 256}, 1.9), "grid, every 10": arm(every, 1.12)}},
            {"backbone": "resnet18", "batch": 32, "arms": {"grid": arm({"dim": 256}, 1.02)}},
        ]},
    }  # fmt: skip
    rows = {row[1]: (row[2], row[3]) for row in aims(report) if row[1].startswith("(the training")}
    # The small CNN's step at cmkd's defaults (as the epoch ran), not the fp32 one.
    assert rows == {
        "(the training step alone at bf16-mixed, CPU time: KD + SKA / KD, small_cnn, batch 32, "
        "SKA dim 256, every 10)": ("x1.120", "> 1.10"),
        "(the training step alone, CPU time: KD + SKA / KD, resnet18, batch 32, SKA dim 256)": (
            "x1.020",
            "<= 1.05",
        ),
    }
