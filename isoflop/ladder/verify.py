"""Fit the ladder and predict a held-out run before training it (Hoffmann et al. 2022, Approaches 2 and 3).

* Approach 2 (Sec. 3.2): per budget a parabola of loss in ``log N``; its vertex is ``(N_opt(C), L_min(C))``;
  power laws ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` through the vertices (``isoflop.laws.fit.fit_approach2``).
* The envelope ``L*(C)`` through the vertices: ``L_inf + (C_0 / C)^gamma`` with 4+ budgets
  (``fit_saturating``), a pure power law ``k C^-gamma`` (2 parameters) with 3 budgets.
* Approach 3 (Sec. 3.3, Eq. 2): ``E + A / N^alpha + B / D^beta`` over all runs (``ChinchillaLaw.fit``).

The held-out run spends ``heldout_factor`` x the largest budget at the size approach 2 predicts as optimal.
Both laws predict its loss; 95% intervals are percentile bootstraps: approach 3 resamples runs (Besiroglu
et al. 2024, Sec. 3); the envelope resamples runs within each budget and refits parabolas and envelope.
Which prediction is primary is fixed by the design (``primary``), never by the held-out result.
``N`` is the non-embedding parameter count (Kaplan et al. 2020, Sec. 1.2): in tiny models the embedding
table is a large, nearly free share of the parameters, and the non-embedding count scales more cleanly. The
fitted laws say so (``param_kind="non_embedding"``), so ``isoflop plan`` sizes models by that count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.ladder.grid import GridPoint, LadderDesign, default_shape, family_spec, heldout_budget, point_for
from isoflop.ladder.registry import RunRecord
from isoflop.laws.fit import fit_approach2, fit_saturating, tokens_at

METHODS = ("envelope", "approach3")


def run_arrays(runs: list[RunRecord]) -> dict[str, np.ndarray]:
    """N (non-embedding), D, C, loss and budget arrays of the finished runs with a finite validation loss."""
    ok = [r for r in runs if r.status == "finished" and r.val_loss is not None and math.isfinite(r.val_loss)]
    return {
        "n": np.array([r.n_params_non_embedding for r in ok], dtype=float),
        "d": np.array([r.tokens for r in ok], dtype=float),
        "c": np.array([r.flops for r in ok], dtype=float),
        "loss": np.array([r.val_loss for r in ok], dtype=float),
        "budget": np.array([r.budget for r in ok], dtype=float),
    }


def _budget_groups(budget: np.ndarray) -> np.ndarray:
    return np.unique(budget, return_inverse=True)[1]


def parabolas(arr: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per budget: ``loss = c2 x^2 + c1 x + c0`` in ``x = log10 N`` (for plotting), its vertex and D at the vertex."""
    out = []
    for budget in np.unique(arr["budget"]):
        idx = arr["budget"] == budget
        if np.count_nonzero(idx) < 3:
            continue
        x = np.log10(arr["n"][idx])
        coef = np.polyfit(x, arr["loss"][idx], 2)
        vertex = -coef[1] / (2 * coef[0]) if coef[0] > 0 else float("nan")
        interior = bool(np.isfinite(vertex) and x.min() <= vertex <= x.max())
        n_opt = 10**vertex if interior else float("nan")
        d_opt = tokens_at(n_opt, arr["n"][idx], arr["d"][idx]) if interior else float("nan")
        out.append({"budget": float(budget), "coef": [float(c) for c in coef], "n_opt": float(n_opt), "d_opt": d_opt,
                    "loss_opt": float(np.polyval(coef, vertex)) if interior else float("nan"), "interior": interior})
    return out


def _power_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
    return {"coef": float(np.exp(icpt)), "exponent": float(slope)}


def envelope_fit(budgets: np.ndarray, losses: np.ndarray) -> dict[str, Any]:
    """``L*(C)`` through the parabola minima: saturating with 4+ budgets, else a 2-parameter power law."""
    if len(budgets) >= 4:
        law = fit_saturating(budgets, losses)
        return {"form": "saturating", **law.params}
    fit = _power_fit(budgets, losses)
    return {"form": "power", "coef": fit["coef"], "exponent": fit["exponent"]}


def envelope_predict(fit: dict[str, Any], c: np.ndarray | float) -> np.ndarray:
    c = np.asarray(c, dtype=float)
    if fit["form"] == "saturating":
        return fit["L_inf"] + (fit["x0"] / c) ** fit["alpha"]
    return fit["coef"] * c ** fit["exponent"]


def _envelope_bootstrap(arr: dict[str, np.ndarray], c_eval: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Envelope predictions at ``c_eval`` for resamples of runs within each budget (rows: resamples)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(arr["budget"] == b) for b in np.unique(arr["budget"])]
    rows = []
    for _ in range(samples):
        pick = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        sub = {k: v[pick] for k, v in arr.items()}
        if any(len(np.unique(sub["n"][sub["budget"] == b])) < 3 for b in np.unique(sub["budget"])):
            continue
        pars = [p for p in parabolas(sub) if p["interior"]]
        if len(pars) < 3:
            continue
        try:
            fit = envelope_fit(np.array([p["budget"] for p in pars]), np.array([p["loss_opt"] for p in pars]))
        except IsoflopError:
            continue
        pred = envelope_predict(fit, c_eval)
        if np.all(np.isfinite(pred)):
            rows.append(pred)
    if len(rows) < max(10, samples // 4):
        raise IsoflopError(f"only {len(rows)} of {samples} envelope resamples had interior minima; widen the ladder's sizes")
    return np.array(rows)


def fit_ladder(arr: dict[str, np.ndarray], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Approach 2 (allocation + envelope) and approach 3 on the ladder runs."""
    from isoflop.laws import ChinchillaLaw

    if len(arr["n"]) < 5:
        raise IsoflopError(f"only {len(arr['n'])} finished ladder runs; the fits need at least 5 (see the registry's errors)")
    pars = [p for p in parabolas(arr) if p["interior"]]
    a2 = n_opt_fit = d_opt_fit = env = None
    note = None
    if len(pars) >= 3:
        a2_law = fit_approach2(arr["n"], arr["d"], arr["loss"], arr["c"], groups=_budget_groups(arr["budget"]))
        a2_law.param_kind = "non_embedding"
        a2 = a2_law.to_dict()
        n_opt_fit = {"coef": a2["params"]["k_N"], "exponent": a2["params"]["a"]}
        d_opt_fit = {"coef": a2["params"]["k_D"], "exponent": a2["params"]["b"]}
        env = envelope_fit(np.array([p["budget"] for p in pars]), np.array([p["loss_opt"] for p in pars]))
    else:
        note = (f"only {len(pars)} budget(s) have an interior IsoFLOP minimum (3 needed): approach 2 and the envelope are "
                "skipped, approach 3 sizes and predicts the held-out run; widen the sizes or raise the budgets")
    law = ChinchillaLaw(name="ladder", param_kind="non_embedding").fit(arr["n"], arr["d"], arr["loss"])
    try:
        law.bootstrap(bootstrap, seed=seed)
    except IsoflopError:
        law.samples = None
    return {"approach2": a2, "parabolas": parabolas(arr), "n_opt_fit": n_opt_fit, "d_opt_fit": d_opt_fit,
            "envelope": env, "approach3": law, "arrays": arr, "bootstrap": bootstrap, "seed": seed, "note": note}


def plan_heldout(design: LadderDesign, fits: dict[str, Any], shape_fn=None) -> GridPoint:
    """The held-out run: ``heldout_factor`` x the largest budget, at approach 2's N_opt for that compute (or,
    without approach 2, the family member with the lowest approach-3 loss at that compute)."""
    shape = shape_fn or default_shape
    c_h = heldout_budget(design)
    if fits["n_opt_fit"] is not None:
        n_target = fits["n_opt_fit"]["coef"] * c_h ** fits["n_opt_fit"]["exponent"]
    else:
        n = fits["arrays"]["n"]
        cands = [point_for(design, family_spec(x, design), c_h) for x in np.logspace(np.log10(n.min() / 4), np.log10(n.max() * 8), 40)]
        best = min(cands, key=lambda p: float(fits["approach3"].predict(p.n_params_non_embedding, p.tokens)))
        n_target = best.n_params_non_embedding
    spec = shape(int(n_target), design.vocab_size, design.seq_len, design.dim_multiple)
    return point_for(design, spec, c_h, role="heldout")


def _ci(x: np.ndarray) -> list[float]:
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def predict(fits: dict[str, Any], n: float, d: float, c: float) -> list[dict[str, Any]]:
    """Every method's prediction for a run of ``n`` parameters, ``d`` tokens and ``c`` FLOPs, with 95% CIs."""
    law = fits["approach3"]
    preds = []
    if fits["envelope"] is not None:
        env_pred = float(envelope_predict(fits["envelope"], c))
        try:
            env_ci = _ci(_envelope_bootstrap(fits["arrays"], np.array([c]), fits["bootstrap"], fits["seed"])[:, 0])
        except IsoflopError as exc:  # the minima are too fragile to resample: no interval, and it says why
            env_ci, fits["note"] = None, f"envelope interval unavailable: {exc}"
        preds.append({"method": "envelope", "predicted_loss": env_pred, "ci95": env_ci,
                      "law": f"L*(C) {fits['envelope']['form']} through the IsoFLOP minima"})
    a3 = float(law.predict(n, d))
    samples = law.sample_laws()
    ci = _ci(np.array([float(s.predict(n, d)) for s in samples])) if samples else None
    preds.append({"method": "approach3", "predicted_loss": a3, "ci95": ci, "law": "E + A/N^alpha + B/D^beta"})
    return preds


def curves(fits: dict[str, Any], c_max: float, points: int = 40) -> list[dict[str, Any]]:
    """Both laws along the compute axis up to ``c_max`` with 95% bands (for the loss-vs-compute figure)."""
    arr = fits["arrays"]
    c = np.logspace(np.log10(arr["c"].min()) - 0.05, np.log10(c_max) + 0.1, points)
    out = []
    if fits["envelope"] is not None:
        entry = {"label": "envelope L*(C)", "compute": c.tolist(), "loss": envelope_predict(fits["envelope"], c).tolist()}
        try:
            env_boot = _envelope_bootstrap(arr, c, fits["bootstrap"], fits["seed"])
            entry.update(lo=np.percentile(env_boot, 2.5, axis=0).tolist(), hi=np.percentile(env_boot, 97.5, axis=0).tolist())
        except IsoflopError:
            pass
        out.append(entry)
    law = fits["approach3"]
    n_fit, d_fit = fits["n_opt_fit"], fits["d_opt_fit"]
    if n_fit is not None:
        n_c, d_c = n_fit["coef"] * c ** n_fit["exponent"], d_fit["coef"] * c ** d_fit["exponent"]
        label = "approach 3 at approach 2's N_opt(C)"
    else:
        n_c, d_c = law.optimal(c)
        label = "approach 3 at its own optimum (C = 6ND)"
    entry = {"label": label, "compute": c.tolist(), "loss": law.predict(n_c, d_c).tolist()}
    samples = law.sample_laws()
    if samples:
        draws = np.array([s.predict(n_c, d_c) for s in samples])
        entry.update(lo=np.percentile(draws, 2.5, axis=0).tolist(), hi=np.percentile(draws, 97.5, axis=0).tolist())
    out.append(entry)
    return out
