"""The report's figures (matplotlib, Agg backend: no display needed), drawn from a ladder ``analysis.json``.

Each function takes the analysis dict and returns a matplotlib Figure:
IsoFLOP curves with their fitted parabolas (Hoffmann et al. 2022, Fig. 3 left), loss against compute
with the fitted law and its 95% band, N_opt(C) and D_opt(C) power laws (Hoffmann et al. 2022, Fig. 3
centre/right), predicted against actual held-out loss, and training curves.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

HELDOUT_STYLE = {"marker": "*", "s": 220, "color": "crimson", "edgecolor": "black", "zorder": 5}


def _colors(n: int) -> list[Any]:
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.05, 0.85, max(n, 1))]


def _finish_axes(ax: Any, title: str, xlabel: str | None, ylabel: str, log: str = "x") -> None:
    """Scales (``log``: the axes drawn logarithmic, ``"x"``, ``"xy"`` or ``""``), labels, title, legend and grid."""
    if "x" in log:
        ax.set_xscale("log")
    if "y" in log:
        ax.set_yscale("log")
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both" if log else "major")


def _budgets(analysis: dict[str, Any]) -> list[float]:
    return sorted({p["budget"] for p in analysis["points"]})


def isoflop_curves(analysis: dict[str, Any]) -> Figure:
    """Final validation loss against parameters, one curve per budget, with the fitted parabolas and minima."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = _budgets(analysis)
    parabolas = {p["budget"]: p for p in analysis.get("parabolas", [])}
    for color, budget in zip(_colors(len(budgets)), budgets):
        pts = sorted(
            (p for p in analysis["points"] if p["budget"] == budget and p.get("loss") is not None), key=lambda p: p["n"]
        )
        if not pts:
            continue
        n = np.array([p["n"] for p in pts], dtype=float)
        ax.scatter(n, [p["loss"] for p in pts], color=color, label=f"C = {budget:.2g}", zorder=3)
        par = parabolas.get(budget)
        if par:
            grid = np.logspace(np.log10(n.min()) - 0.1, np.log10(n.max()) + 0.1, 100)
            ax.plot(grid, np.polyval(par["coef"], np.log10(grid)), color=color, lw=1.5)
            ax.scatter([par["n_opt"]], [par["loss_opt"]], color=color, marker="v", s=60, edgecolor="black", zorder=4)
    held = analysis.get("heldout") or {}
    if held.get("actual_loss") is not None:
        ax.scatter([held["n"]], [held["actual_loss"]], label=f"held-out C = {held['budget']:.2g}", **HELDOUT_STYLE)
    _finish_axes(
        ax,
        "IsoFLOP curves and fitted parabolas (minima: triangles)",
        f"parameters N ({analysis.get('param_kind', 'non-embedding')})",
        "final validation loss (nats/token)",
    )
    fig.tight_layout()
    return fig


def loss_vs_compute(analysis: dict[str, Any]) -> Figure:
    """Every run's loss against its FLOPs, the fitted law(s) along the compute-optimal frontier with 95% bands."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in analysis["points"] if p.get("loss") is not None]
    ax.scatter([p["flops"] for p in pts], [p["loss"] for p in pts], color="grey", s=18, alpha=0.7, label="ladder runs")
    pars = analysis.get("parabolas", [])
    if pars:
        ax.scatter(
            [p["budget"] for p in pars],
            [p["loss_opt"] for p in pars],
            color="black",
            marker="v",
            s=50,
            label="IsoFLOP minima",
            zorder=4,
        )
    for curve, color in zip(analysis.get("curves", []), ("tab:blue", "tab:orange", "tab:green")):
        c = np.array(curve["compute"], dtype=float)
        ax.plot(c, curve["loss"], color=color, lw=1.8, label=curve["label"])
        if curve.get("lo") and curve.get("hi"):
            ax.fill_between(c, curve["lo"], curve["hi"], color=color, alpha=0.2, label=f"{curve['label']}: 95% band")
    held = analysis.get("heldout") or {}
    if held.get("actual_loss") is not None:
        ax.scatter([held["flops"]], [held["actual_loss"]], label="held-out (actual)", **HELDOUT_STYLE)
    _finish_axes(
        ax,
        "Loss vs compute: fitted laws and 95% intervals",
        "training compute C (FLOPs)",
        "final validation loss (nats/token)",
    )
    fig.tight_layout()
    return fig


def optimal_allocation(analysis: dict[str, Any]) -> Figure:
    """N_opt(C) and D_opt(C): the parabola minima and their power-law fits, extended to the held-out budget."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    pars = analysis.get("parabolas", [])
    held = analysis.get("heldout") or {}
    c_all = [p["budget"] for p in pars] + ([held["budget"]] if held.get("budget") else [])
    for ax, key, fit_key, name in ((axes[0], "n_opt", "n_opt_fit", "N_opt"), (axes[1], "d_opt", "d_opt_fit", "D_opt")):
        ax.scatter([p["budget"] for p in pars], [p[key] for p in pars], color="black", label="IsoFLOP minima")
        fit = analysis.get(fit_key)
        if fit and c_all:
            grid = np.logspace(np.log10(min(c_all)) - 0.2, np.log10(max(c_all)) + 0.2, 50)
            ax.plot(
                grid,
                fit["coef"] * grid ** fit["exponent"],
                color="tab:blue",
                label=f"{name} = {fit['coef']:.3g} C^{fit['exponent']:.3f}",
            )
        held_key = {"n_opt": "n", "d_opt": "tokens"}[key]
        if held.get(held_key):
            ax.scatter([held["budget"]], [held[held_key]], label="held-out run", **HELDOUT_STYLE)
        _finish_axes(
            ax,
            f"{name}(C)",
            "training compute C (FLOPs)",
            f"{name} ({'parameters' if key == 'n_opt' else 'tokens'})",
            log="xy",
        )
    fig.tight_layout()
    return fig


def predicted_vs_actual(analysis: dict[str, Any]) -> Figure:
    """Each method's held-out prediction with its 95% interval, and the measured loss."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    held = analysis.get("heldout") or {}
    preds = held.get("predictions", [])
    for i, pred in enumerate(preds):
        lo, hi = pred.get("ci95") or (pred["predicted_loss"], pred["predicted_loss"])
        err = [[pred["predicted_loss"] - lo], [hi - pred["predicted_loss"]]]
        primary = pred["method"] == held.get("method")
        ax.errorbar(
            [i],
            [pred["predicted_loss"]],
            yerr=err,
            fmt="o",
            capsize=8,
            ms=8,
            color="tab:blue" if primary else "tab:grey",
            label=f"{pred['method']}{' (primary)' if primary else ''}",
        )
    if held.get("actual_loss") is not None:
        ax.axhline(held["actual_loss"], color="crimson", lw=2, label=f"actual {held['actual_loss']:.3f}")
    ax.set_xticks(range(len(preds)), [p["method"] for p in preds])
    ax.set_xlim(-0.6, max(len(preds), 1) - 0.4)
    _finish_axes(
        ax,
        f"Held-out run at C = {held.get('budget', float('nan')):.2g}: predicted (95% CI) vs actual",
        None,
        "validation loss (nats/token)",
        log="",
    )
    fig.tight_layout()
    return fig


def training_curves(analysis: dict[str, Any]) -> Figure:
    """Training loss against tokens for every run, coloured by budget; the held-out run in red."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = _budgets(analysis)
    colors = dict(zip(budgets, _colors(len(budgets))))
    for p in analysis["points"]:
        curve = p.get("curve") or {}
        if curve.get("tokens"):
            ax.plot(curve["tokens"], curve["loss"], color=colors[p["budget"]], lw=1, alpha=0.8)
    held = analysis.get("heldout") or {}
    curve = held.get("curve") or {}
    if curve.get("tokens"):
        ax.plot(curve["tokens"], curve["loss"], color="crimson", lw=2, label="held-out run")
    for budget, color in colors.items():
        ax.plot([], [], color=color, label=f"C = {budget:.2g}")
    _finish_axes(ax, "Training curves", "tokens seen", "training loss (nats/token)")
    fig.tight_layout()
    return fig


FIGURES = {
    "isoflop_curves": (isoflop_curves, "IsoFLOP curves with fitted parabolas"),
    "loss_vs_compute": (loss_vs_compute, "Loss vs compute with the fitted law and its 95% band"),
    "optimal_allocation": (optimal_allocation, "Compute-optimal N_opt(C) and D_opt(C)"),
    "predicted_vs_actual": (predicted_vs_actual, "Held-out run: predicted vs actual"),
    "training_curves": (training_curves, "Training curves"),
}
