"""Names that cmkd joins onto a folder the user chose (run names, bench grid names): they must
name a folder inside it. A name like `../../x` or `/home/me` would make a run write, and with
`--run.overwrite true` delete, outside `run.output_dir`."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from cmkd.errors import CmkdError


def child_path(parent: str | Path, name: str | None, option: str = "run.name") -> Path:
    """`parent / name`, refused with a CmkdError (before anything is written) unless `name` is
    a non-empty relative path without `..`, `.`-only or empty parts and it stays inside
    `parent` once symbolic links are resolved. Subfolders (`bench/kd`) are fine."""
    if name is None or not str(name).strip():
        raise CmkdError(f"{option} is empty; give a folder name such as 'my-run'")
    text = str(name)
    if "\0" in text:
        raise CmkdError(f"{option} {text!r} contains a NUL character")
    if os.path.isabs(text) or PureWindowsPath(text).is_absolute() or text.startswith("~"):
        raise CmkdError(f"{option} {text!r} is an absolute path; give a name inside {parent}")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not parts or any(part in ("..", ".") for part in text.replace("\\", "/").split("/")):
        raise CmkdError(
            f"{option} {text!r} would leave (or be) the output folder {parent}; "
            "give a plain name such as 'my-run'"
        )
    root = Path(parent).expanduser()
    path = root / Path(*parts)
    # A symbolic link inside the output folder could still point elsewhere.
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or base not in resolved.parents:
        raise CmkdError(f"{option} {text!r} resolves to {resolved}, outside {base}")
    return path
