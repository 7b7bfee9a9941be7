"""Accuracy on groups of classes, for scenarios whose teacher and student share only part of
their label sets (a class map, `cmkd.classmap`): the student's test accuracy on its covered
classes (those some teacher class maps to, where distillation acts) and on its uncovered ones
(cross-entropy only), for every row, the no-KD student included.

A group's accuracy is the accuracy over its test samples: sum_c acc_c n_c / sum_c n_c, from the
per-class test accuracies and the per-class test supports each student cell keeps (a page's
compact store keeps the two group accuracies only).
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


def cell_groups(result: dict[str, Any], covered: tuple[str, ...]) -> dict[str, float] | None:
    """A student cell's best-on-validation test accuracy (fraction) over its covered and over
    its uncovered classes: from its per-class accuracies and test supports (a run store's
    cell), or as a compact store keeps them (`acc_by_group`). None for a cell without them
    (a teacher: its classes are not the student's)."""
    test = result.get("best", {}).get("test", {})
    if "acc_by_group" in test:
        return test["acc_by_group"]
    support, per_class = result.get("test_support"), test.get("acc_per_class")
    if not support or not per_class or set(per_class) != set(support):
        return None
    if not set(covered) <= set(support):
        return None
    out = {}
    for group in GROUPS:
        classes = [c for c in support if (c in covered) == (group == "covered")]
        n = sum(support[c] for c in classes)
        if n:
            out[group] = sum(per_class[c] * support[c] for c in classes) / n
    return out


def group_acc(
    cells: dict[int, dict[str, Any]], covered: tuple[str, ...], group: str
) -> dict[int, float]:
    """Per seed, the test accuracy (fraction) over the covered or the uncovered classes, for the
    cells that have it (`cell_groups`)."""
    out = {}
    for seed, cell in cells.items():
        groups = cell_groups(cell["result"], covered)
        if groups and group in groups:
            out[seed] = groups[group]
    return out


def group_paired(
    a: dict[int, dict], b: dict[int, dict], covered: tuple[str, ...], group: str
) -> list[float]:
    """a - b per seed over a class group, for the seeds both have."""
    xa, xb = group_acc(a, covered, group), group_acc(b, covered, group)
    return [xa[s] - xb[s] for s in sorted(set(xa) & set(xb))]
