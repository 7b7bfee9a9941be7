"""Backbones on synthetic tensors: the ModelOutput contract, gradients, seeds, options, errors."""

from __future__ import annotations

import os

import pytest
import timm
import torch
import torchvision
from torch import nn

from cmkd.errors import CmkdError
from cmkd.models.backbones import Network, available_backbones, create_network

IMAGE_BACKBONES = ["resnet34", "resnet18", "mobilenetv2_100", "shufflenet_v2_x0_5", "small_cnn"]
CHANNELS = [1, 3, 13]
NUM_CLASSES = 5


def first_conv(net: Network) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("in_chans", CHANNELS)
@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_output_contract_and_gradients(name: str, in_chans: int) -> None:
    net = create_network(name, in_chans, NUM_CLASSES)
    assert (net.name, net.in_chans, net.num_classes) == (name, in_chans, NUM_CLASSES)
    assert first_conv(net).in_channels == in_chans
    out = net(torch.randn(2, in_chans, 64, 64))
    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.embedding.shape == (2, net.embedding_dim)
    assert out.feature_map is not None and out.feature_map.ndim == 4
    assert out.feature_map.shape[:2] == (2, net.feature_channels)
    # Without a projection the embedding is the pooled feature map.
    assert net.embedding_dim == net.feature_channels
    torch.testing.assert_close(out.embedding, out.feature_map.mean(dim=(2, 3)))
    # The classifier is the last step, so a teacher's classifier can take a student embedding.
    assert isinstance(net.classifier, nn.Linear)
    assert net.classifier.in_features == net.embedding_dim
    torch.testing.assert_close(net.classifier(out.embedding), out.logits)

    (out.logits.logsumexp(1).sum() + out.feature_map.mean()).backward()
    grad = first_conv(net).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("in_chans", CHANNELS)
@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_deterministic_under_seed(name: str, in_chans: int) -> None:
    def run() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        torch.manual_seed(0)
        net = create_network(name, in_chans, NUM_CLASSES).eval()
        with torch.no_grad():
            return net.state_dict(), net(torch.randn(2, in_chans, 64, 64)).logits

    (state_a, logits_a), (state_b, logits_b) = run(), run()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(logits_a, logits_b)


@pytest.mark.parametrize(("name", "dim"), [("shufflenet_v2_x0_5", 512), ("small_cnn", 16)])
def test_embedding_projection(name: str, dim: int) -> None:
    net = create_network(name, 13, NUM_CLASSES, embedding_dim=dim).eval()
    plain = create_network(name, 13, NUM_CLASSES)
    assert net.embedding_dim == dim
    assert net.feature_channels == plain.feature_channels
    assert isinstance(net.projection, nn.Linear)
    assert (net.projection.in_features, net.projection.out_features) == (plain.embedding_dim, dim)
    with torch.no_grad():
        out = net(torch.randn(3, 13, 64, 64))
    assert out.embedding.shape == (3, dim)
    assert out.feature_map.shape[1] == plain.feature_channels
    torch.testing.assert_close(net.classifier(out.embedding), out.logits)


def test_available_backbones() -> None:
    names = available_backbones()
    assert names == sorted(names)
    assert set(IMAGE_BACKBONES) | {"mlp"} <= set(names)


def test_any_timm_name_is_accepted() -> None:
    assert "resnet10t" not in available_backbones()
    net = create_network("resnet10t", 2, 3)
    out = net(torch.randn(2, 2, 32, 32))
    assert out.logits.shape == (2, 3)
    assert (
        out.feature_map.shape[1]
        == net.feature_channels
        == timm.create_model("resnet10t").num_features
    )


def test_timm_options_are_passed_on() -> None:
    net = create_network("resnet18", 3, NUM_CLASSES, drop_rate=0.3)
    assert net.features.model.drop_rate == 0.3


def test_small_cnn_size_widths_and_small_inputs() -> None:
    for in_chans in (3, 13):
        params = sum(p.numel() for p in create_network("small_cnn", in_chans, 10).parameters())
        assert 50_000 <= params <= 250_000
    net = create_network("small_cnn", 1, NUM_CLASSES, widths=(8, 16, 24))
    assert net.feature_channels == 24
    for size in (16, 28, 33):
        out = net(torch.randn(2, 1, size, size))
        assert out.logits.shape == (2, NUM_CLASSES) and out.feature_map.shape[1] == 24


def test_mlp_options() -> None:
    net = create_network("mlp", 20, NUM_CLASSES, hidden=(32,), dropout=0.5)
    assert net.feature_channels is None and net.embedding_dim == 32
    x = torch.randn(4, 20)
    torch.manual_seed(1)
    a = net(x).embedding
    b = net(x).embedding
    assert not torch.equal(a, b)  # dropout is active in training
    net.eval()
    assert torch.equal(net(x).embedding, net(x).embedding)
    projected = create_network("mlp", 20, NUM_CLASSES, embedding_dim=8)
    assert projected(x).embedding.shape == (4, 8)


# ---- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(CmkdError) as info:
        create_network("resnet_does_not_exist", 3, 10)
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in available_backbones())
    assert "timm" in message


@pytest.mark.parametrize(
    ("in_chans", "num_classes", "embedding_dim", "match"),
    [
        (0, 10, None, "in_chans"),
        (-3, 10, None, "in_chans"),
        (3, 1, None, "num_classes"),
        (3, 0, None, "num_classes"),
        (3, 10, 0, "embedding_dim"),
    ],
)
def test_bad_sizes(in_chans: int, num_classes: int, embedding_dim: int | None, match: str) -> None:
    with pytest.raises(CmkdError, match=match):
        create_network("small_cnn", in_chans, num_classes, embedding_dim=embedding_dim)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mlp", {"widths": (8,)}, "does not take widths"),
        ("small_cnn", {"hidden": (8,)}, "does not take hidden"),
        ("small_cnn", {"widths": ()}, "widths"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("small_cnn", {"pretrained": True}, "no pretrained weights"),
        ("mlp", {"pretrained": True}, "no pretrained weights"),
    ],
)
def test_bad_options(name: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(CmkdError, match=match):
        create_network(name, 3, 10, **kwargs)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> str:
    """Point the torch hub and Hugging Face caches at an empty folder; returns the torch home."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return str(tmp_path / "torch")


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "shufflenet_v2_x0_5"])
def test_pretrained_without_cache_is_a_user_error(name: str, empty_caches: str) -> None:
    with pytest.raises(CmkdError, match="cannot be downloaded") as info:
        create_network(name, 3, 10, pretrained=True)
    assert "checkpoint_path=" in str(info.value) and "\n" not in str(info.value)


def test_missing_or_foreign_checkpoint(tmp_path) -> None:
    with pytest.raises(CmkdError, match="does not exist"):
        create_network("resnet18", 3, 10, checkpoint_path=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CmkdError, match="could not read"):
        create_network("resnet18", 3, 10, checkpoint_path=junk)
    shufflenet = tmp_path / "shufflenet.pth"
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), shufflenet)
    # timm alone would only log this and keep random weights.
    with pytest.raises(CmkdError, match="do not fit 'resnet18'"):
        create_network("resnet18", 3, 10, checkpoint_path=shufflenet)


# ---- local weights (ImageNet-style checkpoints written here, never downloaded) -------------


def test_timm_checkpoint_path_loads_and_adapts_stem(tmp_path) -> None:
    source = timm.create_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    net = create_network("resnet18", 13, 10, checkpoint_path=path)
    model = net.features.model
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    expected = timm.models.adapt_input_conv(13, source.conv1.weight)
    torch.testing.assert_close(model.conv1.weight, expected)
    assert net.classifier.out_features == 10


def test_shufflenet_checkpoint_path_loads_and_adapts_stem(tmp_path) -> None:
    source = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "shufflenet.pth"
    torch.save(source.state_dict(), path)
    grey = create_network("shufflenet_v2_x0_5", 1, 10, checkpoint_path=path)
    torch.testing.assert_close(grey.features[0][0].weight, source.conv1[0].weight.sum(1, True))
    assert torch.equal(grey.features[5][0].weight, source.conv5[0].weight)
    rgb = create_network("shufflenet_v2_x0_5", 3, 10, checkpoint_path=path)
    assert torch.equal(rgb.features[0][0].weight, source.conv1[0].weight)


def test_pretrained_uses_the_local_torch_hub_cache(empty_caches: str) -> None:
    checkpoints = os.path.join(empty_caches, "hub", "checkpoints")
    os.makedirs(checkpoints)
    shufflenet = torchvision.models.shufflenet_v2_x0_5()
    url = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url
    torch.save(shufflenet.state_dict(), os.path.join(checkpoints, os.path.basename(url)))
    resnet = timm.create_model("resnet18")
    url = timm.models.get_pretrained_cfg("resnet18").url
    torch.save(resnet.state_dict(), os.path.join(checkpoints, os.path.basename(url)))

    net = create_network("shufflenet_v2_x0_5", 3, 10, pretrained=True)
    assert torch.equal(net.features[5][0].weight, shufflenet.conv5[0].weight)
    net = create_network("resnet18", 3, 10, pretrained=True)
    assert torch.equal(net.features.model.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)
