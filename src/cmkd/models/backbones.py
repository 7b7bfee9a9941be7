"""Backbones behind one interface, so every distillation method sees the same `ModelOutput`.

A `Network` is feature extractor -> global pooling -> optional projection -> classifier. The
classifier is a separate `nn.Linear` because several methods push a student's embedding
through the teacher's classifier.

No weights are ever downloaded: this library runs on machines without network access, so
`pretrained=True` uses only weights already in the local timm / torch hub cache, or a file
given as `checkpoint_path=`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from cmkd.errors import CmkdError
from cmkd.models.outputs import ModelOutput

# A builder returns (feature extractor, feature-map channels or None, pooled width).
_Built = tuple[nn.Module, int | None, int]
_Builder = Callable[..., _Built]


class Network(nn.Module):
    """Feature extractor + pooling + optional projection + a separate linear classifier."""

    def __init__(
        self,
        name: str,
        features: nn.Module,
        in_chans: int,
        num_classes: int,
        feature_channels: int | None,
        pooled_dim: int,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.embedding_dim = embedding_dim or pooled_dim
        self.features = features
        # Vector models (feature_channels None) already give B x D: nothing to pool.
        self.pool = (
            nn.Identity()
            if feature_channels is None
            else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        )
        self.projection = (
            nn.Identity() if embedding_dim is None else nn.Linear(pooled_dim, embedding_dim)
        )
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.features(x)
        embedding = self.projection(self.pool(features))
        feature_map = None if self.feature_channels is None else features
        return ModelOutput(self.classifier(embedding), embedding, feature_map)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_chans={self.in_chans}, num_classes={self.num_classes}"


class _TimmFeatures(nn.Module):
    """Exposes a timm model's `forward_features` (the unpooled last stage) as `forward`."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        if out.ndim != 4:
            raise CmkdError(
                f"timm model '{self.name}' gives {out.ndim}-D features, not a B x C x H x W map; "
                "use a convolutional backbone"
            )
        return out


def _timm_cached_file(name: str) -> str | None:
    """The locally cached weight file timm would otherwise download, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        for filename in filter(
            None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")
        ):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    if cfg.url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if legacy.is_file():
            return str(legacy)
    return None


def _resolve_weights(
    name: str,
    pretrained: bool,
    checkpoint_path: str | os.PathLike[str] | None,
    cached: Callable[[], str | None],
) -> str | None:
    """The local weight file to load: the explicit checkpoint, else the cache, else none."""
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise CmkdError(f"checkpoint_path {str(path)!r} does not exist or is not a file")
        return str(path)
    if not pretrained:
        return None
    found = cached()
    if found is None:
        raise CmkdError(
            f"pretrained weights for '{name}' are not in the local cache and cannot be downloaded "
            "here (no network); download them elsewhere and pass checkpoint_path='/path/to/file' "
            "(.pth or .safetensors, same architecture), or put them in the timm/torch hub cache"
        )
    return found


def _load_weights(
    model: nn.Module,
    path: str,
    name: str,
    in_chans: int,
    first_conv: Sequence[str],
    classifiers: Sequence[str],
) -> None:
    """Loads an ImageNet-style checkpoint into the feature extractor, strictly.

    The ImageNet classifier is dropped (the Network has its own) and 3-channel stem filters are
    adapted to in_chans the way timm does it (sum for 1 band, tile and rescale for more), so
    pretrained filters stay meaningful for any band count. Anything else that does not fit is an
    error: timm's own loader only logs it and silently keeps random weights.
    """
    try:
        state = timm.models.load_state_dict(path)
    except Exception as err:  # corrupt or foreign file: report it as the user's input
        raise CmkdError(f"could not read weights {path!r}: {_first_line(err)}") from err
    state = {
        k: v for k, v in state.items() if not k.startswith(tuple(c + "." for c in classifiers))
    }
    for conv in first_conv:
        key = conv + ".weight"
        if key in state and state[key].ndim == 4 and state[key].shape[1] != in_chans:
            state[key] = timm.models.adapt_input_conv(in_chans, state[key])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: another architecture's weights
        raise CmkdError(
            f"could not load weights {path!r} into '{name}': {_first_line(err)}"
        ) from err
    wrong = list(result.missing_keys) + list(result.unexpected_keys)
    if wrong:
        raise CmkdError(
            f"weights {path!r} do not fit '{name}': {len(wrong)} missing or unexpected keys "
            f"(e.g. {wrong[0]!r})"
        )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _build_timm(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **timm_kwargs: object,
) -> _Built:
    weights = _resolve_weights(name, pretrained, checkpoint_path, lambda: _timm_cached_file(name))
    model = timm.create_model(name, in_chans=in_chans, num_classes=0, global_pool="", **timm_kwargs)
    if weights is not None:
        cfg = model.pretrained_cfg
        first_conv = _as_tuple(cfg.get("first_conv"))
        _load_weights(model, weights, name, in_chans, first_conv, _as_tuple(cfg.get("classifier")))
    return _TimmFeatures(model, name), model.num_features, model.num_features


def _torch_hub_cached(url: str) -> str | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return str(path) if path.is_file() else None


def _build_shufflenet_v2_x0_5(
    in_chans: int,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> _Built:
    name = "shufflenet_v2_x0_5"
    url = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url
    weights = _resolve_weights(name, pretrained, checkpoint_path, lambda: _torch_hub_cached(url))
    model = torchvision.models.shufflenet_v2_x0_5(weights=None)
    old = model.conv1[0]
    model.conv1[0] = nn.Conv2d(
        in_chans,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    # The Network brings its own classifier; without torchvision's `fc` every remaining key
    # must come from the checkpoint, which keeps the strict check in _load_weights exact.
    del model.fc
    if weights is not None:
        _load_weights(model, weights, name, in_chans, ("conv1.0",), ("fc",))
    features = nn.Sequential(
        model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5
    )
    channels = model.conv5[0].out_channels
    return features, channels, channels


def _build_small_cnn(
    in_chans: int,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    widths: Sequence[int] = (16, 32, 64, 128),
    stem_stride: int = 2,
) -> _Built:
    """conv3x3-BN-ReLU blocks with a 2x2 max-pool between them, the first conv strided: at
    full resolution it cost most of the compute, and CPU demos must stay within minutes."""
    _refuse_weights("small_cnn", pretrained, checkpoint_path)
    if not widths or min(widths) < 1:
        raise CmkdError(f"small_cnn widths must be positive integers, got {tuple(widths)}")
    if stem_stride < 1:
        raise CmkdError(f"small_cnn stem_stride must be >= 1, got {stem_stride}")
    layers: list[nn.Module] = []
    previous = in_chans
    for index, width in enumerate(widths):
        if index > 0:
            # ceil_mode keeps odd sizes from shrinking to nothing on small inputs.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        stride = stem_stride if index == 0 else 1
        layers += [
            nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        previous = width
    return nn.Sequential(*layers), previous, previous


def _build_mlp(
    in_chans: int,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
) -> _Built:
    """Linear-ReLU(-Dropout) stack for vector modalities; in_chans is the input dimension.
    `hidden: []` is the linear model (see `_build_linear`)."""
    _refuse_weights("mlp", pretrained, checkpoint_path)
    if hidden and min(hidden) < 1:
        raise CmkdError(f"mlp hidden sizes must be positive integers, got {tuple(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise CmkdError(f"mlp dropout must be in [0, 1), got {dropout}")
    if not hidden:
        return _build_linear(in_chans)
    # Flatten lets B x 1 x H x W inputs (e.g. MNIST with in_chans=784) through as vectors.
    layers: list[nn.Module] = [nn.Flatten(1)]
    previous = in_chans
    for width in hidden:
        layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        previous = width
    return nn.Sequential(*layers), None, previous


def _build_linear(
    in_chans: int,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> _Built:
    """No hidden layer: the Network's classifier is the one Linear layer, and the embedding
    is the input vector itself (flattened), so embedding losses still see a vector."""
    _refuse_weights("linear", pretrained, checkpoint_path)
    return nn.Flatten(1), None, in_chans


def _refuse_weights(
    name: str, pretrained: bool, checkpoint_path: str | os.PathLike[str] | None
) -> None:
    if pretrained or checkpoint_path is not None:
        raise CmkdError(f"'{name}' has no pretrained weights; use pretrained=False")


def _timm(name: str) -> _Builder:
    def build(in_chans: int, **kwargs: object) -> _Built:
        return _build_timm(name, in_chans, **kwargs)

    return build


_REGISTRY: dict[str, _Builder] = {
    "resnet18": _timm("resnet18"),
    "resnet34": _timm("resnet34"),
    "mobilenetv2_100": _timm("mobilenetv2_100"),
    "shufflenet_v2_x0_5": _build_shufflenet_v2_x0_5,
    "small_cnn": _build_small_cnn,
    "mlp": _build_mlp,
    "linear": _build_linear,
}


def available_backbones() -> list[str]:
    """Names with a dedicated builder; any other timm model name is accepted as well."""
    return sorted(_REGISTRY)


def create_network(
    name: str,
    in_chans: int,
    num_classes: int,
    pretrained: bool = False,
    embedding_dim: int | None = None,
    **kwargs: object,
) -> Network:
    """Builds a `Network` by name.

    `kwargs` go to the builder: `checkpoint_path` (local weights, any image backbone), `widths`
    (small_cnn), `hidden` and `dropout` (mlp; `hidden: []` is `linear`), or any
    `timm.create_model` option.
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise CmkdError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise CmkdError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if embedding_dim is not None and (not isinstance(embedding_dim, int) or embedding_dim < 1):
        raise CmkdError(f"embedding_dim must be a positive integer or None, got {embedding_dim!r}")
    builder = _REGISTRY.get(name)
    if builder is None:
        if not timm.is_model(name):
            raise CmkdError(
                f"unknown backbone {name!r}; registered: {', '.join(available_backbones())} "
                "(any timm model name is accepted too)"
            )
        builder = _timm(name)
    else:
        _check_options(name, builder, kwargs)
    features, channels, pooled_dim = builder(in_chans, pretrained=pretrained, **kwargs)
    return Network(name, features, in_chans, num_classes, channels, pooled_dim, embedding_dim)


def _check_options(name: str, builder: _Builder, kwargs: dict[str, object]) -> None:
    """Turns a misspelt option into a user error instead of a TypeError deep in a builder."""
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # timm builders: timm itself reports unknown options
    allowed = [p for p in params if p not in ("in_chans", "pretrained")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise CmkdError(
            f"'{name}' does not take {', '.join(unknown)}; it takes {', '.join(allowed)}"
        )
