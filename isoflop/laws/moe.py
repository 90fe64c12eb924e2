"""Mixture-of-experts scaling laws (torch-free), registered beside the dense forms of ``isoflop.laws.forms``.

* ``RoutedLaw`` (form ``moe_routed``): Clark et al. 2022, "Unified Scaling Laws for Routed Language Models",
  Eq. 1 with the saturating expert count of their Sec. 4:
  ``log10 L(N, E) = a log10 N + b log10 Ê + c log10 N log10 Ê + d``,
  ``1 / Ê = 1 / (E - 1 + (1 / E_start - 1 / E_max)^-1) + 1 / E_max``. ``N`` is the parameter count of the dense
  model the experts are added to (the active parameters), ``E`` the expert count; every run of the paper saw 130B
  tokens, so the law has no token term. Presets ``clark-sbase``, ``clark-rlr``, ``clark-hash`` (their Table 3).
* ``GranularityLaw`` (form ``moe_granularity``): Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of
  Experts", Eq. 9: ``L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta`` with ``N`` the total
  non-embedding parameters, ``D`` tokens and ``G`` the granularity (the dense MLP width over an expert's width; a
  token runs through ``G`` experts, so its compute is the dense model's). Fitted at expansion rate 64 (the expert
  parameters are 64x a dense MLP's; ``KRAJEWSKI_EXPANSION``). Preset ``krajewski`` (their Table 1), and
  ``krajewski-dense`` (their dense Chinchilla fit, Table 1).

Fitting (``fit_runs``, reached through ``isoflop.laws.fit.fit``): least squares on log loss. For fixed
nonlinear parameters both laws are linear in the rest (Clark: ``a, b, c, d`` given ``E_start, E_max``; Krajewski:
``c, a, g, b`` given ``alpha, beta, gamma``), so a grid of linear solves gives the starting point and
``scipy.optimize.least_squares`` refines all parameters together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from isoflop.errors import IsoflopError
from isoflop.laws.forms import FORMS, PRESETS, Law
from isoflop.structured import read_json_or_yaml

KRAJEWSKI_EXPANSION = 64  # Krajewski et al. 2024, Sec. 4: every MoE of the fit has 64x the dense MLP's parameters
CLARK_TOKENS = 130e9  # Clark et al. 2022, Sec. 3: every model trained on 130B tokens

_EMAX_GRID = np.geomspace(8.0, 5000.0, 24)
_ESTART_GRID = np.geomspace(1.01, 30.0, 24)
_EXP_GRID = np.linspace(0.03, 0.6, 20)
_GAMMA_GRID = np.linspace(0.05, 1.5, 15)


def saturated_experts(experts: Any, e_start: float, e_max: float) -> np.ndarray:
    """Clark et al. 2022, Sec. 4: ``Ê`` with ``1 / Ê = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max``;
    ``Ê(1) = E_start`` and ``Ê -> E_max`` as ``E`` grows."""
    e = np.asarray(experts, dtype=float)
    return 1.0 / (1.0 / (e - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


def _positive(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise IsoflopError(f"{name} of run {i} is {arr[i]!r}; values must be finite and positive, fix or drop that run")
    return arr


def _columns(minimum: int, what: str, **arrays: Any) -> list[np.ndarray]:
    out = [_positive(k, v) for k, v in arrays.items()]
    if len({len(x) for x in out}) != 1:
        raise IsoflopError(f"{', '.join(arrays)} have different lengths {[len(x) for x in out]}; one value per run")
    if len(out[0]) < minimum:
        raise IsoflopError(f"{what} needs at least {minimum} runs, got {len(out[0])}; add runs")
    return out


def _finish(law: Law, params: np.ndarray, resid: np.ndarray, runs: tuple[np.ndarray, ...], nfev: int) -> Law:
    law.params_ = dict(zip(law.param_names, (float(v) for v in params)))
    law.samples_, law.n_iter_, law.runs_ = None, int(nfev), runs
    law.info_ = {"n_points": int(len(runs[0])), "rmse_log_loss": float(np.sqrt(np.mean(resid**2))), "warnings": []}
    law.info_["objective"] = "least squares on log loss"
    return law


class RoutedLaw(Law):
    """Clark et al. 2022, Eq. 1 and Sec. 4 (see the module docstring). ``predict(N, E)``: loss of a dense model
    of ``N`` parameters with ``E`` experts per routed layer after 130B tokens (``E = 1`` is the dense model)."""

    form = "moe_routed"
    param_names = ("a", "b", "c", "d", "E_start", "E_max")
    positive = ("E_start", "E_max")

    def _log_loss(self, n: Any, experts: Any) -> np.ndarray:
        p = self._fitted()
        if p["E_start"] >= p["E_max"]:
            raise IsoflopError(f"E_start {p['E_start']:g} must be below E_max {p['E_max']:g} (Clark et al. 2022)")
        x = np.log10(np.asarray(n, dtype=float))
        y = np.log10(saturated_experts(experts, p["E_start"], p["E_max"]))
        return p["a"] * x + p["b"] * y + p["c"] * x * y + p["d"]

    def predict(self, n: Any, experts: Any = 1.0) -> np.ndarray:
        e = np.asarray(experts, dtype=float)
        if np.any(e < 1):
            raise IsoflopError(f"the expert count must be >= 1 (1 = dense), got {e.min():g}")
        return 10.0 ** self._log_loss(n, e)

    def effective_params(self, n: Any, experts: Any) -> np.ndarray:
        """Effective parameter count (Clark et al. 2022, Sec. 5.1): the dense ``N̄`` (``E = 1``) with the loss of
        ``N`` parameters and ``E`` experts: ``log N̄ = (log L(N, E) - d - b log E_start) / (a + c log E_start)``."""
        p = self._fitted()
        y1 = np.log10(p["E_start"])
        return 10.0 ** ((self._log_loss(n, experts) - p["d"] - p["b"] * y1) / (p["a"] + p["c"] * y1))

    def cutoff_params(self) -> float:
        """``N`` beyond which more experts stop helping (Clark et al. 2022, Sec. 4.2): ``b + c log10 N = 0``."""
        p = self._fitted()
        if p["c"] <= 0:
            return float("inf")
        return float(10.0 ** (-p["b"] / p["c"]))

    def fit_runs(self, n: Any, experts: Any, loss: Any) -> RoutedLaw:
        """Least squares on ``log10 L`` from a grid of linear solves (or from the law's own parameters)."""
        n, experts, loss = _columns(7, "a moe_routed fit (six parameters)", N=n, experts=experts, loss=loss)
        if len(np.unique(experts)) < 3 or len(np.unique(n)) < 2:
            raise IsoflopError("a moe_routed fit needs at least 3 expert counts and 2 model sizes; add runs")
        x, ly = np.log10(n), np.log10(loss)

        def linear(es: float, em: float) -> tuple[np.ndarray, float]:
            y = np.log10(saturated_experts(experts, es, em))
            X = np.stack([x, y, x * y, np.ones_like(x)], axis=1)
            coef, *_ = np.linalg.lstsq(X, ly, rcond=None)
            return coef, float(np.sum((X @ coef - ly) ** 2))

        if self.params_:
            start = np.array([self.params_[k] for k in self.param_names])
        else:
            best = min(
                ((linear(es, em), es, em) for es in _ESTART_GRID for em in _EMAX_GRID if es < em), key=lambda t: t[0][1]
            )
            start = np.concatenate([best[0][0], [best[1], best[2]]])

        def resid(theta: np.ndarray) -> np.ndarray:
            a, b, c, d, les, lem = theta
            es, em = np.exp(les), np.exp(lem)
            if es >= em:
                return np.full_like(ly, 1e3)
            y = np.log10(saturated_experts(experts, es, em))
            return a * x + b * y + c * x * y + d - ly

        theta0 = np.concatenate([start[:4], np.log(start[4:])])
        with np.errstate(all="ignore"):
            res = least_squares(resid, theta0, method="lm", xtol=1e-14, ftol=1e-14, max_nfev=20000)
        theta = np.concatenate([res.x[:4], np.exp(res.x[4:])])
        if not np.all(np.isfinite(theta)):
            raise IsoflopError("the moe_routed fit did not converge; add runs over more expert counts and sizes")
        return _finish(self, theta, res.fun * np.log(10.0), (n, experts, loss), res.nfev)


class GranularityLaw(Law):
    """Krajewski et al. 2024, Eq. 9 (see the module docstring). ``predict(N, D, G)`` with ``N`` total
    non-embedding parameters, ``D`` tokens and ``G`` granularity (``G = 1``: experts as wide as the dense MLP)."""

    form = "moe_granularity"
    param_names = ("a", "alpha", "b", "beta", "g", "gamma", "c")
    positive = ("a", "alpha", "b", "beta", "gamma")
    nonnegative = ("g", "c")

    def predict(self, n: Any, d: Any, granularity: Any = 1.0) -> np.ndarray:
        p = self._fitted()
        n, d, gr = (np.asarray(v, dtype=float) for v in (n, d, granularity))
        if np.any(gr < 1):
            raise IsoflopError(f"granularity must be >= 1 (1 = experts as wide as the dense MLP), got {gr.min():g}")
        return p["c"] + (p["g"] / gr ** p["gamma"] + p["a"]) / n ** p["alpha"] + p["b"] / d ** p["beta"]

    def fit_runs(self, n: Any, d: Any, granularity: Any, loss: Any) -> GranularityLaw:
        """Least squares on log loss from a grid of weighted linear solves over ``(alpha, beta, gamma)`` (or from
        the law's own parameters)."""
        n, d, gr, loss = _columns(
            8, "a moe_granularity fit (seven parameters)", N=n, D=d, granularity=_granularities(granularity), loss=loss
        )
        if len(np.unique(gr)) < 2:
            raise IsoflopError("a moe_granularity fit needs runs at 2 or more granularities; add runs")
        ll = np.log(loss)
        if self.params_:
            start = np.array([self.params_[k] for k in self.param_names])
        else:
            start = _granularity_start(np.log(n), np.log(d), np.log(gr), loss)

        def resid(theta: np.ndarray) -> np.ndarray:
            la, alpha, lb, beta, lg, gamma, lc = theta
            pred = np.exp(lc) + (np.exp(lg - gamma * np.log(gr)) + np.exp(la)) * n**-alpha + np.exp(lb) * d**-beta
            return np.log(pred) - ll

        floor = 1e-8
        keys = ("a", "b", "g", "c")
        theta0 = np.array(
            [np.log(max(v, floor)) if k in keys else v for k, v in zip(self.param_names, start)], dtype=float
        )
        with np.errstate(all="ignore"):
            res = least_squares(resid, theta0, method="trf", xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=20000)
        theta = np.array([np.exp(v) if k in keys else v for k, v in zip(self.param_names, res.x)])
        if not np.all(np.isfinite(theta)) or not np.all(theta[[1, 3, 5]] > 0):
            raise IsoflopError("the moe_granularity fit did not converge; add runs over more sizes, tokens and G")
        return _finish(self, theta, res.fun, (n, d, gr, loss), res.nfev)


def _granularities(granularity: Any) -> np.ndarray:
    """Granularities as floats, refused below 1."""
    gr = np.asarray(granularity, dtype=float).ravel()
    if np.any(gr < 1):
        i = int(np.flatnonzero(gr < 1)[0])
        raise IsoflopError(f"granularity of run {i} is {gr[i]!r}; it must be >= 1 (1 = experts as wide as the MLP)")
    return gr


def _granularity_start(log_n: np.ndarray, log_d: np.ndarray, log_g: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Best ``(a, alpha, b, beta, g, gamma, c)`` over the exponent grid by weighted linear least squares
    (weights ``1 / L``, so residuals approximate log residuals); coefficients floored at a small positive value."""
    al, be, ga = (v.ravel() for v in np.meshgrid(_EXP_GRID, _EXP_GRID, _GAMMA_GRID, indexing="ij"))
    w = 1.0 / loss
    xn = np.exp(-al[:, None] * log_n[None, :])
    xd = np.exp(-be[:, None] * log_d[None, :])
    xg = np.exp(-ga[:, None] * log_g[None, :]) * xn
    X = np.stack([np.ones_like(xn), xn, xg, xd], axis=2) * w[None, :, None]
    y = loss * w
    gram = np.einsum("pni,pnj->pij", X, X) + 1e-12 * np.eye(4)
    coef = np.linalg.solve(gram, np.einsum("pni,n->pi", X, y)[..., None])[..., 0]
    coef = np.maximum(coef, 1e-6)
    sse = np.sum((np.einsum("pni,pi->pn", X, coef) - y[None, :]) ** 2, axis=1)
    i = int(np.argmin(sse))
    c, a, g, b = coef[i]
    return np.array([a, al[i], b, be[i], g, ga[i], c])


MOE_FORMS: dict[str, type[Law]] = {RoutedLaw.form: RoutedLaw, GranularityLaw.form: GranularityLaw}
MOE_PRESETS_FILE = Path(__file__).with_name("moe_presets.yaml")
MOE_PRESETS: dict[str, dict[str, Any]] = read_json_or_yaml(MOE_PRESETS_FILE, "MoE law presets", "reinstall isoflop")

# Registered with the dense forms so that law files, presets and `isoflop fit --form` find them.
FORMS.update(MOE_FORMS)
PRESETS.update(MOE_PRESETS)
