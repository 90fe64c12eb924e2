"""Loss predictions at given ``(N, D)`` with bootstrap intervals and the extrapolation they make.

The interval is the 95% percentile interval of the prediction over the law's bootstrap draws
(``isoflop.laws.bootstrap``). The extrapolation factor is ``6 N D`` over the largest compute the law was fitted
to; past ``EXTRAPOLATION_LIMIT`` a warning says so (fits of Hoffmann et al. 2022 and Gadre et al. 2024 are
validated at most a few hundred times beyond their data, and errors grow with the distance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError, quote
from isoflop.laws.bootstrap import modified_residuals, with_residuals
from isoflop.laws.forms import AllocationLaw, Law
from isoflop.laws.intervals import ci95

EXTRAPOLATION_LIMIT = 10.0  # x the largest fitted compute; beyond it a prediction carries a warning


@dataclass(frozen=True)
class Prediction:
    """The law's loss at ``(n, d)``; ``ci95`` is ``[lo, hi]`` or ``None`` without bootstrap draws."""

    n: float
    d: float
    loss: float
    ci95: list[float] | None
    pi95: list[float] | None  # with run-to-run noise: the draws plus the fit's modified residuals
    extrapolation: float | None  # 6 n d / the largest fitted 6 N D; None for a law without its runs
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fitted_max_flops(law: Law) -> float | None:
    """The largest ``6 N D`` among the runs the law was fitted to (``None`` when it carries no runs)."""
    if law.runs_ is None or len(law.runs_) < 2:
        return None
    n, d = np.asarray(law.runs_[0], dtype=float), np.asarray(law.runs_[1], dtype=float)
    return float(np.max(6.0 * n * d))


def extrapolation_warning(flops: float, law: Law, what: str) -> tuple[float | None, str | None]:
    """``(factor, warning)`` for a prediction at ``flops``: the warning is set past ``EXTRAPOLATION_LIMIT``."""
    top = fitted_max_flops(law)
    if top is None:
        return None, None
    factor = flops / top
    if factor <= EXTRAPOLATION_LIMIT:
        return factor, None
    return factor, (
        f"{what} extrapolates {factor:.3g}x beyond the largest fitted compute ({top:.3g} FLOPs; "
        f"limit {EXTRAPOLATION_LIMIT:g}x); treat it as a guess"
    )


def parse_point(text: str) -> tuple[float, float]:
    """``"N,D"`` (e.g. ``"1.4e9,2.8e10"``) as two positive finite numbers."""
    parts = text.split(",")
    try:
        n, d = (float(p) for p in parts)
    except ValueError:
        raise IsoflopError(f"--predict takes N,D (e.g. 1.4e9,2.8e10), got {quote(text)}") from None
    if not (np.isfinite(n) and np.isfinite(d) and n > 0 and d > 0):
        raise IsoflopError(f"--predict {quote(text)}: N and D must be positive finite numbers")
    return n, d


def predict(law: Law, n: float, d: float) -> Prediction:
    """The loss of ``law`` at ``(n, d)`` with its bootstrap interval and extrapolation factor."""
    if isinstance(law, AllocationLaw):
        raise IsoflopError(
            "an Approach 1/2 law gives N_opt(C) and D_opt(C), not L(N, D); predict with an Approach 3 law "
            "(--approach 3)"
        )
    loss = float(law.predict(n, d))
    draws = _draws(law, n, d)
    factor, warning = extrapolation_warning(6.0 * n * d, law, f"the prediction at N={n:.3g}, D={d:.3g}")
    mixed = _with_every_residual(law, draws)  # the 95% prediction interval: their 2.5th and 97.5th percentiles
    return Prediction(n, d, loss, ci95(draws), None if mixed is None else ci95(mixed), factor, warning)


def _draws(law: Law, n: float, d: float) -> np.ndarray:
    """The loss at ``(n, d)`` of every bootstrap draw of ``law``."""
    return np.array([float(s.predict(n, d)) for s in law.sample_laws()])


def predictive_draws(law: Law, n: float, d: float) -> np.ndarray | None:
    """The loss at ``(n, d)`` of every bootstrap draw combined with every one of the fit's modified residuals
    (Davison & Hinkley 1997, Alg. 6.4, with all ``R x n`` pairs instead of one residual drawn per draw, so the
    2.5th and 97.5th percentiles carry no extra Monte-Carlo noise), in the objective's space; ``None`` without
    draws or runs. Pooling the draws of several laws gives their equal-weight mixture (model averaging)."""
    return _with_every_residual(law, _draws(law, n, d))


def _with_every_residual(law: Law, draws: np.ndarray) -> np.ndarray | None:
    if len(draws) < 2 or law.runs_ is None or len(law.runs_) != 3:
        return None
    try:
        r = modified_residuals(law)
    except IsoflopError:
        return None
    return with_residuals(law, draws[:, None], r[None, :]).ravel()
