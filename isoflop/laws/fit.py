"""Fitting scaling laws: the three approaches of Hoffmann et al. 2022 (Sec. 3.1-3.3).

* Approach 1 (Sec. 3.1): the lower envelope of loss against FLOPs; at each compute level the run with the
  lowest loss gives ``(C, N_opt, D_opt)``; power laws ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` are fitted
  through them by least squares in log-log space.
* Approach 2 (Sec. 3.2): IsoFLOP profiles; per budget a parabola in ``log N`` through the losses, its minimum
  is ``N_opt(C)``; then the same power laws. The minimum loss per budget is also fitted by a saturating power
  law ``L_min(C) = L_inf + (C_0 / C)^gamma``.
* Approach 3 (Sec. 3.3, Eq. 2-3): the parametric law ``E + A / N^alpha + B / D^beta`` by a Huber loss
  (delta 1e-3) on log loss in the log-sum-exp parameterisation, minimised with L-BFGS from several starts.

Approach 3 is fast because for fixed exponents ``(alpha, beta)`` the law is linear in ``(E, A, B)``: a batch
of weighted linear least-squares solves over an exponent grid gives starting points close to the optimum, and
only the best few are refined by L-BFGS-B with the analytic gradient of ``isoflop.laws.huber``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy.optimize import minimize

from isoflop.errors import IsoflopError
from isoflop.laws import huber as H
from isoflop.laws.forms import (
    PRESETS,
    AllocationLaw,
    ChinchillaLaw,
    DataConstrainedLaw,
    KaplanLaw,
    Law,
    OvertrainingLaw,
    PowerLaw,
    SaturatingPowerLaw,
    TiedChinchillaLaw,
)

LawT = TypeVar("LawT", bound=Law)

# Exponent grid for the linear least-squares starting points (Approach 3).
_ALPHA_GRID = np.linspace(0.02, 1.5, 38)
_LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}


def check_runs(n: np.ndarray, d: np.ndarray, loss: np.ndarray, minimum: int, what: str) -> tuple[np.ndarray, ...]:
    """Validate run arrays: same length, finite, positive, and at least ``minimum`` points."""
    arrays = [np.asarray(x, dtype=float).ravel() for x in (n, d, loss)]
    if len({len(x) for x in arrays}) != 1:
        raise IsoflopError(f"N, D and loss have different lengths {[len(x) for x in arrays]}; give one value per run")
    for name, x in zip(("N", "D", "loss"), arrays):
        bad = ~np.isfinite(x) | (x <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IsoflopError(
                f"{name} of run {i} is {x[i]!r}: values must be finite and positive; fix or drop that run"
            )
    if len(arrays[0]) < minimum:
        raise IsoflopError(
            f"{what} needs at least {minimum} runs, got {len(arrays[0])}; add runs or choose another approach"
        )
    return tuple(arrays)


def training_flops(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``C = 6 N D`` (Kaplan et al. 2020, Sec. 2.1), refused when it overflows a float (e.g. N = D = 1e200)."""
    with np.errstate(over="ignore"):
        c = 6.0 * np.asarray(n, dtype=float) * np.asarray(d, dtype=float)
    if not np.all(np.isfinite(c)):
        i = int(np.flatnonzero(~np.isfinite(c))[0])
        raise IsoflopError(
            f"run {i}: C = 6 N D overflows (N={float(np.ravel(n)[i]):.3g}, D={float(np.ravel(d)[i]):.3g}); "
            "give N in parameters and D in tokens"
        )
    return c


def check_distinct(n: np.ndarray, d: np.ndarray, n_params: int, what: str) -> None:
    """Refuse a fit with fewer distinct (N, D) points than free parameters: repeated rows pin nothing down
    (50 copies of one run would otherwise "fit" five parameters)."""
    distinct = np.unique(np.stack([np.asarray(n, dtype=float), np.asarray(d, dtype=float)]), axis=1).shape[1]
    if distinct < n_params:
        raise IsoflopError(
            f"{what} fits {n_params} parameters but the runs hold only {distinct} distinct (N, D) point(s); "
            "add runs of other sizes or token counts"
        )


def drop_highest_loss(n: np.ndarray, d: np.ndarray, loss: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Drop the ``k`` runs with the highest loss (Besiroglu et al. 2024 drop the 5 highest-loss points)."""
    if k < 0:
        raise IsoflopError(f"--drop-highest-loss must be >= 0, got {k}")
    if k == 0:
        return n, d, loss
    if k >= len(loss):
        raise IsoflopError(f"cannot drop {k} of {len(loss)} runs; drop fewer")
    keep = np.sort(np.argsort(loss, kind="stable")[: len(loss) - k])
    return n[keep], d[keep], loss[keep]


# Approach 3 -------------------------------------------------------------------------------------
@dataclass
class Approach3Result:
    """The Approach 3 optimum. ``converged``: L-BFGS-B met its convergence test (``scipy``'s ``success``) at the
    returned point; ``n_iter``: L-BFGS-B iterations over every start and polish."""

    theta: np.ndarray  # (a, b, e, alpha, beta)
    objective: float
    converged: bool
    n_starts: int
    n_iter: int

    @property
    def params(self) -> dict[str, float]:
        a, b, e, alpha, beta = (float(x) for x in self.theta)
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def linear_starts(
    log_n: np.ndarray,
    log_d: np.ndarray,
    loss: np.ndarray,
    weights: np.ndarray | None = None,
    grid: np.ndarray = _ALPHA_GRID,
) -> np.ndarray:
    """Starting points ``(a, b, e, alpha, beta)``: for each ``(alpha, beta)`` on ``grid x grid`` solve the
    linear least squares ``L_i ~ E + A N_i^-alpha + B D_i^-beta`` with relative weights ``1 / L_i`` (so the
    residuals approximate the log residuals of the Huber objective). Returns shape ``(len(grid)^2, 5)``."""
    al, be = (x.ravel() for x in np.meshgrid(grid, grid, indexing="ij"))
    w = 1.0 / loss if weights is None else np.sqrt(weights) / loss
    xn = np.exp(-al[:, None] * log_n[None, :])
    xd = np.exp(-be[:, None] * log_d[None, :])
    X = np.stack([np.ones_like(xn), xn, xd], axis=2) * w[None, :, None]  # (P, n, 3)
    y = loss * w
    gram = np.einsum("pni,pnj->pij", X, X)
    rhs = np.einsum("pni,n->pi", X, y)
    scale = np.sqrt(np.einsum("pii->pi", gram)) + 1e-300  # Jacobi scaling for conditioning
    gram_s = gram / scale[:, :, None] / scale[:, None, :]
    coef = np.linalg.solve(gram_s + 1e-12 * np.eye(3), (rhs / scale)[..., None])[..., 0] / scale
    floor = 1e-6 * np.min(loss)
    e_, a_, b_ = (np.log(np.maximum(coef[:, i], floor)) for i in range(3))
    return np.stack([a_, b_, e_, al, be], axis=1)


def _refine(theta0: np.ndarray, log_n, log_d, log_l, weights) -> tuple[np.ndarray, float, bool, bool, int]:
    """One L-BFGS-B run: ``(theta, objective, finite, converged, iterations)``."""
    res = minimize(
        H.objective_and_grad,
        theta0,
        args=(log_n, log_d, log_l, weights),
        jac=True,
        method="L-BFGS-B",
        options=_LBFGS_OPTIONS,
    )
    ok = bool(np.all(np.isfinite(res.x)) and np.isfinite(res.fun))
    return res.x, float(res.fun), ok, bool(res.success), int(res.nit)


def fit_approach3(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    n_refine: int = 6,
    start: np.ndarray | None = None,
) -> Approach3Result:
    """Approach 3 (Hoffmann et al. 2022, Eq. 3): Huber (delta 1e-3) on log loss, log-sum-exp form, L-BFGS-B.

    ``n_refine`` distinct best linear-least-squares starts are refined (plus ``start`` if given, e.g. the
    full-data optimum during a bootstrap). The result is polished by restarting L-BFGS-B from the best point
    until the objective stops improving. Raises ``IsoflopError`` when no start reaches a finite optimum.
    """
    n, d, loss = check_runs(n, d, loss, 5, "Approach 3 (five parameters)")
    check_distinct(n, d, 5, "Approach 3")
    with H.single_threaded_blas(), np.errstate(all="ignore"):  # extreme runs: an inf start is dropped, not shown
        return _fit_approach3(n, d, loss, weights, n_refine, start)


def _fit_approach3(n, d, loss, weights, n_refine: int, start) -> Approach3Result:
    n, d, loss = check_runs(n, d, loss, 5, "Approach 3 (five parameters)")
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    w = None if weights is None else np.asarray(weights, dtype=float)
    starts = [] if start is None else [np.asarray(start, dtype=float)]
    if n_refine > 0:
        cand = linear_starts(log_n, log_d, loss, w)
        obj = H.batch_objective(cand, log_n, log_d, log_l, w)
        order = np.argsort(np.where(np.isfinite(obj), obj, np.inf))
        starts.extend(cand[order[:n_refine]])
    best, best_f, iters, any_ok, converged = None, np.inf, 0, False, False
    for theta0 in starts:
        x, f, ok, success, nit = _refine(theta0, log_n, log_d, log_l, w)
        iters += nit
        if ok and f < best_f:
            best, best_f, any_ok, converged = x, f, True, success
    if not any_ok:
        raise IsoflopError(
            "Approach 3 did not converge to a finite optimum; check the runs "
            "(too few, or loss not decreasing with N and D)"
        )
    for _ in range(20):  # polish: L-BFGS-B restarts from its own optimum while that still helps
        x, f, ok, success, nit = _refine(best, log_n, log_d, log_l, w)
        iters += nit
        if not ok or f >= best_f * (1 - 1e-12):
            break
        best, best_f, converged = x, f, success
    if not theta_is_sane(best):
        a, b, e, alpha, beta = best
        raise IsoflopError(
            f"Approach 3 did not converge (alpha {alpha:.3g}, beta {beta:.3g}, log A {a:.3g}, log B {b:.3g}); "
            "the runs do not constrain the law: add runs over a wider range of N and D"
        )
    return Approach3Result(theta=best, objective=best_f, converged=converged, n_starts=len(starts), n_iter=iters)


MAX_EXPONENT = 3.0  # published LLM exponents are 0.05-0.8 (Kaplan 2020; Hoffmann 2022; Besiroglu 2024)
MAX_LOG_COEF = 100.0  # A, B up to e^100: beyond that the term is numerically meaningless


def theta_is_sane(theta: np.ndarray) -> bool:
    """A usable Approach 3 optimum: finite parameters, ``log A, log B, log E <= 100`` and exponents in ``(0, 3]``.
    Optima outside are what poorly conditioned data produce (A ~ 1e50 with alpha ~ 9): not reported as a law."""
    theta = np.asarray(theta, dtype=float)
    return bool(
        np.all(np.isfinite(theta))
        and np.all(theta[:3] <= MAX_LOG_COEF)
        and 0 < theta[3] <= MAX_EXPONENT
        and 0 < theta[4] <= MAX_EXPONENT
    )


def fit_warnings(params: dict[str, float], loss: np.ndarray) -> list[str]:
    """Signs that the runs constrain the law poorly (reported with the fit, never silently)."""
    out = []
    if params["E"] < 0.05 * float(np.min(loss)):
        out.append(f"E = {params['E']:.3g} is near zero: the runs do not pin down the irreducible loss")
    for key in ("alpha", "beta"):
        if params[key] > 1.0:
            out.append(
                f"{key} = {params[key]:.3g} is far above published values (0.1-0.8): too narrow a range of N or D"
            )
    return out


# One-variable saturating power law --------------------------------------------------------------
def fit_saturating(x: np.ndarray, loss: np.ndarray) -> SaturatingPowerLaw:
    """Fit ``L = L_inf + (x0 / x)^alpha`` by least squares on log loss.

    Starts: for ``L_inf`` at fractions of ``min(L)`` the law is a straight line ``log(L - L_inf) = alpha log x0 -
    alpha log x``, solved by linear regression; the best start is refined with L-BFGS-B over
    ``(log L_inf, log x0, alpha)``. Raises ``IsoflopError`` when the data do not decrease or the fit diverges.
    """
    return fit(SaturatingPowerLaw("fitted", "fitted by isoflop (least squares on log loss)"), x, loss)


def _fit_saturating(law: SaturatingPowerLaw, x: np.ndarray, loss: np.ndarray) -> SaturatingPowerLaw:
    x, _, loss = check_runs(
        x, np.ones_like(np.asarray(x, dtype=float)), loss, 3, "a saturating power law (3 parameters)"
    )
    lx, ll = np.log(x), np.log(loss)

    def sse(p: np.ndarray) -> float:
        linf, lx0, alpha = p
        with np.errstate(over="ignore", invalid="ignore"):
            pred = np.logaddexp(linf, alpha * (lx0 - lx))
        val = float(np.sum((pred - ll) ** 2))
        return val if np.isfinite(val) else 1e300

    best = None
    for frac in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995):
        linf = frac * loss.min()
        slope, icpt = np.polyfit(lx, np.log(loss - linf), 1)
        alpha = -slope
        if alpha <= 0:
            continue
        p0 = np.array([np.log(max(linf, 1e-6 * loss.min())), icpt / alpha, alpha])
        f0 = sse(p0)
        if best is None or f0 < best[1]:
            best = (p0, f0)
    if best is None:
        raise IsoflopError("loss does not decrease with x; a saturating power law does not fit these points")
    with H.single_threaded_blas():
        res = minimize(sse, best[0], method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
    linf, lx0, alpha = res.x
    if not (np.all(np.isfinite(res.x)) and alpha > 0 and np.isfinite(np.exp(lx0))):
        raise IsoflopError("the saturating power-law fit did not converge; add points over a wider range")
    law.params_ = {"L_inf": float(np.exp(linf)), "x0": float(np.exp(lx0)), "alpha": float(alpha)}
    law.info_ = {"sse_log": float(res.fun), "n_points": int(len(x))}
    law.n_iter_, law.runs_ = int(res.nit), (x, loss)
    return law


def _fit_log_least_squares(law: LawT, n: np.ndarray, d: np.ndarray, loss: np.ndarray, extra: tuple = ()) -> LawT:
    """Least squares on log loss for a law with positive parameters, ``law.predict(n, d, *extra)``, from ``law``'s
    current parameters or its preset's (L-BFGS-B over log parameters). Fits ``KaplanLaw`` and ``DataConstrainedLaw``."""
    if not law.params_:
        law.params_ = dict(PRESETS["kaplan" if isinstance(law, KaplanLaw) else "muennighoff"]["params"])
    n, d, loss = check_runs(n, d, loss, len(law.param_names) + 1, f"a {law.form} fit")
    names, ll = law.param_names, np.log(loss)
    p0 = np.log([law.params_[k] for k in names])

    def sse(lp: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            pred = law.with_params(dict(zip(names, np.exp(lp)))).predict(n, d, *extra)
            val = float(np.sum((np.log(pred) - ll) ** 2))
        return val if np.isfinite(val) else 1e300

    with H.single_threaded_blas():
        res = minimize(sse, p0, method="L-BFGS-B", options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    if not np.all(np.isfinite(np.exp(res.x))) or res.fun >= 1e300:
        raise IsoflopError(f"the {law.form} fit did not converge; start from other parameters or add runs")
    law.params_ = dict(zip(names, (float(v) for v in np.exp(res.x))))
    law.samples_, law.info_, law.n_iter_ = None, {"n_points": int(len(n))}, int(res.nit)
    law.runs_ = (n, d, *extra, loss)
    return law


# Approaches 1 and 2 ------------------------------------------------------------------------------
def _power_law(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``log y = exponent log C + log k``; returns ``(k, exponent)``."""
    slope, icpt = np.polyfit(np.log(c), np.log(y), 1)
    return float(np.exp(icpt)), float(slope)


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw:
    """``y = k x^exponent`` by least squares in log-log space (``_power_law``)."""
    k, exponent = _power_law(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    law = PowerLaw("fitted", "fitted by isoflop (least squares in log-log space)", k=k, exponent=exponent)
    law.info_ = {"n_points": int(len(x))}
    return law


def fit_loss_envelope(c: np.ndarray, loss: np.ndarray) -> SaturatingPowerLaw | PowerLaw:
    """The minimum loss against compute, ``L*(C)``: ``L_inf + (C_0 / C)^gamma`` (``fit_saturating``) through four or
    more points, a pure power law ``k C^-gamma`` (two parameters) through fewer."""
    return fit_saturating(c, loss) if len(c) >= 4 else fit_power_law(c, loss)


def _set_allocation(law: AllocationLaw, points: list[dict[str, float]], runs: tuple[np.ndarray, ...]) -> AllocationLaw:
    """Power laws through the optima ``points`` (and ``L_min(C)`` through their losses) into ``law``."""
    c = np.array([p["C"] for p in points])
    k_n, a = _power_law(c, np.array([p["N_opt"] for p in points]))
    k_d, b = _power_law(c, np.array([p["D_opt"] for p in points]))
    law.params_ = {"k_N": k_n, "a": a, "k_D": k_d, "b": b}
    law.loss_law = _loss_vs_compute(points)
    law.minima_ = points
    law.samples_, law.info_, law.runs_ = None, {"approach": law.approach, "n_budgets": len(points)}, runs
    return law


def _new_allocation(approach: int, param_kind: str) -> AllocationLaw:
    return AllocationLaw(
        f"approach{approach}",
        f"fitted by isoflop, Hoffmann et al. 2022 Approach {approach}",
        approach=approach,
        param_kind=param_kind,
    )


def _loss_vs_compute(points: list[dict[str, float]]) -> SaturatingPowerLaw | None:
    if len(points) < 4:
        return None
    try:
        return fit_saturating(np.array([p["C"] for p in points]), np.array([p["loss"] for p in points]))
    except IsoflopError:
        return None


def fit_approach1(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    c: np.ndarray | None = None,
    *,
    param_kind: str = "total",
) -> AllocationLaw:
    """Approach 1 (Hoffmann et al. 2022, Sec. 3.1): the lower envelope of loss against FLOPs.

    A run (or a point on a training curve) is on the envelope when every run with less compute has a higher
    loss; envelope points give ``(C, N, D)`` and power laws are fitted through them. ``c`` defaults to ``6 N D``.
    """
    return fit(_new_allocation(1, param_kind), n, d, loss, c)


def _fit_approach1(
    law: AllocationLaw, n: np.ndarray, d: np.ndarray, loss: np.ndarray, c: np.ndarray | None
) -> AllocationLaw:
    n, d, loss = check_runs(n, d, loss, 3, "Approach 1")
    c = training_flops(n, d) if c is None else check_runs(c, n, loss, 3, "Approach 1")[0]
    order = np.lexsort((loss, c))
    points, best = [], np.inf
    for i in order:
        if loss[i] < best:
            best = loss[i]
            points.append({"C": float(c[i]), "N_opt": float(n[i]), "D_opt": float(d[i]), "loss": float(loss[i])})
    if len({p["N_opt"] for p in points}) < 2 or len(points) < 3:
        sizes = len({p["N_opt"] for p in points})
        raise IsoflopError(
            f"the loss envelope has only {len(points)} points with {sizes} model sizes; "
            "Approach 1 needs runs of several sizes over a range of compute"
        )
    return _set_allocation(law, points, (n, d, loss, c))


def group_budgets(c: np.ndarray, tolerance_dex: float = 0.05) -> np.ndarray:
    """Group runs into IsoFLOP budgets: sorted ``log10 C`` values split wherever a gap exceeds ``tolerance_dex``."""
    lc = np.log10(c)
    order = np.argsort(lc)
    labels = np.empty(len(c), dtype=int)
    group = 0
    for k, i in enumerate(order):
        if k and lc[i] - lc[order[k - 1]] > tolerance_dex:
            group += 1
        labels[i] = group
    return labels


ISOFLOP_GRID_SHARE = 0.5  # least share of runs in budgets of 3+ runs for Approach 2


def _check_isoflop_grid(labels: np.ndarray, tolerance_dex: float) -> None:
    """Approach 2 needs IsoFLOP profiles: most runs must sit in budgets of 3+ runs (``ISOFLOP_GRID_SHARE``). Runs
    at scattered compute (e.g. Gadre et al. 2024's grid of sizes x token multipliers) are refused rather than fitted
    through accidental triples; digitised IsoFLOP data (Chinchilla's Figure 4: 94% of runs) passes."""
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    share = float(sizes[sizes >= 3].sum() / sizes.sum())
    if share < ISOFLOP_GRID_SHARE:
        raise IsoflopError(
            f"Approach 2 needs an IsoFLOP grid: grouped by compute (within {tolerance_dex:g} dex of 6ND) only "
            f"{share:.0%} of the runs sit in budgets of 3+ runs (need {ISOFLOP_GRID_SHARE:.0%}); use --approach 3, or "
            "train several sizes at each budget"
        )


def tokens_at(n_opt: float, n: np.ndarray, d: np.ndarray) -> float:
    """Tokens of an IsoFLOP group at size ``n_opt``: the runs' ``(N, D)`` interpolated in log-log.

    Along an IsoFLOP profile ``D = C / f(N)`` with ``f`` the training FLOPs per token. With ``f = 6N``
    (Kaplan et al. 2020, Eq. 2.1) ``log D`` is linear in ``log N`` and this is exactly ``C / (6 N_opt)``; with
    exact accounting (attention, the output head) ``f`` exceeds ``6N`` for small models, and ``C / (6 N_opt)``
    would overstate the tokens that were actually trained.
    """
    order = np.argsort(n)
    return float(np.exp(np.interp(np.log(n_opt), np.log(n[order]), np.log(d[order]))))


@dataclass
class IsoflopMinimum:
    """The vertex of one IsoFLOP profile (Hoffmann et al. 2022, Sec. 3.2): the parabola
    ``L = p0 + p1 x + p2 x^2`` in ``x = ln N`` through the group's runs (``coef = (p2, p1, p0)``)."""

    group: Any  # the group's label
    flops: float  # geometric mean of the group's C
    n_opt: float
    d_opt: float
    loss: float
    runs: int
    coef: tuple[float, float, float]

    def point(self) -> dict[str, float]:
        """The ``minima_`` entry of an Approach 2 law."""
        return {"C": self.flops, "N_opt": self.n_opt, "D_opt": self.d_opt, "loss": self.loss, "runs": self.runs}


def isoflop_minima(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    c: np.ndarray,
    labels: np.ndarray,
) -> tuple[list[IsoflopMinimum], int]:
    """Per group with at least three model sizes, the parabola's vertex when it opens upwards and lies inside the
    sizes tried; ``D_opt`` is the group's tokens interpolated at the vertex (``tokens_at``). Returns the minima
    and the number of groups skipped."""
    minima, skipped = [], 0
    for g in np.unique(labels):
        idx = labels == g
        x = np.log(n[idx])
        if len(np.unique(np.round(x, 6))) < 3:
            skipped += 1
            continue
        p2, p1, p0 = np.polyfit(x, loss[idx], 2)
        vertex = -p1 / (2 * p2) if p2 > 0 else np.nan
        if not (np.isfinite(vertex) and x.min() <= vertex <= x.max()):
            skipped += 1
            continue
        n_opt = float(np.exp(vertex))
        minima.append(
            IsoflopMinimum(
                group=g,
                flops=float(np.exp(np.mean(np.log(c[idx])))),
                n_opt=n_opt,
                d_opt=tokens_at(n_opt, n[idx], d[idx]),
                loss=float(p0 + p1 * vertex + p2 * vertex**2),
                runs=int(idx.sum()),
                coef=(float(p2), float(p1), float(p0)),
            )
        )
    return minima, skipped


def fit_approach2(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    c: np.ndarray | None = None,
    *,
    groups: np.ndarray | None = None,
    tolerance_dex: float = 0.05,
    param_kind: str = "total",
) -> AllocationLaw:
    """Approach 2 (Hoffmann et al. 2022, Sec. 3.2): IsoFLOP profiles.

    Runs are grouped by budget (``groups``, else by ``group_budgets``); in each group with at least three model
    sizes a parabola ``L = p0 + p1 x + p2 x^2`` in ``x = log N`` is fitted and its vertex, when the parabola
    opens upwards and the vertex lies inside the sizes tried, is ``(N_opt, L_min)``; ``D_opt`` is the group's
    tokens interpolated at the vertex (``tokens_at``), which is ``C / (6 N_opt)`` when ``C = 6 N D``.
    Power laws through the vertices give ``N_opt(C)`` and ``D_opt(C)``.
    """
    return fit(_new_allocation(2, param_kind), n, d, loss, c, groups=groups, tolerance_dex=tolerance_dex)


def _fit_approach2(
    law: AllocationLaw,
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    c: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    tolerance_dex: float = 0.05,
) -> AllocationLaw:
    n, d, loss = check_runs(n, d, loss, 3, "Approach 2")
    c = training_flops(n, d) if c is None else check_runs(c, n, loss, 3, "Approach 2")[0]
    if groups is None:
        labels = group_budgets(c, tolerance_dex)
        _check_isoflop_grid(labels, tolerance_dex)
    else:
        labels = np.asarray(groups)
    minima, skipped = isoflop_minima(n, d, loss, c, labels)
    if len(minima) < 2:
        raise IsoflopError(
            f"only {len(minima)} IsoFLOP budget(s) have an interior parabola minimum ({skipped} skipped); Approach 2 "
            "needs at least 2 budgets with 3+ model sizes around the optimum"
        )
    # A bootstrap resamples runs and keeps their budget labels.
    _set_allocation(law, [m.point() for m in minima], (n, d, loss, c, labels))
    law.info_["budgets_skipped"] = skipped
    return law


# Sums of powers under either objective (tied or free exponents) ---------------------------------------
def _objectives(thetas: np.ndarray, log_n, log_d, loss, log_l, tied: bool, objective: str) -> np.ndarray:
    """The objective for each row ``(log A, log B, log E, alpha[, beta])`` of ``thetas`` (shape ``(k, 4 or 5)``):
    Huber (delta 1e-3) on log loss, or squares on raw loss."""
    a, b, e, alpha = (thetas[:, i : i + 1] for i in range(4))
    beta = alpha if tied else thetas[:, 4:5]
    pred = np.exp(e) + np.exp(a - alpha * log_n[None, :]) + np.exp(b - beta * log_d[None, :])
    if objective == "ls_raw":
        return np.sum((pred - loss[None, :]) ** 2, axis=1)
    return np.sum(H.huber(np.log(pred) - log_l[None, :]), axis=1)


def _objective(theta: np.ndarray, *args: Any) -> float:
    return float(_objectives(np.asarray(theta)[None, :], *args)[0])


def fit_sum_of_powers(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    tied: bool,
    objective: str,
    n_refine: int = 6,
    start: dict[str, float] | None = None,
) -> tuple[dict[str, float], float, bool, int]:
    """``L = E + A / N^alpha + B / D^beta`` (``beta = alpha`` when ``tied``) under ``objective``: starts from the
    linear least squares of ``linear_starts`` (the diagonal of its grid when tied), the best ``n_refine`` refined by
    L-BFGS-B (numerical gradient; exponents bounded to ``(0, MAX_EXPONENT]``). Returns ``(params, objective,
    converged, iterations)``. With ``start`` (e.g. the full-data optimum, in a bootstrap) only it and the best
    linear start are refined."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    cand = linear_starts(log_n, log_d, loss)
    if tied:
        cand = cand[np.isclose(cand[:, 3], cand[:, 4])][:, :4]
    args = (log_n, log_d, loss, log_l, tied, objective)
    values = _objectives(cand, *args)
    order = np.argsort(np.where(np.isfinite(values), values, np.inf))
    cand = cand[order[: 1 if start else n_refine]]
    if start:
        first = [np.log(start["A"]), np.log(start["B"]), np.log(start["E"]), start["alpha"]]
        cand = np.vstack([first + ([] if tied else [start["beta"]]), cand])
    bounds = [(None, MAX_LOG_COEF)] * 3 + [(1e-4, MAX_EXPONENT)] * (1 if tied else 2)
    best, best_f, converged, iters = None, np.inf, False, 0
    for theta0 in cand:
        res = minimize(_objective, theta0, args=args, method="L-BFGS-B", bounds=bounds)
        iters += int(res.nit)
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and res.fun < best_f:
            best, best_f, converged = res.x, float(res.fun), bool(res.success)
    if best is None:
        raise IsoflopError("the fit did not reach a finite optimum; check the runs (too few, or loss not decreasing)")
    a, b, e, alpha = (float(x) for x in best[:4])
    params = {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha}
    if not tied:
        params["beta"] = float(best[4])
    return params, best_f, converged, iters


def _fit_powers_into(law: Law, n: Any, d: Any, loss: Any, tied: bool) -> Law:
    minimum = len(law.param_names)
    n, d, loss = check_runs(n, d, loss, minimum, f"a {law.form} fit ({len(law.param_names)} parameters)")
    start = None
    if law.params_:  # a refit (bootstrap): start from the current optimum, in (E, A, B, alpha[, beta])
        start = dict(law.params_)
        if isinstance(law, OvertrainingLaw):
            start = OvertrainingLaw.overtraining_to_tied(start)
    params, value, converged, iters = fit_sum_of_powers(n, d, loss, tied=tied, objective=law.objective, start=start)
    warnings = fit_warnings({**params, "beta": params.get("beta", params["alpha"])}, loss)
    if isinstance(law, OvertrainingLaw):
        params = OvertrainingLaw.tied_to_overtraining(params)
    law.params_, law.samples_, law.n_iter_, law.runs_ = params, None, iters, (n, d, loss)
    if hasattr(law, "theta_"):
        law.theta_ = None  # the Huber-specific bootstrap path does not apply
    law.info_ = {
        "objective": law.objective,
        "objective_value": value,
        "converged": converged,
        "n_points": int(len(n)),
        "warnings": warnings,
    }
    return law


# One entry point ---------------------------------------------------------------------------------
def fit_chinchilla(
    law: ChinchillaLaw,
    n: Any,
    d: Any,
    loss: Any,
    *,
    drop_highest: int = 0,
    weights: Any = None,
) -> ChinchillaLaw:
    """Approach 3 (``fit_approach3``) into ``law``; raises when L-BFGS-B does not converge."""
    n, d, loss = check_runs(n, d, loss, 5, "Approach 3")
    n, d, loss = drop_highest_loss(n, d, loss, drop_highest)
    res = fit_approach3(n, d, loss, weights=weights)
    if not res.converged:
        raise IsoflopError(
            f"Approach 3 did not converge (params {res.params}); the runs do not constrain the law, add runs over a "
            "wider range of N and D"
        )
    law.params_, law.theta_, law.samples_, law.n_iter_ = res.params, res.theta, None, res.n_iter
    law.info_ = {
        "approach": 3,
        "objective": res.objective,
        "n_points": int(len(n)),
        "dropped_highest_loss": int(drop_highest),
        "warnings": fit_warnings(res.params, loss),
    }
    law.runs_ = (n, d, loss)
    return law


def fit(law: LawT, *runs: Any, **options: Any) -> LawT:
    """Fit ``law`` to ``runs`` in place (scikit-learn style: it fills ``params_``, ``info_``, ``n_iter_`` and
    ``runs_`` and clears ``samples_``) and return it. The runs, by form:

    * ``ChinchillaLaw``: ``(N, D, loss)`` by Approach 3; options ``drop_highest``, ``weights``;
    * ``KaplanLaw``: ``(N, D, loss)``; ``DataConstrainedLaw``: ``(N, D, unique_tokens, loss)`` (least squares on
      log loss from the law's parameters, or its preset's when it has none);
    * ``SaturatingPowerLaw``: ``(x, loss)``;
    * ``AllocationLaw``: ``(N, D, loss[, C])`` by its ``approach`` (1 or 2); Approach 2 options ``groups``,
      ``tolerance_dex``.
    """
    if isinstance(law, ChinchillaLaw) and law.objective == "huber_log":
        return fit_chinchilla(law, *runs, **options)
    if isinstance(law, (ChinchillaLaw, TiedChinchillaLaw, OvertrainingLaw)):
        return _fit_powers_into(law, *runs, tied=not isinstance(law, ChinchillaLaw))
    if isinstance(law, KaplanLaw):
        return _fit_log_least_squares(law, *runs)
    if isinstance(law, DataConstrainedLaw):
        n, d, unique, loss = runs
        n, d, loss = check_runs(n, d, loss, len(law.param_names) + 1, "a data-constrained fit")
        unique = check_runs(unique, d, loss, 1, "a data-constrained fit")[0]
        return _fit_log_least_squares(law, n, d, loss, extra=(unique,))
    if isinstance(law, SaturatingPowerLaw):
        return _fit_saturating(law, *runs)
    if isinstance(law, AllocationLaw):
        return _fit_approach1(law, *runs) if law.approach == 1 else _fit_approach2(law, *runs, **options)
    if hasattr(law, "fit_runs"):  # forms that fit themselves (isoflop.laws.moe)
        return law.fit_runs(*runs)
    raise IsoflopError(
        f"{law.form} laws cannot be fitted; fit a Chinchilla, Kaplan, data-constrained, saturating or allocation law"
    )


def refit_params(law: Law, *runs: np.ndarray) -> dict[str, float]:
    """The parameters ``fit`` gives on ``runs`` starting from ``law``'s own (one bootstrap resample)."""
    return fit(law.with_params(law.params_), *runs).params_
