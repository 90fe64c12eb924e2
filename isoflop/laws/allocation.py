"""Compute-optimal allocation: from a budget (FLOPs) or a target loss to ``N``, ``D`` and the predicted loss.

* Plain budget, ``C = 6 N D`` (Kaplan et al. 2020, Sec. 2.1) with ``N`` the law's count (``law.param_kind``:
  total, or non-embedding as in Kaplan's Eq. 2.1): the closed form of the law when it has one
  (Hoffmann et al. 2022, Eq. 4), else the minimum of ``L(N, C / 6N)`` over ``log N``.
* ``unique_tokens`` U: the loss is the data-constrained law of Muennighoff et al. 2023 (Eq. 5), so repeating
  data beyond a few epochs buys little; the result reports the epochs ``D / U`` and the repetition cost
  ``L(N, D; U) - L(N, D)`` against the same run on fresh data.
* ``inference_tokens`` T: lifetime compute ``6 N D + 2 N T`` (Sardana et al. 2024, "Beyond Chinchilla-Optimal",
  Eq. 1-2). On an iso-loss curve it is minimal where ``(6D + 2T) dL/dD = 6N dL/dN`` (Lagrange condition); with
  a training budget C the plan is the point of the budget line ``6ND = C`` where that condition holds, i.e. the
  training run a lifetime-optimal plan would make; with a target loss, the point of the iso-loss curve.
  Without T the condition is the plain compute-optimum ``D dL/dD = N dL/dN``.

Intervals: when the law carries bootstrap samples, every quantity is recomputed for each sample law and the
2.5/97.5 percentiles are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from isoflop.errors import IsoflopError
from isoflop.laws.forms import PRESETS, AllocationLaw, ChinchillaLaw, DataConstrainedLaw, Law, chinchilla_g
from isoflop.laws.intervals import ci95

LossFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
SOLVER_RTOL = 1e-5  # relative agreement of two numerical solutions of the same optimum (brentq / minimize_scalar)
_MAX_CI_SAMPLES = 200  # numeric allocations per interval (closed forms use every sample)


@dataclass
class Allocation:
    """The answer of ``compute_optimal``. ``*_ci95`` are ``[lo, hi]`` or ``None`` without bootstrap samples.
    ``n_params`` counts the parameters the law's N counts (``param_kind``: ``total`` or ``non_embedding``)."""

    flops: float
    n_params: float
    tokens: float
    tokens_per_param: float
    loss: float | None
    law: str
    param_kind: str = "total"
    n_params_ci95: list[float] | None = None
    tokens_ci95: list[float] | None = None
    loss_ci95: list[float] | None = None
    unique_tokens: float | None = None
    epochs: float | None = None
    repetition_loss_cost: float | None = None
    inference_tokens: float | None = None
    inference_flops: float | None = None
    lifetime_flops: float | None = None
    compute_optimal_reference: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(value: float | None, name: str) -> None:
    if value is not None and not (np.isfinite(value) and value > 0):
        raise IsoflopError(f"{name} must be a positive finite number, got {value!r}")


def data_constrained(law: Law) -> DataConstrainedLaw:
    """The data-constrained form of ``law``: itself, or a Chinchilla law with Muennighoff's R_D*, R_N*."""
    if isinstance(law, DataConstrainedLaw):
        return law
    if isinstance(law, ChinchillaLaw):
        stars = PRESETS["muennighoff"]["params"]
        return DataConstrainedLaw(
            law.name,
            f"{law.citation}; repetition: Muennighoff et al. 2023 R_D*, R_N*",
            param_kind=law.param_kind,
            **law.params_,
            R_D_star=stars["R_D_star"],
            R_N_star=stars["R_N_star"],
        )
    raise IsoflopError(
        f"--unique-tokens needs a Chinchilla-form law (E, A, B, alpha, beta); {law.name!r} is a {law.form} law"
    )


def _loss_fn(law: Law, unique_tokens: float | None) -> LossFn:
    if unique_tokens is None:
        return law.predict
    dc = data_constrained(law)
    return lambda n, d: dc.predict(n, d, unique_tokens)


def _elasticities(f: LossFn, n: float, d: float) -> tuple[float, float]:
    """``N dL/dN`` and ``D dL/dD`` by central differences in log space."""
    h = 1e-4
    fn = (f(n * np.exp(h), d) - f(n * np.exp(-h), d)) / (2 * h)
    fd = (f(n, d * np.exp(h)) - f(n, d * np.exp(-h))) / (2 * h)
    return float(fn), float(fd)


def _on_budget(law: Law, f: LossFn, flops: float, inference_tokens: float, closed: bool) -> tuple[float, float]:
    """``(N, D)`` on the budget line ``6ND = flops`` (see the module docstring); ``closed``: ``f`` is the law's
    own loss and ``law.optimal`` is its closed-form compute optimum."""
    if closed and inference_tokens == 0:
        n, d = law.optimal(flops)
        return float(n), float(d)
    c6 = flops / 6.0
    if not c6 > 1.0:
        raise IsoflopError(f"the budget is too small for any model ({flops:.3g} FLOPs); raise the budget")
    lo, hi = 0.02 * np.log(c6), 0.98 * np.log(c6)  # keep N and D above ~C^0.02
    if inference_tokens == 0:
        res = minimize_scalar(
            lambda x: float(f(np.exp(x), c6 / np.exp(x))), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        n = float(np.exp(res.x))
        return n, c6 / n

    def h(x: float) -> float:
        n = np.exp(x)
        d = c6 / n
        fn, fd = _elasticities(f, n, d)
        return (1.0 + inference_tokens / (3.0 * d)) * fd - fn

    x_opt = np.log(_on_budget(law, f, flops, 0.0, closed)[0])
    x_lo = x_opt
    for _ in range(200):
        if h(x_lo) > 0:
            break
        x_lo -= 0.25
    else:
        raise IsoflopError("could not find the inference-optimal model size; check the law and --inference-tokens")
    x = brentq(h, x_lo, x_opt, xtol=1e-12) if h(x_opt) < 0 else x_opt
    n = float(np.exp(x))
    return n, c6 / n


def _solve(
    law: Law, flops: float | None, target_loss: float | None, unique: float | None, inference: float
) -> tuple[float, float, float]:
    """``(C, N, D)`` for one law (no intervals)."""
    if isinstance(law, AllocationLaw):
        if unique is not None or inference:
            raise IsoflopError(
                "--unique-tokens and --inference-tokens need a parametric law L(N, D); "
                "fit with --approach 3 or use a preset"
            )
        if flops is None:
            if law.loss_law is None:
                raise IsoflopError(
                    "this Approach 1/2 law has no loss fit, so it cannot plan for a target loss; give a budget"
                )
            flops = law.loss_law.inverse(target_loss)
        n, d = law.optimal(flops)
        return flops, float(n), float(d)
    f = _loss_fn(law, unique)
    closed = unique is None and hasattr(law, "optimal")
    if flops is not None:
        n, d = _on_budget(law, f, flops, inference, closed)
        return flops, n, d

    # Target loss: find the budget whose plan reaches it (loss falls monotonically with budget).
    def gap(log_c: float) -> float:
        c = float(np.exp(log_c))
        n, d = _on_budget(law, f, c, inference, closed)
        return float(f(n, d)) - target_loss

    lo, hi = np.log(1e6), np.log(1e40)
    if gap(hi) > 0:
        raise IsoflopError(
            f"target loss {target_loss} is not reachable with this law (irreducible loss too high); "
            "choose a higher target"
        )
    if gap(lo) < 0:
        raise IsoflopError(f"target loss {target_loss} is reached by a trivially small budget; choose a lower target")
    c = float(np.exp(brentq(gap, lo, hi, xtol=1e-10)))
    n, d = _on_budget(law, f, c, inference, closed)
    return c, n, d


def compute_optimal(
    law: Law,
    flops: float | None = None,
    *,
    target_loss: float | None = None,
    unique_tokens: float | None = None,
    inference_tokens: float | None = None,
    intervals: bool = True,
) -> Allocation:
    """Compute-optimal ``N``, ``D``, tokens per parameter and loss for a budget ``flops`` or a ``target_loss``.

    ``unique_tokens`` applies the data-constrained law; ``inference_tokens`` minimises lifetime compute
    ``6ND + 2NT`` (see the module docstring). Intervals come from the law's bootstrap samples, if any.
    """
    if (flops is None) == (target_loss is None):
        raise IsoflopError("give exactly one of a budget in FLOPs or a target loss")
    for value, name in ((flops, "budget FLOPs"), (target_loss, "target loss"), (unique_tokens, "unique tokens")):
        _positive(value, name)
    if inference_tokens is not None and not (np.isfinite(inference_tokens) and inference_tokens >= 0):
        raise IsoflopError(f"inference tokens must be a finite number >= 0, got {inference_tokens!r}")
    t = float(inference_tokens or 0.0)
    c, n, d = _solve(law, flops, target_loss, unique_tokens, t)
    if not (np.isfinite(n) and np.isfinite(d) and n >= 1 and d >= 1):
        raise IsoflopError(f"the law gives no sensible model for this budget (N={n:.3g}, D={d:.3g}); raise the budget")
    f = _loss_fn(law, unique_tokens)
    if isinstance(law, AllocationLaw):
        loss = law.optimal_loss(c)
        loss = None if loss is None else float(loss)
    else:
        loss = float(f(n, d))
    out = Allocation(
        flops=c, n_params=n, tokens=d, tokens_per_param=d / n, loss=loss, law=law.name, param_kind=law.param_kind
    )
    if unique_tokens is not None:
        out.unique_tokens = float(unique_tokens)
        out.epochs = d / unique_tokens
        out.repetition_loss_cost = (
            float(f(n, d) - law.predict(n, d))
            if not isinstance(law, DataConstrainedLaw)
            else float(f(n, d) - law.base().predict(n, d))
        )
    if t:
        out.inference_tokens = t
        out.inference_flops = 2.0 * n * t
        out.lifetime_flops = c + 2.0 * n * t
        # The same loss from the compute-optimal (inference-blind) plan, for comparison.
        c_ref, n_ref, d_ref = _solve(law, None, float(f(n, d)), unique_tokens, 0.0)
        saving = 1.0 - out.lifetime_flops / (c_ref + 2.0 * n_ref * t)
        if -SOLVER_RTOL < saving < 0:  # T ~ 0: both plans are the compute optimum, equal up to the root finding
            saving = 0.0
        out.compute_optimal_reference = {
            "flops": c_ref,
            "n_params": n_ref,
            "tokens": d_ref,
            "lifetime_flops": c_ref + 2.0 * n_ref * t,
            "lifetime_saving": saving,
        }
        if not all(np.isfinite(v) for v in (out.lifetime_flops, *out.compute_optimal_reference.values())):
            raise IsoflopError(
                f"inference tokens {t:.3g} overflow the lifetime compute 6ND + 2NT; give a realistic token count"
            )
    if intervals and law.samples_ is not None and len(law.samples_) >= 2:
        _add_intervals(out, law, flops, target_loss, unique_tokens, t)
    elif law.samples_ is None:
        out.notes.append("no intervals: the law has no bootstrap samples (fit one with `isoflop fit --bootstrap R`)")
    return out


def _add_intervals(out: Allocation, law: Law, flops, target_loss, unique, t) -> None:
    if isinstance(law, ChinchillaLaw) and unique is None and t == 0 and flops is not None:
        s = law.samples_  # closed form, vectorised over every draw: (E, A, B, alpha, beta)
        e, a, b, al, be = (s[:, i] for i in range(5))
        g = chinchilla_g(a, b, al, be)
        n = g * (flops / 6.0) ** (be / (al + be))
        d = flops / (6.0 * n)
        loss = e + a / n**al + b / d**be
        out.n_params_ci95, out.tokens_ci95, out.loss_ci95 = ci95(n), ci95(d), ci95(loss)
        return
    laws = law.sample_laws()[:_MAX_CI_SAMPLES]
    ns, ds, ls = [], [], []
    for sample in laws:
        try:
            _, n, d = _solve(sample, flops, target_loss, unique, t)
        except (IsoflopError, ValueError):
            continue
        ns.append(n)
        ds.append(d)
        ls.append(float(_loss_fn(sample, unique)(n, d)) if not isinstance(sample, AllocationLaw) else None)
    out.n_params_ci95, out.tokens_ci95, out.loss_ci95 = ci95(ns), ci95(ds), ci95(ls)
