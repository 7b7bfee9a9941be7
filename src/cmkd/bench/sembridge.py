"""`cmkd bench sembridge`: SemBridge against its baselines on an asymmetric scenario."""

from __future__ import annotations

from dataclasses import replace

from cmkd.bench.compare import compare_students
from cmkd.bench.scenarios import SCENARIOS, oracle, sembridge_plugin
from cmkd.config import DistillConfig, PairingConfig, TermConfig
from cmkd.errors import CmkdError


def sembridge_grid(
    *,
    scenario: str,
    seeds: list[int],
    epochs: int,
    matcher_epochs: int,
    rgb_per_class: int | None,
    backbone: str,
    output_dir: str | None,
    page: str | None,
    command: str,
) -> str:
    """SemBridge against its baselines on an asymmetric scenario (teacher and student share
    only labels): no KD, KD with class-random pairs, KD with matched pairs (SSM, or the
    teacher's embedding space when only the student can be mapped into the teacher's modality,
    or fixed class-random pairs where no pseudo-view exists), and SemBridge + KD (matched pairs,
    DynM re-matching, SKA). Every KD uses the SemBridge paper's weights (0.3 CE + 0.4 KD at
    T = 3 without T^2) so the rows differ only in pairing and alignment. Arguments and their
    defaults: `cmkd bench sembridge` (cmkd.bench.commands.sembridge)."""
    if scenario not in SCENARIOS or scenario == "eurosat_paired":
        raise CmkdError(
            f"unknown asymmetric scenario '{scenario}'; choose from "
            f"{sorted(set(SCENARIOS) - {'eurosat_paired'})}"
        )
    kd = DistillConfig(
        ce_weight=0.3, terms=[TermConfig("kd", 0.4, {"temperature": 3.0, "scale_by_t2": False})]
    )
    methods = {
        "KD, class-random pairs": replace(kd, pairing=PairingConfig("class_random")),
        "KD, matched pairs": replace(kd, pairing=PairingConfig("matched")),
        "SemBridge + KD": sembridge_plugin(kd, epochs),
    }
    sc = SCENARIOS[scenario]
    if sc.oracle_data is not None:
        methods["KD, oracle twins"] = oracle(kd, sc)
    side = "teacher_data" if sc.teacher_modality == "rgb" else "student_data"
    rgb = getattr(sc, side)
    if rgb.source == "eurosat_rgb":
        options = {**rgb.options, "per_class_limit": rgb_per_class}
        count = "all 26,631" if rgb_per_class is None else f"{10 * rgb_per_class:,}"
        title = sc.title.replace("3,000", count)
        sc = replace(sc, title=title, **{side: replace(rgb, options=options)})
    return compare_students(
        methods,
        seeds,
        epochs,
        output_dir or f"runs/bench/sembridge-{scenario}",
        scenario=sc,
        backbone=backbone,
        matcher_epochs=matcher_epochs,
        page=page,
        heading="SemBridge against its baselines",
        command=command,
    )
