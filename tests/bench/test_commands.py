"""The CLI's door into the benchmarks: every command's help, the command line a page shows, and
one-line errors for a missing configs folder or page store."""

from __future__ import annotations

import pytest

from cmkd.bench import commands
from cmkd.bench.losses import LOSS_CONFIGS
from cmkd.cli import main


@pytest.mark.parametrize(
    "sub", [["report"], ["demo"], *(["bench", name] for name in commands.BENCH_COMMANDS["bench"])]
)
def test_every_bench_command_has_help_with_a_page_option(sub, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*sub, "--help"])
    assert exit_.value.code == 0
    assert "--page" in capsys.readouterr().out


def test_the_command_line_names_positionals_and_changed_arguments() -> None:
    given = dict(grid="configs/bench/smoke.yaml", output_dir=None, fresh=True, report=True,
                 page="benchmarks/smoke.md", plots=True)  # fmt: skip
    line = commands.command_line("bench grid", commands.bench_grid, given, positional=("grid",))
    assert line == (
        "cmkd bench grid configs/bench/smoke.yaml --fresh true --page benchmarks/smoke.md"
    )
    given = dict(scenario="digits", seeds=[0, 1], epochs=30, lr=0.001)
    line = commands.command_line("bench discomkd", commands.discomkd, given, always=("epochs",))
    assert line == "cmkd bench discomkd --scenario digits --seeds '[0, 1]' --epochs 30"


def test_the_default_loss_configs_agree() -> None:
    assert commands.LOSS_CONFIGS == LOSS_CONFIGS


def test_missing_loss_configs_and_stores_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not a checkout: no configs/ here
    assert main(["bench", "losses", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmkd: error: no loss configs") and "--configs DIR" in err
    (tmp_path / "old.json").write_text('{"runs": {}}')
    assert main(["report", "old.json"]) == 2
    assert "no page store" in capsys.readouterr().err
