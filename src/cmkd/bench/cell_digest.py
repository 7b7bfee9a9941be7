"""The hash that decides whether a grid cell is rerun: its config without the fields at their
defaults.

A cell's config is built from cmkd's config dataclasses (data, model, optimiser, distillation).
Hashing every field would make a field added later (with a default that keeps the old
behaviour) change every stored cell's hash, and the whole store would be rerun. Leaving out the
fields whose value is the current default keeps those cells; a default that *changes* still
reruns the cells that ran under the old one (their stored value is no longer the default).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from functools import cache
from typing import Any

from cmkd.bench.store import config_hash
from cmkd.config import DataConfig, DistillConfig, ModelConfig, OptimConfig

# The dataclass behind each part of a cell's config (the rest is hashed as it is).
PARTS: dict[str, type] = {
    "data": DataConfig,
    "student_data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "distill": DistillConfig,
}
_NO_DEFAULT = object()


def cell_digest(config: dict[str, Any]) -> str:
    """The hash of a cell's config (a stored one read back from JSON gives the same)."""
    return config_hash({k: _trim(v, PARTS[k]) if k in PARTS else v for k, v in config.items()})


def same_cell(record: dict[str, Any] | None, digest: str) -> bool:
    """Whether a stored cell ran with the config whose `cell_digest` is `digest`: its recorded
    hash, or its stored config's digest (a cell stored under an older hash, or in a store
    moved since: cmkd.bench.store locates its paths)."""
    if record is None:
        return False
    return record.get("config_hash") == digest or (
        "config" in record and cell_digest(record["config"]) == digest
    )


def _trim(value: Any, cls: type) -> Any:
    """A dataclass's fields as a dict, without those at their defaults (nested ones too)."""
    if not isinstance(value, dict):
        return value
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            inner = _dataclass_in(hints[f.name])
            v = _normal(value[f.name], inner)
            if v != _normal(_default(f), inner):
                out[f.name] = v
    known = {f.name for f in dataclasses.fields(cls)}
    return out | {k: v for k, v in value.items() if k not in known}


def _normal(value: Any, inner: type | None) -> Any:
    """A field's value in the form compared and hashed: as JSON gives it back, a nested
    dataclass (or a list of them) trimmed too. Compared so, a nested dataclass stored before
    one of its fields existed still equals the default."""
    if value is _NO_DEFAULT:
        return value
    value = as_json(value)
    if inner is not None and isinstance(value, list):
        return [_trim(v, inner) for v in value]
    return _trim(value, inner) if inner is not None else value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def as_json(value: Any) -> Any:
    """As JSON would give it back (tuples as lists, dataclasses as dicts)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, list | tuple):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return json.loads(json.dumps(value, default=str))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (itself, in a list, or optional), if any."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None
