"""The `cmkd` command: help, configs, and one-line errors for bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmkd.cli import main

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "distill", "evaluate", "demo", "losses", "match", "pairs", "bench"]


def cmkd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmkd.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_help_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    assert "--data-root" in out


@pytest.mark.parametrize(
    "sub",
    [
        ["train"],
        ["distill"],
        ["evaluate"],
        ["demo"],
        ["losses"],
        ["match"],
        ["pairs", "show"],
        ["bench", "teacher-cache"],
        ["bench", "losses"],
        ["bench", "sembridge"],
        ["bench", "softcmkd"],
    ],
)
def test_every_subcommand_has_help(sub, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*sub, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


# Grids (configs/bench, tests/bench/test_grid.py), DisCoM-KD runs (configs/discomkd,
# tests/test_discomkd*.py) and class maps (configs/class_maps, tests/test_classmap.py) have
# their own commands and their own parse tests.
RUN_CONFIGS = sorted(
    p
    for p in (REPO / "configs").rglob("*.yaml")
    if p.parent.name not in ("bench", "discomkd", "class_maps")
)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path: Path, capsys) -> None:
    sub = "distill" if "distill:" in path.read_text() else "train"
    with pytest.raises(SystemExit) as exit_:
        main([sub, "--config", str(path), "--print_config"])
    assert exit_.value.code == 0
    assert "source:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs" / "bench" / "discomkd").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_discomkd_bench_config_parses(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "discomkd", "--config", str(path), "--print_config"])
    assert exit_.value.code == 0
    assert f"scenario: {path.stem}" in capsys.readouterr().out


def test_losses_lists_name_then_description(capsys) -> None:
    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("kd ") and "Hinton" in line for line in lines)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("cmkd: error:")]
    assert len(error) == 1, proc.stderr
    for needle in needles:
        assert needle in error[0]


def test_nonexistent_data_root_from_env_fails_naming_it() -> None:
    _one_line_error(cmkd("demo", env={"CMKD_DATA": "/nonexistent"}), "/nonexistent", "CMKD_DATA")


def test_nonexistent_data_root_flag_fails_naming_it(tmp_path) -> None:
    proc = cmkd(
        "train",
        "--modality",
        "ms",
        "--data-root",
        str(tmp_path / "nope"),
        "--run.output_dir",
        str(tmp_path),
    )
    _one_line_error(proc, str(tmp_path / "nope"))


def test_missing_dataset_folder_is_named(tmp_path) -> None:
    proc = cmkd(
        "train",
        "--modality",
        "ms",
        "--data-root",
        str(tmp_path),
        "--run.output_dir",
        str(tmp_path / "runs"),
    )
    _one_line_error(proc, str(tmp_path / "eurosat"))


def test_unknown_source_and_modality_are_one_line_errors(tmp_path, data_root) -> None:
    out = ["--run.output_dir", str(tmp_path)]
    _one_line_error(cmkd("train", "--modality", "ms", "--data.source", "nope", *out), "nope")
    _one_line_error(cmkd("train", "--modality", "sar", *out), "sar", "ms", "rgb")


def test_unknown_config_key_is_rejected(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modality: ms\noptim:\n  epoch: 3\n")
    proc = cmkd("train", "--config", str(bad))
    assert proc.returncode != 0 and "epoch" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_demo_with_nonexistent_data_fails_naming_it() -> None:
    if not (REPO / ".venv" / ".installed").exists():
        pytest.skip("no installed .venv: `make demo` would first install (slow)")
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=REPO).returncode != 0
    if stale:
        pytest.skip("the .venv stamp is older than pyproject.toml: `make demo` would reinstall")
    proc = subprocess.run(
        ["make", "-s", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "CMKD_DATA": "/nonexistent"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "cmkd: error: data root /nonexistent" in proc.stderr
    assert "Traceback" not in proc.stderr
