"""`cmkd bench discomkd`: the baseline grid's settings and the page's statistics (no training)."""

from __future__ import annotations

import pytest

from cmkd.bench.discomkd import DCK, SINGLE, _logit_methods, _scenarios, render_section
from cmkd.errors import CmkdError
from cmkd.losses import LOSSES


def test_baselines_with_and_without_lskd():
    methods = _logit_methods(["kd", "dkd", "mlkd", "ctkd"])
    assert list(methods) == [
        "KD", "KD + LSKD", "DKD", "DKD + LSKD", "MLKD", "MLKD + LSKD", "CTKD", "CTKD + LSKD",
    ]  # fmt: skip
    for label, cfg in methods.items():
        for term in cfg.terms:
            assert term.params.get("standardize", False) == label.endswith("LSKD")
            assert LOSSES[term.name].cls(**term.params).standardize == label.endswith("LSKD")
    with pytest.raises(CmkdError, match="unknown baseline"):
        _logit_methods(["dist"])


def test_scenarios_cover_the_issue():
    sc = _scenarios()
    assert [len(sc[n].specs) for n in ("mfeat2", "mfeat6", "eurosat", "digits")] == [2, 6, 2, 2]
    assert not sc["digits"].fusable  # no pairs between speech and images: no fused teacher


def _run(acc, f1, last=None):
    return {
        "best": {"test": {"acc": acc, "f1_weighted": f1}},
        "last": {"test": {"acc": acc if last is None else last, "f1_weighted": f1}},
        "parameters": 10,
    }


def test_page_reports_paired_differences():
    record = {
        "title": "toy",
        "settings": {
            "lr": 1e-3,
            "epochs": 3,
            "batch_size": 8,
            "command": "cmkd bench discomkd --scenario toy",
            "modalities": [{"name": "a", "model": {"backbone": "mlp"}}],
        },
        "seeds": {
            "0": {SINGLE: {"a": _run(0.50, 0.40)}, DCK: {"a": _run(0.60, 0.40)}},
            "1": {SINGLE: {"a": _run(0.70, 0.60)}, DCK: {"a": _run(0.70, 0.70)}},
        },
    }
    page = render_section(record)
    assert "Command: `cmkd bench discomkd --scenario toy`" in page
    # single 50, 70 -> 60.0 ± 14.1; DisCoM-KD - single: +10, 0 -> +5.0, t(0.975, 1) = 12.706,
    # half width 12.706 * 7.071 / sqrt(2) = 63.5.
    assert "| single-modality | 10 | 60.0 ± 14.1 |" in page
    assert "| +5.0 [-58.5, +68.5] |" in page


def test_last_epoch_scores_come_from_the_final_weights(tmp_path):
    """Lightning's last.ckpt copies the best checkpoint; the repair reads the run's own
    final-weights accuracy instead."""
    import json

    from cmkd.bench.discomkd import repair_last_epoch

    run = tmp_path / "single-a" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"last": {"epoch": 9, "test": {"acc": 0.25}}}))
    cell = {**_run(0.5, 0.5), "checkpoint": str(run / "checkpoints" / "best.ckpt")}
    store = tmp_path / "results.json"
    store.write_text(
        json.dumps({"seeds": {"0": {SINGLE: {"a": cell}, DCK: {"a": _run(0.6, 0.6)}}}})
    )
    assert repair_last_epoch(store) == 1
    fixed = json.loads(store.read_text())["seeds"]["0"]
    assert fixed[SINGLE]["a"]["last"] == {"test": {"acc": 0.25}, "epoch": 9}
    assert fixed[DCK]["a"]["last"]["test"]["acc"] == 0.6  # DisCoM-KD cells are left alone
    assert repair_last_epoch(store) == 0
