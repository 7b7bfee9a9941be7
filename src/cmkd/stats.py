"""Summary and paired statistics of scores over seeds: the one place they are computed.

Scores are fractions (0.82); everything returned is in percent or percentage points. The
paired interval is the 95 % Student t interval of the mean per-seed difference
(`scipy.stats.ttest_1samp(...).confidence_interval`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats


def mean_std(values: Sequence[float]) -> str:
    """'mean ± std' in percent (sample std; 0 for a single value)."""
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.fmean(pct):.1f} ± {std:.1f}"


def interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high) in points of per-seed differences (fractions); None for no values.
    With one value, or differences that are all equal, the interval is the mean itself."""
    pct = [100 * d for d in diffs]
    if not pct:
        return None
    mean = statistics.fmean(pct)
    if len(pct) < 2 or statistics.pstdev(pct) == 0:
        return mean, mean, mean
    ci = stats.ttest_1samp(pct, 0.0).confidence_interval(level)
    return mean, float(ci.low), float(ci.high)


def mean_ci(diffs: Sequence[float]) -> str:
    """'+mean [low, high]' in points: the 95 % t interval of the mean difference."""
    found = interval(diffs)
    if found is None:
        return ""
    mean, low, high = found
    if len(diffs) < 2:
        return f"{mean:+.1f}"
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def excludes_zero(diffs: Sequence[float]) -> bool:
    """Whether the 95 % interval lies wholly above or wholly below 0 (needs 2+ values)."""
    found = interval(diffs)
    return found is not None and len(diffs) > 1 and (found[1] > 0 or found[2] < 0)


def width(diffs: Sequence[float]) -> float:
    """Width of the 95 % interval in points (inf with fewer than 2 values)."""
    found = interval(diffs)
    return math.inf if found is None or len(diffs) < 2 else found[2] - found[1]
