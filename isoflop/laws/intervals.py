"""95% percentile bootstrap intervals (Efron & Tibshirani 1993, Ch. 13): the 2.5th and 97.5th percentiles of
the draws. Every interval isoflop reports is computed here."""

from __future__ import annotations

from typing import Any

import numpy as np

PERCENTILES = (2.5, 97.5)


def ci95(draws: Any) -> list[float] | None:
    """``[lo, hi]`` of the finite draws (``None`` entries and NaNs are skipped); ``None`` with fewer than two."""
    arr = np.asarray([v for v in np.ravel(np.asarray(draws, dtype=object)) if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if len(arr) < 2:
        return None
    lo, hi = np.percentile(arr, PERCENTILES)
    return [float(lo), float(hi)]


def ci95_band(draws: np.ndarray) -> tuple[list[float], list[float]]:
    """Pointwise ``(lo, hi)`` along a curve: ``draws`` has one row per bootstrap draw, one column per point."""
    lo, hi = np.percentile(np.asarray(draws, dtype=float), PERCENTILES, axis=0)
    return lo.tolist(), hi.tolist()
