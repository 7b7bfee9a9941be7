"""Stratified splits and training-only standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd.data.normalize import Standardize
from cmkd.data.splits import stratified_split
from cmkd.errors import CmkdError


def test_split_is_stratified_disjoint_complete_and_seeded() -> None:
    y = np.repeat(np.arange(4), [30, 35, 40, 37])
    split = stratified_split(y, 0.2, 0.2, seed=3)
    rows = np.concatenate(list(split.values()))
    assert sorted(rows.tolist()) == list(range(len(y)))  # disjoint and complete
    for label, n in enumerate([30, 35, 40, 37]):
        assert (y[split["test"]] == label).sum() == round(0.2 * n)
        assert (y[split["val"]] == label).sum() == round(0.2 * n)
    again = stratified_split(y, 0.2, 0.2, seed=3)
    other = stratified_split(y, 0.2, 0.2, seed=4)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], other["test"])


def test_official_test_mask_is_kept() -> None:
    y = np.repeat(np.arange(2), 10)
    mask = np.zeros(20, bool)
    mask[[0, 1, 10, 11]] = True
    split = stratified_split(y, 0.25, 0.2, seed=0, test_mask=mask)
    assert split["test"].tolist() == [0, 1, 10, 11]
    assert len(split["val"]) == 2 * round(8 * 0.25 / 0.8)


def test_bad_fractions_and_tiny_classes_are_user_errors() -> None:
    with pytest.raises(CmkdError, match="fractions"):
        stratified_split(np.zeros(10), 0.6, 0.5)
    with pytest.raises(CmkdError, match="class 1 has 2 samples"):
        stratified_split(np.array([0, 0, 0, 0, 0, 1, 1]), 0.4, 0.4)


def test_standardize_uses_given_statistics_per_channel() -> None:
    train = torch.tensor([[[[0.0]], [[10.0]]], [[[2.0]], [[10.0]]]])  # 2 x 2 x 1 x 1
    norm = Standardize.fit(train)
    torch.testing.assert_close(norm.mean, torch.tensor([1.0, 10.0]))
    # Channel 1 is constant: its std falls back to 1 instead of dividing by zero.
    torch.testing.assert_close(norm.std, torch.tensor([2.0**0.5, 1.0]))
    out = norm(torch.tensor([[[[3.0]], [[12.0]]]]))
    torch.testing.assert_close(out.flatten(), torch.tensor([2.0 / 2.0**0.5, 2.0]))


def test_standardize_into_channels_last_same_values_and_a_channels_last_network_gets_it() -> None:
    from cmkd.models.model import build_model

    x = torch.rand(4, 13, 8, 8) * 3000
    norm = Standardize.fit(x)
    plain, laid = norm(x), norm(x, channels_last=True)
    assert laid.is_contiguous(memory_format=torch.channels_last) and not laid.is_contiguous()
    torch.testing.assert_close(laid, plain, rtol=0, atol=0)
    grad_x = x.clone().requires_grad_()  # the autograd path, same values and layout
    torch.testing.assert_close(norm(grad_x, channels_last=True), plain, rtol=0, atol=0)
    vectors = torch.rand(4, 13)
    torch.testing.assert_close(norm(vectors, channels_last=True), norm(vectors))
    model = build_model({"backbone": "small_cnn", "in_chans": 13, "num_classes": 3}, norm)
    assert not model._channels_last()
    before = model(x).logits
    model.to(memory_format=torch.channels_last)
    assert model._channels_last()
    seen = []
    model.network.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    torch.testing.assert_close(model(x).logits, before)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_scored_overlap_finds_training_ids_in_val_or_test() -> None:
    from cmkd.data.datamodule import PreparedData
    from cmkd.data.samples import Samples

    y = np.repeat(np.arange(2), 10)
    ids = np.array([f"s{i}" for i in range(20)])
    samples = Samples(np.zeros((20, 1), np.float32), y, ids, ["a", "b"])
    split = stratified_split(y, 0.2, 0.2, seed=0)
    prepared = PreparedData({"m": samples}, {"m": split})
    train_ids = samples.ids[split["train"]]
    assert prepared.scored_overlap("m", train_ids) is None
    leaked = np.append(train_ids, samples.ids[split["test"][:3]])
    assert prepared.scored_overlap("m", leaked) == ("test", 3)
    leaked = np.append(leaked, samples.ids[split["val"][:2]])
    assert prepared.scored_overlap("m", leaked) == ("val", 2)  # val is reported first
