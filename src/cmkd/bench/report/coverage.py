"""Accuracy on groups of classes, for scenarios whose teacher and student share only part of
their label sets (a class map, `cmkd.classmap`): the student's test accuracy on its covered
classes (those some teacher class maps to, where distillation acts) and on its uncovered ones
(cross-entropy only), for every row, the no-KD student included.

A group's accuracy is the accuracy over its test samples: sum_c acc_c n_c / sum_c n_c, from the
per-class test accuracies and the per-class test supports each student cell keeps.
"""

from __future__ import annotations

from typing import Any

COLUMNS = ("covered acc %", "Δ covered vs no-KD", "uncovered acc %", "Δ uncovered vs no-KD")
GROUPS = ("covered", "uncovered")


def covered_classes(scenario: dict[str, Any]) -> tuple[str, ...] | None:
    """The student classes a scenario's class map reaches (None: no class map)."""
    entries = scenario.get("class_map")
    if not entries:
        return None
    return tuple(sorted({s for s in entries.values() if s is not None}))


def group_acc(
    cells: dict[int, dict[str, Any]], covered: tuple[str, ...], group: str, which: str = "best"
) -> dict[int, float]:
    """Per seed, the test accuracy (fraction) over the covered or the uncovered classes, for the
    cells that keep per-class accuracies and supports (a teacher's classes are not the
    student's: it has none of these)."""
    out = {}
    for seed, cell in cells.items():
        result = cell["result"]
        support = result.get("test_support")
        per_class = result.get(which, {}).get("test", {}).get("acc_per_class")
        if not support or not per_class or set(per_class) != set(support):
            continue
        if not set(covered) <= set(support):
            continue
        classes = [c for c in support if (c in covered) == (group == "covered")]
        n = sum(support[c] for c in classes)
        if n:
            out[seed] = sum(per_class[c] * support[c] for c in classes) / n
    return out


def group_paired(
    a: dict[int, dict], b: dict[int, dict], covered: tuple[str, ...], group: str
) -> list[float]:
    """a - b per seed over a class group, for the seeds both have."""
    xa, xb = group_acc(a, covered, group), group_acc(b, covered, group)
    return [xa[s] - xb[s] for s in sorted(set(xa) & set(xb))]
