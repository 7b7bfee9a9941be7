"""Reading cmkd checkpoints: a trained network with its hyperparameters, from a .ckpt file or
a run folder. Loading never runs code (`weights_only`), and every problem is a `CmkdError`
naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from cmkd.errors import CmkdError
from cmkd.models.model import StandardizedNetwork, build_model


def resolve_checkpoint(path: str | Path, weights: Literal["best", "last"] = "best") -> Path:
    """A .ckpt file as given, or in a run folder (`runs/NAME/seedK`) its `checkpoints/best.ckpt`
    or `last.ckpt`: `best` is chosen on validation, `last` is the final epoch (the choice when
    the validation split is too small to choose with)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = path / "checkpoints" / f"{weights}.ckpt"
        if weights == "best" and not found.is_file() and found.with_name("last.ckpt").is_file():
            raise CmkdError(
                f"{path} has no best.ckpt (a run without a validation split keeps only its last "
                "epoch); use its last.ckpt (--distill.teacher_weights last)"
            )
        if not found.is_file():
            raise CmkdError(
                f"{path} is a folder without checkpoints/{weights}.ckpt (not a run folder?)"
            )
        return found.resolve()
    if not path.is_file():
        raise CmkdError(f"checkpoint {path} does not exist")
    return path.resolve()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with weights_only (a file from anyone must not run code)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on a damaged or hostile file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CmkdError(
            f"{path} is not a readable cmkd checkpoint ({type(err).__name__}: {first[:200]}); "
            "cmkd only loads plain weights and never runs code from a checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CmkdError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def load_model(
    checkpoint: str | Path, weights: Literal["best", "last"] = "best"
) -> tuple[StandardizedNetwork, dict[str, Any]]:
    """The trained network of a cmkd checkpoint or run folder (teacher or student), in eval
    mode, and its hyperparameters."""
    path = resolve_checkpoint(checkpoint, weights)
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "network" not in hparams:
        raise CmkdError(f"{path} has no cmkd network spec (not written by cmkd train/distill?)")
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model = build_model(hparams["network"])
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CmkdError(
            f"{path}: its weights do not fit the network it describes ({first[:200]})"
        ) from None
    return model.eval(), hparams
