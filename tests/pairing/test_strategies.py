"""Pairing strategies: identity, class-random, unpaired zip, fixed and dynamic (DynM) tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd.errors import CmkdError
from cmkd.pairing.dynamic import min_kl_match
from cmkd.pairing.strategies import (
    ClassRandomPairing,
    DynamicPairing,
    FixedPairing,
    IdentityPairing,
    UnpairedZipPairing,
)

S_LAB = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2] * 30)
T_LAB = np.array([2, 2, 1, 0, 0, 1, 2, 0, 1] * 20)


def test_identity_pairing_checks_ids() -> None:
    rows = torch.tensor([2, 0])
    assert (
        IdentityPairing(np.array(["a", "b", "c"]), np.array(["a", "b", "c"])).teacher_rows(rows, 0)
        is rows
    )
    with pytest.raises(CmkdError, match="'b' vs 'x'"):
        IdentityPairing(np.array(["a", "b"]), np.array(["a", "x"]))


def test_class_random_same_class_redrawn_per_epoch_reproducible() -> None:
    pairing = ClassRandomPairing(S_LAB, T_LAB, seed=7)
    rows = torch.arange(len(S_LAB))
    e0, e1 = pairing.teacher_rows(rows, 0), pairing.teacher_rows(rows, 1)
    assert e0.dtype == torch.long
    for table in (e0, e1):
        assert np.array_equal(T_LAB[table.numpy()], S_LAB)
    assert not torch.equal(e0, e1)
    again = ClassRandomPairing(S_LAB, T_LAB, seed=7)
    assert torch.equal(again.teacher_rows(rows, 1), e1)  # another rank, same pairs
    assert torch.equal(again.teacher_rows(rows, 0), e0)
    assert not torch.equal(ClassRandomPairing(S_LAB, T_LAB, seed=8).teacher_rows(rows, 0), e0)
    # a batch is a lookup into the epoch's table
    batch = torch.tensor([5, 3, 299])
    assert torch.equal(pairing.teacher_rows(batch, 1), e1[batch])
    # every teacher class is used, and across epochs most teacher samples get drawn
    used = np.unique(np.concatenate([pairing.table_for(e) for e in range(10)]))
    assert set(T_LAB[used]) == {0, 1, 2} and len(used) > 0.9 * len(T_LAB)


def test_class_random_missing_teacher_class_is_named() -> None:
    with pytest.raises(CmkdError, match="class 'River' has 2 student samples but no teacher"):
        ClassRandomPairing(
            np.array([0, 1, 2, 2]), np.array([0, 1]), classes=["Forest", "Lake", "River"]
        )


def test_unpaired_zip_reproducible_per_epoch_and_fair_when_cycled() -> None:
    n_s, n_t = len(S_LAB), len(T_LAB)  # 300 students, 180 teachers
    pairing = UnpairedZipPairing(n_s, n_t, seed=3)
    rows = torch.arange(n_s)
    e0, e1 = pairing.teacher_rows(rows, 0), pairing.teacher_rows(rows, 1)
    assert e0.dtype == torch.long and not torch.equal(e0, e1)
    # another rank, or a run resumed at epoch 1: the same pairs, whatever the call order
    again = UnpairedZipPairing(n_s, n_t, seed=3)
    assert torch.equal(again.teacher_rows(rows, 1), e1)
    assert torch.equal(again.teacher_rows(rows, 0), e0)
    assert not torch.equal(UnpairedZipPairing(n_s, n_t, seed=4).teacher_rows(rows, 0), e0)
    batch = torch.tensor([299, 0, 7])
    assert torch.equal(pairing.teacher_rows(batch, 1), e1[batch])
    for epoch in range(5):
        counts = np.bincount(pairing.table_for(epoch), minlength=n_t)
        # every teacher row teaches floor(300 / 180) = 1 or 2 students, none is skipped
        assert counts.min() == 1 and counts.max() == 2 and counts.sum() == n_s
    # labels are not used: many pairs cross classes (about 2/3 with 3 balanced classes)
    crossing = (T_LAB[e0.numpy()] != S_LAB).mean()
    assert 0.5 < crossing < 0.8


def test_unpaired_zip_truncates_a_larger_teacher_set() -> None:
    pairing = UnpairedZipPairing(n_student=50, n_teacher=180, seed=0)
    tables = [pairing.table_for(e) for e in range(4)]
    for table in tables:
        assert len(table) == 50 and len(np.unique(table)) == 50  # no teacher row repeats
        assert table.min() >= 0 and table.max() < 180
    # the unused teacher rows change from epoch to epoch: over 4 epochs most get used
    assert len(np.unique(np.concatenate(tables))) > 120
    with pytest.raises(CmkdError, match="0 teacher samples"):
        UnpairedZipPairing(5, 0)


def test_unpaired_zip_is_not_the_student_loaders_shuffle() -> None:
    """With equal set sizes, the student loader's [seed, epoch] permutation must not be
    reused for the teacher: the pairs would then follow the loader's order."""
    from cmkd.data.datamodule import SeededShuffle

    n, seed = 200, 0
    table = UnpairedZipPairing(n, n, seed).table_for(2)
    loader = SeededShuffle(n, seed)
    loader.set_epoch(2)
    order = np.array(list(loader))
    assert not np.array_equal(table, order) and (table == order).mean() < 0.05


def test_fixed_pairing_table() -> None:
    pairing = FixedPairing(np.array([4, 0, 2]))
    assert pairing.teacher_rows(torch.tensor([2, 0]), 5).tolist() == [2, 4]
    assert pairing.table.tolist() == [4, 0, 2]
    with pytest.raises(ValueError):
        pairing.table[0] = 1
    with pytest.raises(CmkdError, match="1-d integer"):
        FixedPairing(np.array([0.5]))
    # assignment (checkpoint resume, DDP broadcast) takes arrays or tensors, copies them
    pairing.teacher_rows(torch.tensor([0]), 0)  # warm the lookup cache
    pairing.table = torch.tensor([1, 1, 1])
    assert pairing.teacher_rows(torch.tensor([0, 2]), 0).tolist() == [1, 1]
    pairing.table = pairing.table
    assert pairing.table.tolist() == [1, 1, 1]
    with pytest.raises(CmkdError, match="2 student rows, this pairing 3"):
        pairing.table = np.array([0, 1])


def test_dynamic_pairing_rematch_changes_table_and_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    zt = torch.randn(len(T_LAB), 3, generator=gen) * 3
    start = ClassRandomPairing(S_LAB, T_LAB, seed=0).table_for(0)
    pairing = DynamicPairing(start)
    zs = torch.randn(len(S_LAB), 3, generator=gen) * 3
    changed = pairing.rematch(zs, zt, S_LAB, T_LAB)
    expected = min_kl_match(zs, zt, S_LAB, T_LAB, temperature=3.0).numpy()
    assert np.array_equal(pairing.table, expected)
    assert changed == int((expected != start).sum()) > 0
    assert pairing.rematch(zs, zt, S_LAB, T_LAB) == 0
    assert pairing.changes == [changed, 0]
    assert torch.equal(
        pairing.teacher_rows(torch.tensor([1, 0]), 30), torch.from_numpy(expected[[1, 0]])
    )
    with pytest.raises(CmkdError, match="logits for 3 students"):
        pairing.rematch(zs[:3], zt, S_LAB[:3], T_LAB)


def test_real_eurosat_twins_never_cross_classes(data_root: Path) -> None:
    """369 MS/RGB twins: class-random and min-KL pairs stay inside their class."""
    from cmkd.data.sources import load_source

    data = load_source("eurosat_paired", data_root)
    ms, rgb = data["ms"], data["rgb"]
    assert len(rgb) == 369
    table = ClassRandomPairing(rgb.y, ms.y, seed=0, classes=rgb.classes).table_for(3)
    assert np.array_equal(ms.y[table], rgb.y)
    # crude but real logits: per-class channel means of each modality's pixels
    zs = torch.from_numpy(rgb.x.reshape(len(rgb), 3, -1).astype(np.float32).mean(2)) / 50
    zt = torch.from_numpy(ms.x.reshape(len(ms), ms.x.shape[1], -1).astype(np.float32).mean(2))
    zt = zt[:, :3] / 500
    match = min_kl_match(zs, zt, rgb.y, ms.y, chunk_size=100).numpy()
    assert np.array_equal(ms.y[match], rgb.y)
    assert len(set(rgb.y)) == len(rgb.classes)  # every class present and covered


def test_pair_table_digest_and_per_rank_audit_file(tmp_path: Path) -> None:
    """The digest identifies a table whatever its integer dtype; a rank's audit file keeps
    every record, across a resume (a new callback on the same run folder)."""
    import json
    from types import SimpleNamespace

    from cmkd.pairing.rematch import DynamicMatching, table_digest

    table = np.array([3, 1, 2])
    assert table_digest(table) == table_digest(table.astype(np.int32))
    assert table_digest(table) != table_digest(table[::-1])
    trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=0)
    DynamicMatching([1], audit_dir=tmp_path)._record(trainer, "start", sha256="a")
    trainer.current_epoch = 4  # resumed at epoch 4
    DynamicMatching([1], audit_dir=tmp_path)._record(trainer, "start", sha256="b")
    audit = json.loads((tmp_path / "rank1.json").read_text())
    assert audit["world_size"] == 2
    assert [(t["epoch"], t["sha256"]) for t in audit["tables"]] == [(0, "a"), (4, "b")]
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left behind
