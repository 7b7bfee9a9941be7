"""Where the data lives: --data-root, else $CMKD_DATA, else ../shared/data beside the checkout,
else ~/.cache/cmkd."""

from __future__ import annotations

import os
from pathlib import Path

from cmkd.errors import CmkdError

_CHECKOUT = Path(__file__).resolve().parents[3]
_cli_root: str | None = None


def set_cli_root(root: str | None) -> None:
    """The CLI's global --data-root, used wherever a config names no root of its own."""
    global _cli_root
    _cli_root = root


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root; an explicitly named root (config, --data-root or $CMKD_DATA) must
    exist, so a typo fails loudly instead of falling back to other data."""
    if root is not None:
        return _existing(Path(root).expanduser(), "data.root")
    if _cli_root is not None:
        return _existing(Path(_cli_root).expanduser(), "--data-root")
    env = os.environ.get("CMKD_DATA")
    if env:
        return _existing(Path(env).expanduser(), "$CMKD_DATA")
    shared = _CHECKOUT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "cmkd"


def cache_dir() -> Path:
    """Where decoded arrays are cached: $CMKD_CACHE, else ~/.cache/cmkd/decoded."""
    env = os.environ.get("CMKD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cmkd" / "decoded"


def _existing(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise CmkdError(f"data root {path} (from {origin}) does not exist or is not a folder")
    return path
