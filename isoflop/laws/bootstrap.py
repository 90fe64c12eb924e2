"""Bootstrap intervals for Approach 3 (Besiroglu et al. 2024, Sec. 3: resample the runs with replacement, refit).

Each refit starts from the full-data optimum and minimises the same Huber objective (delta 1e-3 on log loss)
with a trust-region Gauss-Newton method: ``scipy.optimize.least_squares(loss="huber", f_scale=delta)`` minimises
``sum_i delta^2 rho((r_i / delta)^2)``, which is exactly twice ``sum_i Huber_delta(r_i)``, so the minimiser is
the same; it needs about ten Jacobian evaluations where L-BFGS needs a few hundred on this non-smooth objective.
Resamples whose refit fails, is not finite, or has exponents outside ``(0, 10)`` are dropped and counted:
the intervals never include garbage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import least_squares

from isoflop.errors import IsoflopError
from isoflop.laws import huber as H
from isoflop.laws.fit import theta_is_sane


def refit_huber(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[np.ndarray, bool]:
    """Refine ``theta`` on the given points; returns ``(theta, ok)``."""
    with np.errstate(all="ignore"):
        res = least_squares(
            H.residuals, theta, jac=H.jacobian, args=(log_n, log_d, log_l), loss="huber", f_scale=H.HUBER_DELTA,
            method="trf", ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=500,
        )
    return res.x, bool(res.status > 0 and theta_is_sane(res.x))


def bootstrap_approach3(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, theta: np.ndarray, n_samples: int = 1000, seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``n_samples`` refits on resampled runs. Returns samples ``(R_ok, 5)`` as ``(E, A, B, alpha, beta)`` and
    counts ``{requested, converged, dropped, seed}``; raises ``IsoflopError`` when fewer than half converge."""
    if n_samples < 2:
        raise IsoflopError(f"--bootstrap needs at least 2 resamples, got {n_samples}")
    with H.single_threaded_blas():
        return _bootstrap(n, d, loss, theta, n_samples, seed)


def _bootstrap(n, d, loss, theta, n_samples: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    size = len(n)
    rows, dropped = [], 0
    for _ in range(n_samples):
        idx = rng.integers(0, size, size)
        if len(np.unique(idx)) < 5:
            dropped += 1
            continue
        x, ok = refit_huber(np.asarray(theta, dtype=float), log_n[idx], log_d[idx], log_l[idx])
        if not ok:
            dropped += 1
            continue
        a, b, e, alpha, beta = x
        rows.append([np.exp(e), np.exp(a), np.exp(b), alpha, beta])
    stats = {"requested": int(n_samples), "converged": len(rows), "dropped": int(dropped), "seed": int(seed)}
    if len(rows) < max(2, n_samples // 2):
        raise IsoflopError(f"only {len(rows)} of {n_samples} bootstrap refits converged; the runs do not constrain the law, add runs")
    return np.asarray(rows), stats
