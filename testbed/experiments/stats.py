"""Statistics the experiments share: one confidence interval for every verdict.

A verdict compares means over independent repetitions (seeds in simulation, runs on the live
lab) with the 95 % Student-t interval of the mean, and calls a difference beyond chance only
when the interval of the paired differences leaves out zero.
"""
from __future__ import annotations

import numpy as np


def ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval (None values are left out; one value
    has no interval: its half-width is NaN)."""
    from scipy import stats
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def paired(a, b) -> dict:
    """The difference a − b over paired repetitions: its mean, 95 % half-width, and whether it
    is beyond chance (the interval leaves out zero)."""
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    m, h = ci95(diffs)
    return {"difference": m, "ci95": h, "pairs": len(diffs),
            "beyond_chance": bool(np.isfinite(h) and abs(m) > h)}
