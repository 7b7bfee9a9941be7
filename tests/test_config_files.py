"""Reading the distill section of a config file, with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd.config_files import load_distill_section
from cmkd.errors import CmkdError

KD = Path(__file__).resolve().parents[1] / "configs" / "eurosat_paired" / "losses" / "kd.yaml"


def test_the_distill_section_gives_terms_and_ce_weight() -> None:
    cfg = load_distill_section(KD)
    assert [t.name for t in cfg.terms] == ["kd"] and not cfg.teacher  # set per run


def test_bad_files_are_errors_naming_them(tmp_path) -> None:
    with pytest.raises(CmkdError, match="missing.yaml does not exist"):
        load_distill_section(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("data: {source: mfeat}\n")
    with pytest.raises(CmkdError, match="empty.yaml has no distill section"):
        load_distill_section(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  terms: [{nam: kd}]\n")
    with pytest.raises(CmkdError, match="bad.yaml: bad distill term"):
        load_distill_section(bad)
