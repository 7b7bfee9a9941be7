"""cmkd.cli_input: the parser is locked down (no value is ever imported or built) and no
CLI option is typed so that a config could name something to import."""

from __future__ import annotations

import json
import pickle
import typing
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from cmkd.cli import commands
from cmkd.cli_input import cli_functions, lock_down_parsing

FILE_HANDLER = {"class_path": "logging.FileHandler", "init_args": {"filename": "{marker}"}}


def _payload(marker: Path) -> dict:
    return json.loads(json.dumps(FILE_HANDLER).replace("{marker}", str(marker)))


def test_locked_down_parser_never_builds_a_class_path(tmp_path, monkeypatch) -> None:
    """The second belt: even a parameter typed Any (none of cmkd's is, see below) keeps a
    class_path as data once the CLI has locked parsing down; without the lock, jsonargparse
    would build it (which shows this test can fail)."""
    from jsonargparse import CLI, _common

    def probe(x: dict[str, Any] | None = None) -> Any:
        return x

    def parse(marker: Path) -> Any:
        return CLI(probe, args=["--x", json.dumps({"h": _payload(marker)})])

    monkeypatch.setattr(_common, "parsing_settings", dict(_common.parsing_settings))
    monkeypatch.setitem(_common.parsing_settings, "instantiate_subclass_spec_in_any", True)
    monkeypatch.setitem(_common.parsing_settings, "import_path_verdicts", {})
    open_marker = tmp_path / "open"
    built = parse(open_marker)
    assert open_marker.exists() and not isinstance(built["h"], dict)
    built["h"].close()
    lock_down_parsing(commands())
    locked_marker = tmp_path / "locked"
    try:
        kept = parse(locked_marker)
        assert isinstance(kept["h"], dict)  # kept as plain data, never built
    except Exception as err:  # or refused outright by the import-path denylist
        assert "denylist" in str(err)
    assert not locked_marker.exists()


_PLAIN = (str, int, float, bool, type(None), list, dict, tuple, Path)


def _unsafe(where: str, hint: Any, found: list[str]) -> None:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object or origin in (type, typing.Callable):
        found.append(f"{where}: {hint}")
    elif origin is typing.Literal:
        return
    elif str(origin).startswith("collections.abc.Callable"):
        found.append(f"{where}: {hint}")
    elif origin is not None:
        for arg in typing.get_args(hint):
            _unsafe(where, arg, found)
    elif is_dataclass(hint):
        for name, sub in typing.get_type_hints(hint).items():
            _unsafe(f"{where}.{name}", sub, found)
    elif hint not in _PLAIN:
        found.append(f"{where}: {hint}")


def test_no_cli_option_is_typed_any_a_class_or_a_callable() -> None:
    """Walks every subcommand's parameters and, through them, every config dataclass field."""
    found: list[str] = []
    functions = cli_functions(commands())
    for func in functions:
        for name, hint in typing.get_type_hints(func).items():
            if name != "return":
                _unsafe(f"{func.__name__}.{name}", hint, found)
    assert len(functions) >= 15 and found == []
    # The walk itself catches what it must (it can fail).
    caught: list[str] = []
    _unsafe("probe", dict[str, Any], caught)
    _unsafe("probe", typing.Callable[[], int] | None, caught)
    _unsafe("probe", pickle.Pickler, caught)
    assert len(caught) == 3
