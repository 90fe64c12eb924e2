"""Fit the ladder and predict a held-out run before training it (Hoffmann et al. 2022, Approaches 2 and 3).

Every fit is ``isoflop.laws``':

* Approach 2 (Sec. 3.2, ``isoflop.laws.fit.fit_approach2``): per budget a parabola of loss in ``ln N``; its vertex
  is ``(N_opt(C), L_min(C))``; power laws ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` through the vertices.
* The envelope ``L*(C)`` through the vertices at the design's budgets (``fit_loss_envelope``):
  ``L_inf + (C_0 / C)^gamma`` with 4+ budgets, a pure power law ``k C^-gamma`` (2 parameters) with 3 budgets.
* Approach 3 (Sec. 3.3, Eq. 2): ``E + A / N^alpha + B / D^beta`` over all runs (``ChinchillaLaw``).

The held-out run spends ``heldout_factor`` x the largest budget at the size approach 2 predicts as optimal.
Both laws predict its loss; 95% intervals are percentile bootstraps (``isoflop.laws.bootstrap``): approach 3
resamples runs (Besiroglu et al. 2024, Sec. 3) from 30 runs up and its modified residuals below that (a 5-parameter
law on a dozen runs: most run resamples lose too many distinct runs); the envelope resamples the parabolas'
residuals and refits the parabolas and the envelope (``LadderFit.envelope_draws``). An over-trained held-out run
(``plan_overtrained``) is predicted by approach 3 alone: the envelope gives the compute-optimal loss only.
Which prediction is primary is fixed by the design (``primary``), never by the held-out result. ``N`` is the
non-embedding parameter count (Kaplan et al. 2020, Sec. 1.2): in tiny models the embedding table is a large, nearly
free share of the parameters, and the non-embedding count scales more cleanly. The fitted laws say so
(``param_kind="non_embedding"``), so ``isoflop plan`` sizes models by that count.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.ladder.grid import (
    GridPoint,
    LadderDesign,
    design_shape,
    family_spec,
    fit_params,
    heldout_budget,
    in_family,
    point_for,
)
from isoflop.ladder.registry import RunRecord
from isoflop.laws import bootstrap as B
from isoflop.laws.fit import IsoflopMinimum, fit, fit_approach2, fit_loss_envelope, isoflop_minima
from isoflop.laws.forms import AllocationLaw, ChinchillaLaw, PowerLaw, SaturatingPowerLaw
from isoflop.laws.intervals import ci95, ci95_band

MIN_BUDGETS = 3  # interior IsoFLOP minima needed for approach 2 and the envelope
RUN_BOOTSTRAP_MIN = 30  # runs from which approach 3 resamples runs rather than residuals (as `isoflop fit` does)


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


def _minima(arr: dict[str, np.ndarray]) -> list[IsoflopMinimum]:
    """The interior IsoFLOP minima, one per design budget (``group`` is the budget)."""
    return isoflop_minima(arr["n"], arr["d"], arr["loss"], arr["c"], arr["budget"])[0]


def _envelope(minima: list[IsoflopMinimum]) -> SaturatingPowerLaw | PowerLaw:
    return fit_loss_envelope(np.array([m.group for m in minima]), np.array([m.loss for m in minima]))


@dataclass
class LadderFit:
    """Approach 2 (allocation and envelope) and approach 3 on the ladder runs. ``approach2`` and ``envelope`` are
    ``None`` when fewer than ``MIN_BUDGETS`` budgets have an interior minimum (``note`` says so)."""

    arrays: dict[str, np.ndarray]
    minima: list[IsoflopMinimum]
    approach2: AllocationLaw | None
    envelope: SaturatingPowerLaw | PowerLaw | None
    approach3: ChinchillaLaw
    bootstrap: int
    seed: int
    note: str | None = None

    def n_opt_fit(self) -> dict[str, float] | None:
        """``N_opt = coef C^exponent`` (approach 2)."""
        return (
            None
            if self.approach2 is None
            else {"coef": self.approach2.params_["k_N"], "exponent": self.approach2.params_["a"]}
        )

    def d_opt_fit(self) -> dict[str, float] | None:
        """``D_opt = coef C^exponent`` (approach 2)."""
        return (
            None
            if self.approach2 is None
            else {"coef": self.approach2.params_["k_D"], "exponent": self.approach2.params_["b"]}
        )

    def envelope_dict(self) -> dict[str, Any] | None:
        if self.envelope is None:
            return None
        if isinstance(self.envelope, SaturatingPowerLaw):
            return {"form": "saturating", **self.envelope.params_}
        return {"form": "power", "coef": self.envelope.params_["k"], "exponent": self.envelope.params_["exponent"]}

    def parabolas(self) -> list[dict[str, Any]]:
        """Per budget with an interior minimum, for the report: ``loss = c2 x^2 + c1 x + c0`` in ``x = log10 N``
        (the fitted parabola in ``ln N`` rewritten), its vertex and D at the vertex."""
        ln10 = math.log(10.0)
        return [
            {
                "budget": float(m.group),
                "coef": [m.coef[0] * ln10**2, m.coef[1] * ln10, m.coef[2]],
                "n_opt": m.n_opt,
                "d_opt": m.d_opt,
                "loss_opt": m.loss,
                "interior": True,
            }
            for m in self.minima
        ]

    def envelope_draws(self, c_eval: np.ndarray) -> np.ndarray:
        """Envelope predictions at ``c_eval`` (rows: resamples) from a residual bootstrap of the IsoFLOP parabolas:
        every run keeps its size and budget, its loss is its parabola's value plus a resampled modified residual
        (``parabola_residuals``), and the parabolas, their minima and the envelope are refit. Resampling runs
        instead leaves most 4-size budgets with fewer than 3 distinct sizes (with 4 sizes a budget keeps 3 or more
        in 66% of draws, all of 3 budgets in 28%), so that interval rarely exists on a small ladder."""
        arr = self.arrays
        fitted, r = parabola_residuals(arr)

        def refit(idx: np.ndarray) -> np.ndarray | None:
            minima = _minima({**arr, "loss": fitted + r[idx]})
            return _envelope(minima).predict(c_eval) if len(minima) == len(self.minima) else None

        rows, _ = B.resample(self.bootstrap, self.seed, B.with_replacement(len(r)), refit)
        if len(rows) < max(10, self.bootstrap // 2):
            raise IsoflopError(
                f"only {len(rows)} of {self.bootstrap} envelope resamples kept an interior minimum at every budget; "
                "widen the ladder's sizes"
            )
        return np.array(rows)


def parabola_residuals(arr: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each run's loss on its budget's parabola in ``ln N`` (budgets with 3+ sizes; other runs keep their loss),
    and the residuals times ``sqrt(n / (n - p))`` with ``p`` the parabolas' coefficients (Davison & Hinkley 1997,
    Alg. 6.1's modified residuals, pooled over budgets)."""
    fitted = arr["loss"].copy()
    n_coef = 0
    for b in np.unique(arr["budget"]):
        idx = arr["budget"] == b
        x = np.log(arr["n"][idx])
        if len(np.unique(np.round(x, 6))) >= 3:
            fitted[idx] = np.polyval(np.polyfit(x, arr["loss"][idx], 2), x)
            n_coef += 3
    dof = len(fitted) - n_coef
    if dof < 1:
        raise IsoflopError(f"{len(fitted)} runs leave no residual degree of freedom for {n_coef // 3} parabolas")
    return fitted, (arr["loss"] - fitted) * math.sqrt(len(fitted) / dof)


def fit_ladder(arr: dict[str, np.ndarray], bootstrap: int = 200, seed: int = 0) -> LadderFit:
    """Approach 2 (allocation + envelope) and approach 3 on the ladder runs."""
    if len(arr["n"]) < 5:
        raise IsoflopError(
            f"only {len(arr['n'])} finished ladder runs; the fits need at least 5 (see the registry's errors)"
        )
    minima = _minima(arr)
    a2 = env = note = None
    if len(minima) >= MIN_BUDGETS:
        a2 = fit_approach2(arr["n"], arr["d"], arr["loss"], arr["c"], groups=arr["budget"], param_kind="non_embedding")
        env = _envelope(minima)
    else:
        note = (
            f"only {len(minima)} budget(s) have an interior IsoFLOP minimum ({MIN_BUDGETS} needed): approach 2 "
            "and the envelope are skipped, approach 3 sizes and predicts the held-out run; "
            "widen the sizes or raise the budgets"
        )
    law = fit(ChinchillaLaw(name="ladder", param_kind="non_embedding"), arr["n"], arr["d"], arr["loss"])
    method = "runs" if len(arr["n"]) >= RUN_BOOTSTRAP_MIN else "residual"
    with contextlib.suppress(IsoflopError):  # no approach-3 interval: predictions carry ci95 None
        B.bootstrap(law, bootstrap, seed=seed, method=method)
    return LadderFit(
        arrays=arr, minima=minima, approach2=a2, envelope=env, approach3=law, bootstrap=bootstrap, seed=seed, note=note
    )


def _optimal_size(design: LadderDesign, fits: LadderFit, c: float) -> float:
    """Approach 2's ``N_opt(c)``, or without approach 2 the family member with the lowest approach-3 loss at ``c``."""
    if fits.approach2 is not None:
        return float(fits.approach2.optimal(c)[0])
    n = fits.arrays["n"]
    cands = [
        point_for(design, family_spec(x, design), c)
        for x in np.logspace(np.log10(n.min() / 4), np.log10(n.max() * 8), 40)
    ]
    best = min(cands, key=lambda p: float(fits.approach3.predict(p.n_params_non_embedding, p.tokens)))
    return best.n_params_non_embedding


def plan_heldout(design: LadderDesign, fits: LadderFit, shape_fn=None) -> GridPoint:
    """The held-out run: ``heldout_factor`` x the largest budget, at approach 2's N_opt for that compute (or,
    without approach 2, the family member with the lowest approach-3 loss at that compute)."""
    shape = shape_fn or design_shape(design)
    c_h = heldout_budget(design)
    spec = shape(int(_optimal_size(design, fits, c_h)), design.vocab_size, design.seq_len, design.dim_multiple)
    return point_for(design, spec, c_h, role="heldout")


def plan_overtrained(design: LadderDesign, fits: LadderFit, held: GridPoint, shape_fn=None) -> GridPoint | None:
    """The over-trained held-out run: a model ``sqrt(overtrain)`` x smaller than ``N_opt`` at its compute, trained
    on ``sqrt(overtrain)`` x more tokens, so it sees about ``overtrain`` x the compute-optimal tokens per parameter
    (Gadre et al. 2024's over-training multiple ``M / M_opt``). Its compute is the largest ladder budget, with a
    size below every ladder run there, so it is never a fitted point; where the shape family has no such size (the
    smallest ladders), the compute-optimal held-out run ``held``'s compute, below ``held``'s size. ``None`` when
    ``design.overtrain`` is 0 or no such size exists. It tests the law's extrapolation in tokens per parameter."""
    if design.overtrain <= 0:
        return None
    shape = shape_fn or design_shape(design)
    for c, below in (
        (max(design.budgets), fits.arrays["n"][fits.arrays["budget"] == max(design.budgets)].min(initial=np.inf)),
        (held.budget, held.n_params_non_embedding),
    ):
        target = _optimal_size(design, fits, c) / math.sqrt(design.overtrain)
        for _ in range(40):  # down to 1.1^-40 = 1/45 of the target
            spec = shape(int(target), design.vocab_size, design.seq_len, design.dim_multiple)
            if fit_params(spec) < below and in_family(spec):
                return point_for(design, spec, c, role="heldout_overtrained")
            target /= 1.1
    return None


def predict(
    fits: LadderFit, n: float, d: float, c: float, compute_optimal: bool = True
) -> tuple[list[dict[str, Any]], str | None]:
    """Every method's prediction for a run of ``n`` parameters, ``d`` tokens and ``c`` FLOPs, with 95% CIs, and a
    note when the envelope's interval is unavailable. The envelope predicts the loss at the compute-optimal size
    only, so a run that is not compute-optimal (``compute_optimal=False``) gets approach 3 alone."""
    law = fits.approach3
    preds, note = [], None
    if fits.envelope is not None and compute_optimal:
        env_pred = float(fits.envelope.predict(c))
        try:
            env_ci = ci95(fits.envelope_draws(np.array([c]))[:, 0])
        except IsoflopError as exc:
            env_ci, note = None, f"envelope interval unavailable: {exc}"
        form = fits.envelope_dict()["form"]
        preds.append(
            {
                "method": "envelope",
                "predicted_loss": env_pred,
                "ci95": env_ci,
                "law": f"L*(C) {form} through the IsoFLOP minima",
            }
        )
    a3 = float(law.predict(n, d))
    samples = law.sample_laws()
    ci = ci95([float(s.predict(n, d)) for s in samples]) if samples else None
    preds.append({"method": "approach3", "predicted_loss": a3, "ci95": ci, "law": "E + A/N^alpha + B/D^beta"})
    return preds, note


def curves(fits: LadderFit, c_max: float, points: int = 40) -> list[dict[str, Any]]:
    """Both laws along the compute axis up to ``c_max`` with 95% bands (for the loss-vs-compute figure)."""
    arr = fits.arrays
    c = np.logspace(np.log10(arr["c"].min()) - 0.05, np.log10(c_max) + 0.1, points)
    out = []
    if fits.envelope is not None:
        entry = {"label": "envelope L*(C)", "compute": c.tolist(), "loss": fits.envelope.predict(c).tolist()}
        try:
            lo, hi = ci95_band(fits.envelope_draws(c))
            entry.update(lo=lo, hi=hi)
        except IsoflopError:
            pass
        out.append(entry)
    law = fits.approach3
    if fits.approach2 is not None:
        n_c, d_c = fits.approach2.optimal(c)
        label = "approach 3 at approach 2's N_opt(C)"
    else:
        n_c, d_c = law.optimal(c)
        label = "approach 3 at its own optimum (C = 6ND)"
    entry = {"label": label, "compute": c.tolist(), "loss": law.predict(n_c, d_c).tolist()}
    samples = law.sample_laws()
    if samples:
        lo, hi = ci95_band(np.array([s.predict(n_c, d_c) for s in samples]))
        entry.update(lo=lo, hi=hi)
    out.append(entry)
    return out
