"""The `cmkd bench ...`, `cmkd report` and `cmkd demo` commands: the CLI's one door into the
benchmark code. Light on purpose (only the standard library and cmkd.config at module level):
`cmkd --help` and every core command import it, so torch, Lightning and the benchmark modules
wait inside the functions.

Their signatures and docstrings are the CLI's help (jsonargparse reads them). Every page
writer writes its page into its run folder unless `--page PATH` says where (e.g. a committed
page under benchmarks/); the page's head shows the command that wrote it, built here from the
arguments that differ from their defaults.
"""

from __future__ import annotations

import inspect
import json
import shlex
from collections.abc import Callable
from typing import Any

from cmkd.config import DistillConfig, TermConfig

# The loss zoo's configs, relative to the folder the command runs in (a checkout); the same
# as cmkd.bench.losses.LOSS_CONFIGS, repeated here to keep this module light.
LOSS_CONFIGS = "configs/eurosat_paired/losses"


def command_line(
    words: str,
    fn: Callable,
    given: dict[str, Any],
    positional: tuple[str, ...] = (),
    always: tuple[str, ...] = (),
) -> str:
    """`cmkd WORDS`, then the `positional` values, then `--name value` for every argument of
    `given` that differs from its default in `fn`'s signature (or is in `always`)."""
    defaults = inspect.signature(fn).parameters
    parts = [f"cmkd {words}", *(shlex.quote(str(given[n])) for n in positional)]
    for name, value in given.items():
        if name in positional or (value == defaults[name].default and name not in always):
            continue
        parts.append(f"--{name} {_value(value)}")
    return " ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):  # YAML flow style, names unquoted
        plain = list(value) if not isinstance(value, dict) else value
        return "'" + json.dumps(plain).replace('"', "") + "'"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return shlex.quote(str(value))


def bench_grid(
    grid: str,
    output_dir: str | None = None,
    fresh: bool = False,
    report: bool = True,
    page: str | None = None,
    plots: bool = True,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    matcher_epochs: int | None = None,
    plan: bool = False,
) -> None:
    """Run a benchmark grid cell by cell; cells already in its results store with the same
    config are reused, so an interrupted grid continues where it stopped. Then write its page
    (`cmkd report`). Several workers may run one grid at once (the same command started again,
    one per core, with one torch thread each): each cell is trained by one of them, and the
    last to finish writes the complete page.

    Args:
        grid: Grid YAML (configs/bench/*.yaml).
        output_dir: Results store and runs (default runs/bench/<grid name>).
        fresh: Drop the stored cells and rerun everything (never while other workers run).
        report: Write the page, its compact store and its plots afterwards.
        page: The page (default <output_dir>/<grid name>.md; its store <name>.json and its
            plots <name>/ beside it), e.g. benchmarks/<grid name>.md.
        plots: Also draw the plots (false: the page alone, the same text, much faster).
        seeds: Run only these seeds (no extra seeds), e.g. [0] for a quick look at a grid.
        epochs: Train every model this many epochs instead of the grid's.
        matcher_epochs: Train SSM matchers this many epochs instead of the grid's.
        plan: Print the cells a run would train (per scenario and method, with the time the
            stored cells of each took) and the cells it would reuse; run and write nothing.
    """
    command = command_line("bench grid", bench_grid, dict(locals()), positional=("grid",))
    from cmkd.bench.grid import run_grid

    budget = {"seeds": seeds, "epochs": epochs, "matcher_epochs": matcher_epochs}
    page_path = run_grid(grid, output_dir, fresh, report, page, plots, command, budget, plan)
    if page_path is not None:
        print(f"Saved {page_path}")


def report(source: str, page: str | None = None, plots: bool = True) -> None:
    """Write a benchmark page from its store: a grid's results store (tables, summaries,
    plots; a grid still running is reported as far as it got), or any page again from the
    compact store beside it, e.g. in a fresh clone.

    Args:
        source: A grid's output folder (runs/bench/<name>, holding grid.json and cells/), or a
            page (.md) or its store (.json) to render again.
        page: The page (default <source>/<grid name>.md for a grid folder, else the page of
            the store); its store and plots go beside it.
        plots: Also draw the plots (false: the page alone, the same text, much faster). Plots
            that need the run folders are kept as they are where those are gone.
    """
    from cmkd.bench.pages import report as write

    print(f"Saved {write(source, page, plots)}")


def demo(
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 50,
    output_dir: str = "runs/demo",
    page: str | None = None,
) -> None:
    """EuroSAT paired MS -> RGB on the 369 twin patches: MS teacher, RGB student without and
    with KD, over seeds; prints the test-accuracy table and saves it in output_dir.

    Args:
        seeds: One split, teacher and pair of students per seed.
        epochs: Epochs of every training.
        output_dir: Where the runs and the page (results.md, its store results.json) go.
        page: The page, if not output_dir/results.md.
    """
    command = command_line("demo", demo, dict(locals()))
    from cmkd.bench.compare import compare_students

    kd = DistillConfig(ce_weight=0.5, terms=[TermConfig("kd", 0.5, {"temperature": 4.0})])
    compare_students(
        {"student, KD": kd},
        seeds,
        epochs,
        output_dir,
        page=page,
        heading="Demo: EuroSAT paired MS -> RGB, without and with KD",
        command=command,
    )


def discomkd(
    scenario: str = "mfeat2",
    seeds: list[int] | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    methods: list[str] = ["kd", "dkd", "mlkd", "ctkd"],  # noqa: B006
    teachers: list[str] = ["other", "fused"],  # noqa: B006
    output_dir: str = "runs/bench/discomkd",
    page: str | None = None,
    threads: int = 1,
    configs: str = LOSS_CONFIGS,
) -> None:
    """DisCoM-KD against single-modality training and KD, DKD, MLKD, CTKD (each without and
    with LSKD) from a teacher of another modality and from a multi-modal teacher; writes
    output_dir/<scenario>/results.json, adds the scenario to the page's store and renders the
    page from every scenario stored there.

    Args:
        scenario: mfeat2, mfeat6, eurosat or digits.
        seeds: Default 5 seeds on mfeat, 3 elsewhere.
        epochs: Epochs of every model (same budget for all).
        lr: Adam learning rate of every model.
        methods: Logit baselines among kd, dkd, mlkd, ctkd (each also with LSKD).
        teachers: other (single-modality teacher of another modality) and/or fused (early-fusion
            multi-modal teacher, only where the modalities are views of the same samples).
        output_dir: Where the runs and results go.
        page: The page (default <output_dir>/discomkd.md; its store beside it), e.g.
            benchmarks/discomkd.md.
        threads: torch CPU threads (1 avoids oversubscribing a shared machine with tiny models).
        configs: Folder of the loss zoo's configs (kd.yaml, dkd.yaml, ...), relative to the
            current folder.
    """
    given = dict(locals())
    from cmkd.bench.discomkd.run import run_discomkd

    if seeds is None:
        given["seeds"] = [0, 1, 2, 3, 4] if "mfeat" in scenario else [0, 1, 2]
    always = ("scenario", "seeds", "epochs", "lr", "methods", "teachers")
    command = command_line("bench discomkd", discomkd, given, always=always)
    run_discomkd(**{**given, "command": command})


def teacher_cache(
    teacher_backbone: str = "resnet34",
    student_backbone: str = "small_cnn",
    epochs: int = 5,
    repeats: int = 3,
    seed: int = 0,
    output_dir: str = "runs/bench/teacher-cache",
    page: str | None = None,
) -> None:
    """Time paired KD (EuroSAT MS -> RGB twins) with the frozen teacher's outputs cached once
    versus recomputed every step; prints median fit times and their ratio.

    Args:
        teacher_backbone: The MS teacher (trained 1 epoch: only its cost matters here).
        student_backbone: The RGB student.
        epochs: Distillation epochs per timed run.
        repeats: Timed runs per variant, interleaved; medians are reported.
        seed: Split and initialisation seed.
        output_dir: Where the runs and the page (results.md, its store results.json) go.
        page: The page, if not output_dir/results.md.
    """
    given = dict(locals())
    from cmkd.bench.teacher_cache import teacher_cache as run

    run(**given, command=command_line("bench teacher-cache", teacher_cache, given))


def perf(
    sections: list[str] | None = None,
    epochs: int = 5,
    repeats: int = 3,
    page: str | None = None,
    runs_dir: str = "runs/bench/perf",
    threads: int = 1,
    large_backbone: str = "resnet18",
    accuracy_grid: str | None = None,
    every_grid: str | None = None,
    keep: bool = True,
) -> None:
    """Time cmkd against same-process baselines; one page with the issues' aims and verdicts.

    The baselines: plain PyTorch, the reference codes' loops, the no-KD student, per-sample
    matchers, ... The Markdown page (and its store, the .json beside it) gives the ratios, each
    aim's verdict, the machine and the load each section ran under.

    Args:
        sections: Run in the order given (the page is rewritten after each), any of, in page
            order: help (`cmkd --help` start-up), runloop (a 1,000-step linear fit against a
            plain PyTorch loop, in process and as commands), loops (cmkd's distillation epoch
            against the reference codes' loop, as found and under load), overhead (each
            method's epoch against no KD), overhead_large (the same at `large_backbone`), ska
            (SemBridge's step against KD's), precision (fp32 against bf16 and channels-last),
            weight_grad (each resnet convolution's backward, oneDNN against the weight
            gradient as one matrix product), optimizer (Adam's step, torch's loop against its
            fused kernel), threads (1, 2, auto threads under load),
            checkpoints, dynm, coral, data, ddp (accuracy of 2 DDP processes against 1).
            Default: all.
        epochs: Epochs per timed distillation run (>= 3).
        repeats: Interleaved repeats of every timing (medians are reported).
        page: The page (default <runs_dir>/performance.md; the raw numbers go beside it, same
            name with .json), e.g. benchmarks/performance.md.
        runs_dir: Where the timed runs' folders go.
        threads: torch intra-op threads (torch.set_num_threads). 1 by default: on a shared,
            oversubscribed machine several threads per op spin against each other and times
            swing by 10x or more.
        large_backbone: Student and teacher backbone of the overhead_large section.
        accuracy_grid: A grid that trains the same models at bf16 and fp32 (its page, store or
            results folder; configs/bench/precision.yaml), read into the bf16 accuracy check.
            `--sections '[]' --accuracy_grid benchmarks/precision.md` adds only that check.
        every_grid: A grid contrasting SemBridge with SKA on every k-th step against every step
            (configs/bench/ska-every.yaml; its first contrast), read into the SKA every-k
            accuracy check.
        keep: Keep the page's stored sections that this run does not measure (each names the
            run that measured it); refused where the page was measured on another machine.
    """
    given = dict(locals())
    from cmkd.bench.perf.run import SECTIONS
    from cmkd.bench.perf.run import perf as run

    command = command_line("bench perf", perf, given)
    chosen = SECTIONS if sections is None else tuple(sections)
    run(**{**given, "sections": chosen, "command": command})


def losses(
    configs: str = LOSS_CONFIGS,
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 50,
    backbone: str = "small_cnn",
    output_dir: str = "runs/bench/losses",
    page: str | None = None,
) -> None:
    """Every distillation config against the no-KD student on the EuroSAT paired twins, with
    the same teacher, split, backbone and budget per seed (see cmkd.bench.compare).

    Args:
        configs: Folder of distill YAML files (*.yaml), relative to the current folder; only
            their `distill` section (terms, ce_weight) is used, so every method gets the same
            budget.
        seeds: One split and one teacher per seed.
        epochs: Epochs of every training.
        backbone: Teacher and students.
        output_dir: Where the runs and the page (results.md, its store results.json) go.
        page: The page, if not output_dir/results.md (e.g. benchmarks/losses-eurosat-paired.md).
    """
    given = dict(locals())
    from cmkd.bench.losses import loss_grid

    loss_grid(**given, command=command_line("bench losses", losses, given))


def sembridge(
    scenario: str = "eurosat_ms_to_rgb",
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    epochs: int = 30,
    matcher_epochs: int = 30,
    rgb_per_class: int | None = 300,
    backbone: str = "small_cnn",
    output_dir: str | None = None,
    page: str | None = None,
) -> None:
    """SemBridge against its baselines on an asymmetric scenario (teacher and student share
    only labels): no KD, KD with class-random pairs, KD with matched pairs (SSM, or the
    teacher's embedding space when only the student can be mapped into the teacher's modality,
    or fixed class-random pairs where no pseudo-view exists), and SemBridge + KD (matched pairs,
    DynM re-matching, SKA). Every KD uses the SemBridge paper's weights (0.3 CE + 0.4 KD at
    T = 3 without T^2) so the rows differ only in pairing and alignment.

    Args:
        scenario: eurosat_ms_to_rgb, eurosat_rgb_to_ms, fsdd_to_mnist or mnist_to_fsdd.
        seeds: One split, teacher and matcher per seed.
        epochs: Epochs of every teacher and student.
        matcher_epochs: Epochs of the SSM matcher.
        rgb_per_class: Unpaired RGB patches per class in the EuroSAT scenarios (None: all
            26,631, for a stronger RGB teacher or a bigger RGB student set).
        backbone: Teacher, students and matcher encoders (resnet34 for the paper's R/R pair).
        output_dir: Default runs/bench/sembridge-<scenario>; the page results.md (its store
            results.json) goes there.
        page: The page, if not output_dir/results.md.
    """
    given = dict(locals())
    from cmkd.bench.sembridge import sembridge_grid

    sembridge_grid(**given, command=command_line("bench sembridge", sembridge, given))


def softcmkd(
    scenarios: list[str] = ["eurosat_paired", "fsdd_to_mnist", "mnist_to_fsdd"],  # noqa: B006
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    scenario_seeds: dict[str, int] | None = None,
    epochs: int = 15,
    fraction: float = 0.3,
    quality_source: str = "confidence",
    backbone: str = "small_cnn",
    conditions: list[str] = ["clean", "corrupted"],  # noqa: B006
    output_dir: str = "runs/bench/softcmkd",
    page: str | None = None,
    command: str | None = None,
) -> None:
    """Soft-constrained CMKD against no KD and the hard L2 ablation, clean and with a share of
    the teacher's inputs corrupted; writes the page and a weight plot beside it.

    Args:
        scenarios: fsdd_to_mnist, mnist_to_fsdd, eurosat_paired, eurosat_ms_to_rgb,
            eurosat_rgb_to_ms (see cmkd.bench.scenarios.SCENARIOS).
        seeds: One split, teacher and student set per seed.
        scenario_seeds: Seeds 0..N-1 instead of `seeds` for the scenarios named, e.g.
            '{eurosat_paired: 65}' where a comparison needs more seeds for a narrow interval.
        epochs: Epochs of every teacher and student.
        fraction: Share of the teacher's training inputs corrupted in the corrupted condition.
        quality_source: confidence, norm or dropout, for the "+ quality weights" row.
        backbone: Teacher and student backbone.
        conditions: clean and/or corrupted.
        output_dir: Runs and per-scenario results.
        page: The page (default <output_dir>/softcmkd.md; its store beside it, the plot
            <name>-weights.png too), e.g. benchmarks/softcmkd.md.
        command: The command line written at the top of the page (default: rebuilt from the
            arguments that differ from their defaults).
    """
    given = dict(locals())
    given.pop("command")
    from cmkd.bench.softcmkd import softcmkd_grid

    command = command or command_line("bench softcmkd", softcmkd, given)
    softcmkd_grid(**{**given, "command": command})


BENCH_COMMANDS: dict[str, Any] = {
    "bench": {
        "grid": bench_grid,
        "discomkd": discomkd,
        "teacher-cache": teacher_cache,
        "perf": perf,
        "losses": losses,
        "sembridge": sembridge,
        "softcmkd": softcmkd,
    }
}
