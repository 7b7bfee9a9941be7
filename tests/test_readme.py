"""Every command and Python example of README.md runs here, end to end on real data at a tiny
budget, and the README cannot gain a command that no test runs.

Commands come from the README's ```bash blocks (every line starting with `cmkd`, or running
`-m cmkd.cli`, continuations joined, comments dropped). Each must be a key of `COVERED` (how
this file runs it: placeholders filled, budget options appended, the commands whose outputs it
reads run first); the guard test names any other. Commands run in
one workspace folder per test session, where `configs/` is the checkout's, so the README's
relative paths work as written. Python blocks run in order in one namespace (the second
continues the first), in a fresh folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmkd.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a markdown text, in order."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", text, flags=re.M | re.S)


def commands_in(text: str) -> list[str]:
    """Every cmkd command line of the ```bash blocks, as its words joined by single spaces."""
    found = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and (words[0] == "cmkd" or "cmkd.cli" in words):
                found.append(" ".join(words))
    return found


def test_command_parser_joins_continuations_and_drops_comments() -> None:
    text = (
        "```bash\nmake demo   # not ours\ncmkd train   --config a.yaml  # teacher\n"
        "cmkd match --x 1 \\\n  --y '{a: 1}' # pairs\n# cmkd commented out\n```\n"
        "```python\ncmkd_not_a_command()\n```\n"
        "```bash\ntorchrun --nproc_per_node 2 \\\n  -m cmkd.cli distill --config F\n```\n"
    )
    assert commands_in(text) == [
        "cmkd train --config a.yaml",
        "cmkd match --x 1 --y {a: 1}",
        "torchrun --nproc_per_node 2 -m cmkd.cli distill --config F",
    ]


@dataclass(frozen=True)
class Run:
    """How a README command runs here: `argv` (its placeholders filled in) with `budget`
    appended, after the README commands in `after` (whose outputs it reads). `parse_only`
    (the reason) for commands that need hardware a test machine lacks: the whole command line
    is parsed (`--print_config`), nothing runs. `subprocess` for commands that start processes
    of their own. `check(workspace, stdout)` asserts what the command must leave behind."""

    argv: str
    budget: str = ""
    after: tuple[str, ...] = ()
    parse_only: str = ""
    subprocess: bool = False
    check: Callable[[Path, str], None] | None = None


CPU = "--run.accelerator cpu --run.progress_bar false"
TINY = f"--optim.epochs 1 --model.options '{{widths: [8, 16]}}' {CPU}"

TEACHER = "cmkd train --config configs/eurosat_paired/teacher_ms.yaml"
STUDENT = "cmkd train --config configs/eurosat_paired/student_rgb.yaml"
DISTILL = "cmkd distill --config configs/eurosat_paired/losses/kd.yaml"
EVALUATE = (
    "cmkd evaluate --checkpoint runs/eurosat-kd-ms-to-rgb/seed0/checkpoints/best.ckpt --split test"
)
MATCH_SSM = (
    "cmkd match --modality rgb --teacher CKPT --data.source eurosat_rgb "
    "--pseudo_view eurosat_ms_to_rgb --output pairs.json"
)
FEW_UNPAIRED_RGB = "--data.options '{subset: unpaired, per_class_limit: 6}'"
MATCHER_BUDGET = f"--epochs 1 --backbone small_cnn --batch_size 32 {CPU}"


def _results(path: str, epochs: int = 1) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        results = json.loads((ws / path / "results.json").read_text())
        assert results["epochs"] == epochs and 0 <= results["best"]["test"]["acc"] <= 1
        assert "test acc" in out

    return check


def _pairs(path: str, method: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        from cmkd.pairing import PairList

        pairs = PairList.load(ws / path)
        assert pairs.method == method and len(pairs) > 0  # the --method given, not a default
        assert f"pair list ({method})" in out

    return check


def _evaluated(ws: Path, out: str) -> None:
    scores = json.loads(out)
    assert 0 <= scores["test/acc"] <= 1 and "test/f1" in scores


def _predicted(ws: Path, out: str) -> None:
    rows = list(csv.reader(open(ws / "predictions.csv")))
    assert rows[0][:3] == ["id", "label", "predicted"] and len(rows[0]) == 3 + 10
    assert len(rows) - 1 == 74  # the test split of the 369 twins (20 %, stratified)


def _listed(*names: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        listed = {line.split()[0] for line in out.splitlines() if line.strip()}
        assert set(names) <= listed, listed

    return check


def _parsed(*fields: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        assert all(f in out for f in fields), out

    return check


def _page(path: str, *texts: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        page = (ws / path).read_text()
        assert all(t in page for t in texts), page[:2000]
        assert f"Saved {path}" in out

    return check


def _same_as_committed(ws: Path, out: str) -> None:
    # tests/bench/test_pages.py checks every committed page; here: the README's command works
    assert (ws / "benchmarks/smoke.md").read_text() == (REPO / "benchmarks/smoke.md").read_text()


UCM_TEACHER = "cmkd train --config configs/ucmerced/teacher_rgb.yaml"
UCM_DISTILL = "cmkd distill --config configs/ucmerced/kd_to_eurosat_ms.yaml"
UCM_MATCH = (
    "cmkd match --modality ms --teacher runs/ucmerced-teacher-rgb/seed0 --data.source eurosat_ms "
    "--method teacher_embedding --pseudo_view eurosat_ms_to_rgb "
    "--class_map configs/class_maps/ucmerced_to_eurosat.yaml --output pairs-ucm.json"
)


def _over_the_map(ws: Path, out: str) -> None:
    import yaml

    run = ws / "runs/ucmerced-kd-to-eurosat-ms/seed0"
    results = json.loads((run / "results.json").read_text())
    # The saved config finds the map from any folder.
    saved = yaml.safe_load((run / "config.yaml").read_text())["distill"]["class_map"]
    assert Path(saved).is_absolute() and Path(saved).is_file()
    assert results["class_map"]["covered"] == [
        "Forest", "Highway", "Industrial", "Residential", "River",
    ]  # fmt: skip
    assert "test acc" in out


def _coverage(ws: Path, out: str) -> None:
    lines = out.splitlines()
    assert "uncovered" in next(line for line in lines if line.startswith("SeaLake "))
    assert "freeway, overpass" in next(line for line in lines if line.startswith("Highway "))


BUDGET_GRID = "--seeds '[0]' --epochs 1 --matcher_epochs 1 --plots false"
SMOKE = "cmkd bench grid configs/bench/smoke.yaml"


def _discomkd(ws: Path, out: str) -> None:
    run = ws / "runs" / "discomkd-mfeat2" / "seed0"
    assert (run / "students" / "fou.safetensors").is_file()
    assert (run / "students" / "zer.safetensors").is_file()
    assert "test acc" in out


COVERED: dict[str, Run] = {
    TEACHER: Run(TEACHER, TINY, check=_results("runs/eurosat-teacher-ms/seed0")),
    STUDENT: Run(STUDENT, TINY, check=_results("runs/eurosat-student-rgb/seed0")),
    DISTILL: Run(
        DISTILL, TINY, after=(TEACHER,), check=_results("runs/eurosat-kd-ms-to-rgb/seed0")
    ),
    EVALUATE: Run(EVALUATE, after=(DISTILL,), check=_evaluated),
    f"{TEACHER} --seed 1 --optim.epochs 80": Run(
        f"{TEACHER} --seed 1 --optim.epochs 80",
        TINY,
        check=_results("runs/eurosat-teacher-ms/seed1"),
    ),
    # `...` is the rest of the interrupted run's command line: the 1-epoch teacher, continued
    # to 2 epochs from its last.ckpt.
    "cmkd train ... --run.resume true": Run(
        f"{TEACHER} --run.resume true",
        TINY.replace("--optim.epochs 1", "--optim.epochs 2"),
        after=(TEACHER,),
        check=_results("runs/eurosat-teacher-ms/seed0", epochs=2),
    ),
    "cmkd losses": Run("cmkd losses", check=_listed("kd", "dkd", "ska", "fitnet")),
    MATCH_SSM: Run(
        MATCH_SSM.replace("CKPT", "runs/eurosat-teacher-ms/seed0"),
        f"{FEW_UNPAIRED_RGB} {MATCHER_BUDGET}",
        after=(TEACHER,),
        check=_pairs("pairs.json", "ssm"),
    ),
    "cmkd pairs show pairs.json": Run(
        "cmkd pairs show pairs.json", after=(MATCH_SSM,), check=_parsed("coverage:")
    ),
    "cmkd predict runs/eurosat-kd-ms-to-rgb/seed0 --output predictions.csv": Run(
        "cmkd predict runs/eurosat-kd-ms-to-rgb/seed0 --output predictions.csv",
        after=(DISTILL,),
        check=_predicted,
    ),
    UCM_TEACHER: Run(UCM_TEACHER, TINY, check=_results("runs/ucmerced-teacher-rgb/seed0")),
    UCM_DISTILL: Run(UCM_DISTILL, TINY, after=(UCM_TEACHER,), check=_over_the_map),
    UCM_MATCH: Run(
        UCM_MATCH, CPU, after=(UCM_TEACHER,), check=_pairs("pairs-ucm.json", "teacher_embedding")
    ),
    "cmkd pairs show pairs-ucm.json": Run(
        "cmkd pairs show pairs-ucm.json", after=(UCM_MATCH,), check=_coverage
    ),
    "cmkd pairings": Run("cmkd pairings", check=_listed("paired", "class_random", "matched")),
    "cmkd matchers": Run(
        "cmkd matchers", check=_listed("ssm", "teacher_embedding", "class_random")
    ),
    "cmkd discomkd --config configs/discomkd/mfeat2.yaml": Run(
        "cmkd discomkd --config configs/discomkd/mfeat2.yaml",
        f"--optim.epochs 1 {CPU}",
        check=_discomkd,
    ),
    "cmkd bench teacher-cache": Run(
        "cmkd bench teacher-cache",
        "--teacher_backbone small_cnn --epochs 1 --repeats 1",
        check=_page("runs/bench/teacher-cache/results.md", "cached"),
    ),
    "cmkd bench losses": Run(
        "cmkd bench losses",
        "--seeds '[0]' --epochs 1",
        check=_page("runs/bench/losses/results.md", "kd", "at", "student, no KD"),
    ),
    "cmkd bench sembridge --scenario eurosat_rgb_to_ms": Run(
        "cmkd bench sembridge --scenario eurosat_rgb_to_ms",
        "--seeds '[0]' --epochs 1 --matcher_epochs 1 --rgb_per_class 10",
        check=_page("runs/bench/sembridge-eurosat_rgb_to_ms/results.md", "SemBridge"),
    ),
    "cmkd bench discomkd --config configs/bench/discomkd/mfeat2.yaml": Run(
        "cmkd bench discomkd --config configs/bench/discomkd/mfeat2.yaml",
        "--seeds '[0]' --epochs 1 --methods '[kd]' --teachers '[other]'",
        check=_page("runs/bench/discomkd/discomkd.md", "DisCoM-KD"),
    ),
    SMOKE: Run(SMOKE, BUDGET_GRID, check=_page("runs/bench/smoke/smoke.md", "Benchmark: smoke")),
    f"{SMOKE} --plan true": Run(
        f"{SMOKE} --plan true",
        BUDGET_GRID,
        after=(SMOKE,),  # the same budget: every cell is stored
        check=_parsed("Plan for grid smoke", "0 cells to run", "stored cells reused"),
    ),
    "cmkd report runs/bench/smoke": Run(
        "cmkd report runs/bench/smoke",
        "--plots false",
        after=(SMOKE,),
        check=_page("runs/bench/smoke/smoke.md", "forest plot"),
    ),
    "cmkd report benchmarks/smoke.md": Run(
        "cmkd report benchmarks/smoke.md", "--plots false", check=_same_as_committed
    ),
    "cmkd distill --config FILE --run.devices 4 --run.strategy ddp": Run(
        "cmkd distill --config configs/eurosat_paired/losses/kd.yaml --run.devices 4 "
        "--run.strategy ddp",
        parse_only="4 GPUs",
        check=_parsed("devices: 4", "strategy: ddp"),
    ),
    "cmkd distill --config FILE --run.accelerator cpu --run.devices 2": Run(
        "cmkd distill --config configs/eurosat_paired/losses/kd.yaml --run.accelerator cpu "
        "--run.devices 2",
        "--optim.epochs 1 --model.options '{widths: [8, 16]}' --run.progress_bar false "
        "--run.name kd-ddp",
        after=(TEACHER,),
        subprocess=True,  # Lightning starts the second process by rerunning the command
        check=_results("runs/kd-ddp/seed0"),
    ),
    "torchrun --nnodes 2 --nproc_per_node 4 --node_rank N --master_addr HOST --master_port 29500 "
    "-m cmkd.cli distill --config FILE --run.devices 4 --run.num_nodes 2 --run.strategy ddp": Run(
        "cmkd distill --config configs/eurosat_paired/losses/kd.yaml --run.devices 4 "
        "--run.num_nodes 2 --run.strategy ddp",
        parse_only="2 machines with 4 GPUs each (torchrun)",
        check=_parsed("devices: 4", "num_nodes: 2"),
    ),
}

# Core commands beyond the README's lines: `cmkd match` with each built-in matcher (its
# --method once went missing on the way to the matcher).
EXTRA: dict[str, Run] = {
    "match class_random": Run(
        "cmkd match --modality rgb --teacher runs/eurosat-teacher-ms/seed0 "
        "--data.source eurosat_rgb --method class_random --output pairs-class-random.json",
        FEW_UNPAIRED_RGB,
        after=(TEACHER,),
        check=_pairs("pairs-class-random.json", "class_random"),
    ),
    # An RGB teacher (the README's no-KD student) and MS students: the student side goes
    # through the MS -> RGB pseudo-view into the teacher's embedding space.
    "match teacher_embedding": Run(
        "cmkd match --modality ms --teacher runs/eurosat-student-rgb/seed0 "
        "--data.source eurosat_paired --method teacher_embedding "
        "--pseudo_view eurosat_ms_to_rgb --output pairs-teacher-embedding.json",
        CPU,
        after=(STUDENT,),
        check=_pairs("pairs-teacher-embedding.json", "teacher_embedding"),
    ),
}


def readme_commands() -> list[str]:
    return commands_in(README.read_text())


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = readme_commands()
    assert TEACHER in commands  # the parser reads the README it is meant to read
    uncovered = [c for c in commands if c not in COVERED]
    assert not uncovered, (
        "README commands that no test runs (add each to COVERED in tests/test_readme.py):\n"
        + "\n".join(uncovered)
    )
    stale = [c for c in COVERED if c not in commands]
    assert not stale, "no longer in the README (remove from tests/test_readme.py):\n" + "\n".join(
        stale
    )


class Workspace:
    """One folder for the session's command runs; each command runs once, after its
    prerequisites, and its exit status, output and check are kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "configs").symlink_to(REPO / "configs")
        # A copy of one committed page with its store, for `cmkd report PAGE` to render again
        # (never the checkout's own files).
        (folder / "benchmarks").mkdir()
        for name in ("smoke.md", "smoke.json"):
            shutil.copy(REPO / "benchmarks" / name, folder / "benchmarks" / name)
        self.done: dict[str, tuple[int, str, str]] = {}

    def ensure(self, key: str, run: Run) -> tuple[int, str, str]:
        if key not in self.done:
            for before in run.after:
                code, _, err = self.ensure(before, COVERED[before])
                assert code == 0, f"prerequisite {before!r} failed:\n{err[-2000:]}"
            self.done[key] = self._execute(run)
        return self.done[key]

    def _execute(self, run: Run) -> tuple[int, str, str]:
        argv = [*shlex.split(run.argv), *shlex.split(run.budget)][1:]  # without "cmkd"
        if run.parse_only:
            argv.append("--print_config")
        if run.subprocess:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
            done = subprocess.run(
                [sys.executable, "-m", "cmkd.cli", *argv],
                cwd=self.folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            return done.returncode, done.stdout, done.stderr
        out, err = io.StringIO(), io.StringIO()
        previous = Path.cwd()
        os.chdir(self.folder)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exit_:  # --print_config and parse errors exit
                    code = exit_.code or 0
        finally:
            os.chdir(previous)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme-commands"))


def _test_id(key: str) -> str:
    return re.sub(r"[^\w./-]+", "_", key.removeprefix("cmkd "))[:90]


@pytest.mark.parametrize("key", list(COVERED) + list(EXTRA), ids=_test_id)
def test_command_runs(key: str, workspace: Workspace) -> None:
    run = COVERED.get(key) or EXTRA[key]
    code, out, err = workspace.ensure(key, run)
    assert code == 0, f"{run.argv} {run.budget}\nexit {code}\n{err[-3000:]}"
    if run.check is not None:
        run.check(workspace.folder, out)


def test_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root) -> None:
    blocks = fenced_blocks(README.read_text(), "python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    # The first example says it tests the teacher and the student, and predicts.
    printed = out.getvalue()
    assert "teacher (MS)" in printed and "student (RGB" in printed, printed
    probabilities = namespace["probabilities"]
    rows = sum(len(p) for p in probabilities)
    assert rows == len(namespace["rgb"].sets["test"])
    assert all(abs(float(s) - 1) < 1e-4 for p in probabilities for s in p.sum(dim=1))
