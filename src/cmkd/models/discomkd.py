"""DisCoM-KD's networks (Ienco & Dantas 2024): one `DisComStudent` per modality inside one joint
model, and the export of each student as a standalone file.

A student is exactly what inference for its modality needs: the input standardisation, the
modality-invariant encoder E_inv with its projection head, the modality-specific encoder E_spec
and the task head Cl_m on concat(z_inv, z_inf). The joint model trains the students together
with the heads only training needs (the shared auxiliary classifier, the two modality heads, the
discriminator). Because the joint model computes a modality's prediction with the very module
that is exported, an exported student reproduces the joint model's predictions exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.models.backbones import Network, create_network
from cmkd.models.outputs import ModelOutput

EXPORT_FORMAT = "cmkd-discomkd-student/1"


class Encoder(nn.Module):
    """A backbone of the factory without its classifier: input -> pooled (projected) vector."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.features, self.pool, self.projection = (
            network.features,
            network.pool,
            network.projection,
        )
        self.dim = network.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pool(self.features(x)))


def build_encoder(spec: dict[str, Any], embedding_dim: int | None = None) -> Encoder:
    """An encoder from a network spec (backbone, in_chans, pretrained, options); the classifier
    that `create_network` always adds is dropped (num_classes 2 is a placeholder)."""
    network = create_network(
        spec["backbone"],
        in_chans=spec["in_chans"],
        num_classes=2,
        pretrained=spec.get("pretrained", False),
        embedding_dim=embedding_dim,
        **spec.get("options", {}),
    )
    return Encoder(network)


class ProjHead(nn.Sequential):
    """Linear -> BatchNorm -> ReLU: E_inv's output to z_inv (the authors' ProjHead)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())


def encoder_width(spec: dict[str, Any]) -> int:
    """The pooled width of a backbone (built once on the CPU, then thrown away)."""
    return build_encoder(spec).dim


class DisComStudent(nn.Module):
    """One modality's classifier: Cl_m(concat(z_inv, z_inf)).

    z_inv = ProjHead(E_inv(x)); E_spec(x) (2 * latent wide) is cut in halves, z_inf (first) and
    z_irr (second). When the backbone's pooled width is not 2 * latent, E_spec gets a linear
    projection to 2 * latent (the paper's ResNet-18 gives 512 = 2 x 256, so none there).
    """

    def __init__(
        self,
        spec: dict[str, Any],
        num_classes: int,
        latent_dim: int,
        normalize: Standardize | None = None,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise CmkdError(f"latent_dim must be a positive integer, got {latent_dim}")
        self.spec, self.latent_dim = dict(spec), latent_dim
        self.normalize = normalize or Standardize.identity(spec["in_chans"])
        self.inv = build_encoder(spec)
        self.proj = ProjHead(self.inv.dim, latent_dim)
        self.spec_enc = build_encoder(spec)
        if self.spec_enc.dim != 2 * latent_dim:
            self.spec_enc = build_encoder(spec, 2 * latent_dim)
        self.classifier = nn.Linear(2 * latent_dim, num_classes)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_inv, z_inf, z_irr) of a raw input batch."""
        x = self.normalize(x)
        z_inv = self.proj(self.inv(x))
        z_spec = self.spec_enc(x)
        return z_inv, z_spec[:, : self.latent_dim], z_spec[:, self.latent_dim :]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        z_inv, z_inf, _ = self.parts(x)
        embedding = torch.cat([z_inv, z_inf], dim=1)
        return ModelOutput(self.classifier(embedding), embedding)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def single_backbone_parameters(spec: dict[str, Any], num_classes: int) -> int:
    """Parameters of the single-modality baseline with the same backbone (one encoder + linear
    classifier), the size a DisCoM-KD student is compared with."""
    return count_parameters(
        create_network(
            spec["backbone"],
            in_chans=spec["in_chans"],
            num_classes=num_classes,
            embedding_dim=spec.get("embedding_dim"),
            **spec.get("options", {}),
        )
    )


def export_student(
    student: DisComStudent, path: str | Path, modality: str, classes: list[str], **extra: Any
) -> Path:
    """Write `path`.safetensors (weights and normaliser buffers) and `path`.json (what rebuilds
    it: backbone spec, latent width, classes, modality, normaliser statistics, sizes)."""
    from safetensors.torch import save_file

    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(base.with_suffix(".safetensors")))
    meta = {
        "format": EXPORT_FORMAT,
        "modality": modality,
        "classes": list(classes),
        "network": student.spec,
        "latent_dim": student.latent_dim,
        "normalize": {
            "mean": student.normalize.mean.tolist(),
            "std": student.normalize.std.tolist(),
        },
        "parameters": count_parameters(student),
        **extra,
    }
    from cmkd.io import write_json

    write_json(base.with_suffix(".json"), meta)
    return base.with_suffix(".safetensors")


def load_student(path: str | Path) -> tuple[DisComStudent, dict[str, Any]]:
    """An exported student (give the .safetensors or .json path, or the common stem), in eval
    mode, and its metadata."""
    from safetensors.torch import load_file

    base = Path(path)
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    weights, meta_file = base.with_suffix(".safetensors"), base.with_suffix(".json")
    for file in (weights, meta_file):
        if not file.is_file():
            raise CmkdError(f"exported student file {file} does not exist")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise CmkdError(f"{meta_file} is not valid JSON ({err})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CmkdError(f"{meta_file} is not a DisCoM-KD student export ({EXPORT_FORMAT})")
    student = DisComStudent(meta["network"], len(meta["classes"]), meta["latent_dim"])
    try:
        student.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CmkdError(f"{weights} does not fit its metadata: {first}") from None
    return student.eval(), meta
