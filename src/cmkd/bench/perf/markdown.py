"""How the perf page writes its numbers: plain values, ratios with their spread over repeats,
verdicts. Imports nothing heavy: `cmkd report` renders the page from its store alone."""

from __future__ import annotations

from typing import Any


def num(x: float | None, digits: int = 2) -> str:
    """A value, or n/a."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def times(spread: dict[str, float], digits: int = 2) -> str:
    """A ratio's median and its range over repeats: 'x1.23 (1.10-1.40)'."""
    return f"x{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def ms(spread: dict[str, float]) -> str:
    """Median seconds of a spread, in milliseconds."""
    return f"{1000 * spread['median']:.3g} ms"


def loads(values: list[float]) -> str:
    """1-minute load averages, as recorded per repeat."""
    return ", ".join(f"{v:.2f}" for v in values)


def verdict(ok: bool | None) -> str:
    """met / **not met** / not measured (None)."""
    if ok is None:
        return "not measured"
    return "met" if ok else "**not met**"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
