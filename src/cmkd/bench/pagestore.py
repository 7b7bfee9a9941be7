"""Every benchmark page is rendered from a compact store beside it, so that it can be
rendered again from a fresh clone: no run folder, no checkpoint.

Layout, for a page `benchmarks/NAME.md`:
- `benchmarks/NAME.json`: the store, plain JSON with a `kind` (which renderer reads it) and
  only what the page shows: metrics per cell, config hashes, timings, seeds, labels; no weights;
- `benchmarks/NAME/`: the page's plots, where it has any;
- `benchmarks/NAME.notes.md` (optional): a reading of the results written by hand, put into
  the page before its first section (`## `): generated tables do not explain themselves, and a
  rerun must not erase the explanation (only make it stale: rewrite it with the numbers).

A page writer writes the store first and then renders the page from that store alone (never
from the richer data it has in memory), so `cmkd report benchmarks/NAME.md` gives the same
page byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmkd.errors import CmkdError
from cmkd.io import write_atomic


def store_path(page: str | Path) -> Path:
    """The store of a page: the .json of the same name beside it."""
    return Path(page).with_suffix(".json")


def plots_folder(page: str | Path) -> Path:
    """Where a page's plots go: the folder of the page's name beside it."""
    return Path(page).with_suffix("")


Render = Callable[[dict[str, Any], Path], str]
"""A page's renderer: (its store, the page's path) -> the Markdown. The path only names the
files beside the page (store, plots); the text depends on nothing else."""


def notes_path(page: str | Path) -> Path:
    """The hand-written reading of a page's results, beside it (NAME.notes.md)."""
    return Path(page).with_suffix(".notes.md")


def with_notes(text: str, page: Path) -> str:
    """The rendered page with its notes file (if any) before the first `## ` section."""
    notes = notes_path(page)
    if not notes.is_file():
        return text
    block = notes.read_text().strip() + "\n\n"
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    head = "".join(lines[:at])
    if head and not head.endswith("\n\n"):  # a page without sections: notes at its end
        head = head.rstrip("\n") + "\n\n"
    return head + block + "".join(lines[at:])


def publish(page: str | Path, store: dict[str, Any], render: Render) -> Path:
    """Write the store beside the page, then the page rendered from the store as written (with
    the page's hand-written notes, if it has a notes file)."""
    page = Path(page)
    if page.suffix != ".md":
        raise CmkdError(f"page {page}: a page is a Markdown file (.md)")
    path = store_path(page)
    write_atomic(path, store_text(store))
    write_atomic(page, with_notes(render(read_store(path), page), page))
    return page


def store_text(store: dict[str, Any]) -> str:
    """A store as committed beside its page: JSON with each entry of a top-level list or
    mapping (a cell, a scenario) on a line of its own, so a diff shows the cells a rerun
    added or changed, at the size of unindented JSON."""

    def block(value: Any) -> str:
        if isinstance(value, list) and value:
            return "[\n" + ",\n".join(f"  {json.dumps(v)}" for v in value) + "\n ]"
        if isinstance(value, dict) and value:
            items = (f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            return "{\n" + ",\n".join(items) + "\n }"
        return json.dumps(value)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {block(v)}" for k, v in store.items()) + "\n}\n"


def portable(path: str | None) -> str | None:
    """A run's path as a store keeps it: relative to the current folder (the checkout) where
    it lies inside it, so a committed store names no one's home folder."""
    if not path or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def read_store(path: str | Path) -> dict[str, Any]:
    """A page's store (the .json itself, or the page whose store it is)."""
    path = store_path(path)
    if not path.is_file():
        raise CmkdError(f"no page store {path}")
    try:
        store = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CmkdError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(store, dict) or "kind" not in store:
        raise CmkdError(f"{path} is no page store (no 'kind'; an older results file?)")
    return store
