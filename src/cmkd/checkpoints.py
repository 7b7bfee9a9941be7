"""Reading cmkd checkpoints: a trained network with its hyperparameters, from a .ckpt file or
a run folder. Loading never runs code (`weights_only`), and every problem is a `CmkdError`
naming the file."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cmkd.data.normalize import Standardize
from cmkd.errors import CmkdError
from cmkd.models.model import StandardizedNetwork, build_model, rebuild_spec


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
    """The checkpoint's dict, loaded with weights_only (a file from anyone must not run code).
    A file that needs more than plain weights is refused in cmkd's own words: torch's advice
    to retry with weights_only=False is never passed on."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something in the file
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it names the Python object {named.group(1)})" if named else ""
        raise CmkdError(
            f"{path} is not a readable cmkd checkpoint: it holds more than plain weights{what}; "
            "cmkd only loads plain weights and never runs code from a checkpoint"
        ) from None
    except Exception as err:  # torch raises many types on a damaged file
        raise CmkdError(
            f"{path} is not a readable cmkd checkpoint ({type(err).__name__}: {_first(err)}); "
            "cmkd only loads plain weights and never runs code from a checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CmkdError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def _first(err: BaseException) -> str:
    """The first line of an error, without any advice to load with weights_only=False."""
    lines = [ln for ln in str(err).strip().splitlines() if "weights_only" not in ln]
    return lines[0][:200] if lines else "unreadable"


def load_model(
    checkpoint: str | Path,
    weights: Literal["best", "last"] = "best",
    network: nn.Module | None = None,
) -> tuple[StandardizedNetwork, dict[str, Any]]:
    """The trained network of a cmkd checkpoint or run folder (teacher or student), in eval
    mode, and its hyperparameters. A network of your own (trained through `cmkd.adapt_network`)
    is never rebuilt from a name: pass a fresh one as `network` and the weights load into it."""
    path = resolve_checkpoint(checkpoint, weights)
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "network" not in hparams:
        raise CmkdError(f"{path} has no cmkd network spec (not written by cmkd train/distill?)")
    spec = hparams["network"]
    if not isinstance(spec, dict):
        raise CmkdError(f"{path}: its network spec is not a mapping")
    if spec.get("custom") and network is None:
        raise CmkdError(
            f"{path} holds the weights of your own network ({spec['backbone']}): build it as "
            "for training and pass it, load_model(path, network=module)"
        )
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        # Rebuilt without where its initial weights came from: the checkpoint has its own.
        if network is None:
            model = build_model(rebuild_spec(spec))
        else:
            model = StandardizedNetwork(network, Standardize.identity(spec["in_chans"]))
    except CmkdError as err:
        raise CmkdError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CmkdError(f"{path}: cannot rebuild its network {spec}: {_first(err)}") from None
    problem = _misfit(model.state_dict(), state)
    if problem:
        raise CmkdError(
            f"{path}: its weights do not fit the network it describes (backbone "
            f"{spec.get('backbone')!r}, {spec.get('in_chans')} input channels, "
            f"{spec.get('num_classes')} classes): {problem}"
        )
    model.load_state_dict(state)
    return model.eval(), hparams


def _misfit(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str | None:
    """What keeps `found` from loading into a network whose state is `expected`, or None."""
    for key, value in found.items():
        if not isinstance(value, torch.Tensor):
            return f"{key} is not a tensor"
    missing = [k for k in expected if k not in found]
    if missing:
        return f"{len(missing)} weights missing (e.g. {missing[0]})"
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        return f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})"
    for key, value in expected.items():
        if found[key].shape != value.shape:
            return (
                f"{key} is {tuple(found[key].shape)} in the file but "
                f"{tuple(value.shape)} in the network"
            )
    return None
