"""``isoflop fit``: fit a scaling law to runs (Approach 1, 2 or 3 of Hoffmann et al. 2022), with bootstrap intervals."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from isoflop.atomic import atomic_write_bytes
from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError, quote
from isoflop.laws import bootstrap as B
from isoflop.laws import fit as F
from isoflop.laws.allocation import compute_optimal
from isoflop.laws.filters import RowFilter, apply_filters, parse_filters
from isoflop.laws.forms import (
    FORMS,
    OBJECTIVES,
    AllocationLaw,
    ChinchillaLaw,
    Law,
    OvertrainingLaw,
    TiedChinchillaLaw,
    check_param_kind,
)
from isoflop.laws.intervals import ci95
from isoflop.laws.io import Runs, read_runs, read_table
from isoflop.laws.moe import MOE_FORMS
from isoflop.laws.moe_fit import moe_fit_report, read_moe_runs
from isoflop.laws.predict import extrapolation_warning, parse_point, predict

APPROACH3_FORMS = ("chinchilla", "chinchilla_tied", "overtraining")
RUN_BOOTSTRAP_MIN = 30  # runs from which --bootstrap-method auto resamples runs rather than residuals
E_NEAR_ZERO = 1e-3  # nats: an E interval whose lower end is below this "reaches 0"


def fit_report(
    runs: Runs,
    approach: int,
    drop: int,
    bootstrap: int,
    seed: int,
    at_flops: float,
    param_kind: str = "total",
    points: list[tuple[float, float]] | None = None,
    form: str = "chinchilla",
    objective: str = "huber_log",
    bootstrap_method: str = "auto",
) -> tuple[dict[str, Any], Law, tuple]:
    """Fit ``runs`` and return (the documented JSON dict, the law, the points used). ``param_kind`` records which
    parameters the runs' N counts (``total``, or ``non_embedding`` as in Kaplan et al. 2020, Sec. 1.2); ``points``
    are ``(N, D)`` pairs to predict (Approach 3)."""
    check_param_kind(param_kind)
    if approach not in (1, 2, 3):
        raise IsoflopError(f"--approach must be 1, 2 or 3, got {approach}")
    if not (np.isfinite(at_flops) and at_flops > 0):
        raise IsoflopError(f"--at-flops must be a positive number, got {at_flops}")
    n, d, loss = F.drop_highest_loss(runs.n, runs.d, runs.loss, drop)
    c = 6.0 * n * d
    if approach == 3:
        if form not in APPROACH3_FORMS:
            raise IsoflopError(f"unknown --form {quote(form, 80)}; use one of {', '.join(APPROACH3_FORMS)}")
        law: Law = FORMS[form](
            "fitted",
            f"fitted by isoflop from {runs.source} (Approach 3, Hoffmann et al. 2022; {form}, {objective})",
            param_kind=param_kind,
            objective=objective,
        )
    elif form != "chinchilla" or objective != "huber_log":
        raise IsoflopError("--form and --objective choose an Approach 3 law; use them with --approach 3")
    else:
        law = AllocationLaw(
            f"approach{approach}",
            f"fitted by isoflop, Hoffmann et al. 2022 Approach {approach}",
            approach=approach,
            param_kind=param_kind,
        )
    F.fit(law, *((n, d, loss) if approach == 3 else (n, d, loss, c)))
    law.info_["dropped_highest_loss"] = drop
    if bootstrap:
        if bootstrap_method == "auto":
            bootstrap_method = "runs" if approach != 3 or len(n) >= RUN_BOOTSTRAP_MIN else "residual"
        if bootstrap_method == "residual" and approach != 3:
            raise IsoflopError("--bootstrap-method residual needs an Approach 3 law; use runs, or --approach 3")
        B.bootstrap(law, bootstrap, seed=seed, method=bootstrap_method)
    predictions = [predict(law, pn, pd) for pn, pd in points or []]
    alloc = compute_optimal(law, at_flops)
    ci = dict(law.ci95)
    report: dict[str, Any] = {
        "approach": approach,
        "source": runs.source,
        "columns": runs.columns,
        "n_points": int(len(n)),
        "param_kind": param_kind,
        "dropped_highest_loss": drop,
        "params": dict(law.params_),
        "ci95": ci,
        "fit": law.info_,
    }
    report["form"], report["objective"] = law.form, law.objective
    if isinstance(law, (TiedChinchillaLaw, OvertrainingLaw)):
        report["a_opt"] = report["b_opt"] = 0.5  # tied exponents: N_opt, D_opt ~ C^(1/2) (Hoffmann Eq. 4)
    elif isinstance(law, ChinchillaLaw):
        report["a_opt"], report["b_opt"] = law.a_opt, law.b_opt
        if law.samples_ is not None:
            al, be = law.samples_[:, 3], law.samples_[:, 4]
            ci["a_opt"] = ci95(be / (al + be))
    else:
        report["a_opt"], report["b_opt"] = law.params_["a"], law.params_["b"]
        ci["a_opt"] = ci["a"]
        report["loss_law"] = (
            None
            if law.loss_law is None
            else {"params": law.loss_law.params_, "form": "L_min(C) = L_inf + (x0 / C)^alpha"}
        )
        report["minima"] = law.minima_
    ci["n_opt"], ci["d_opt"], ci["loss"] = alloc.n_params_ci95, alloc.tokens_ci95, alloc.loss_ci95
    factor, at_warning = extrapolation_warning(at_flops, law, f"--at-flops {at_flops:.3g}")
    report["at_flops"] = {
        "flops": at_flops,
        "n_opt": alloc.n_params,
        "d_opt": alloc.tokens,
        "tokens_per_param": alloc.tokens_per_param,
        "loss": alloc.loss,
        "extrapolation": factor,
    }
    report["predictions"] = [p.to_dict() for p in predictions]
    warnings = [w for w in [at_warning, *(p.warning for p in predictions)] if w]
    e_ci = ci.get("E")
    if e_ci is not None and e_ci[0] <= E_NEAR_ZERO:
        warnings.append(
            f"E's 95% interval reaches 0 ([{e_ci[0]:.3g}, {e_ci[1]:.3g}]): the irreducible loss is not identified by "
            "these runs; widen the compute range or fit a tied-exponent form"
        )
    report["warnings"] = warnings
    return report, law, (n, d, loss)


PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def _plot(law: Law, points: tuple, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, d, loss = points
    c = 6 * n * d
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if isinstance(law, AllocationLaw):
        mins = law.minima_
        cs = np.array([m["C"] for m in mins])
        grid = np.geomspace(cs.min() / 3, cs.max() * 3, 50)
        axes[0].loglog(cs, [m["N_opt"] for m in mins], "o", label="N_opt per budget")
        axes[0].loglog(grid, law.optimal(grid)[0], "-", label=f"N_opt ~ C^{law.params_['a']:.3f}")
        axes[0].set_xlabel("training FLOPs C")
        axes[0].set_ylabel("N_opt")
        axes[0].legend()
        axes[1].scatter(n, loss, c=np.log10(c), s=10, cmap="viridis")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("parameters N")
        axes[1].set_ylabel("loss")
    else:
        pred = law.predict(n, d)
        axes[0].scatter(loss, pred, s=10, c=np.log10(c), cmap="viridis")
        lim = [min(loss.min(), pred.min()), max(loss.max(), pred.max())]
        axes[0].plot(lim, lim, "k--", lw=1)
        axes[0].set_xlabel("observed loss")
        axes[0].set_ylabel("predicted loss")
        axes[0].set_title("Approach 3 fit")
        sc = axes[1].scatter(n, loss, s=10, c=np.log10(c), cmap="viridis")
        for budget in np.geomspace(c.min(), c.max(), 5):
            ns = np.geomspace(n.min(), n.max(), 100)
            axes[1].plot(
                ns,
                law.predict(ns, budget / (6 * ns)),
                lw=1,
                color=plt.cm.viridis((np.log10(budget) - np.log10(c.min())) / max(1e-9, np.log10(c.max() / c.min()))),
            )
        axes[1].set_xscale("log")
        axes[1].set_ylim(loss.min() - 0.1 * np.ptp(loss), loss.max() + 0.1 * np.ptp(loss))
        axes[1].set_xlabel("parameters N")
        axes[1].set_ylabel("loss")
        axes[1].set_title("IsoFLOP curves of the fitted law")
        fig.colorbar(sc, ax=axes[1], label="log10 FLOPs")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:].lower() or "png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _params_table(title: str, report: dict[str, Any]) -> Table:
    """The fitted parameters of a ``fit_report`` or ``moe_fit_report`` dict with their 95% intervals."""
    table = Table(title=title)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key, value in report["params"].items():
        ci = report["ci95"].get(key)
        table.add_row(key, f"{value:.6g}", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-")
    return table


def _render(report: dict[str, Any]):
    def render(console) -> None:
        group = f", {report['group']}" if "group" in report else ""
        title = f"Approach {report['approach']} fit of {report['n_points']} runs ({report['source']}{group})"
        table = _params_table(title, report)
        ci = report["ci95"].get("a_opt")
        table.add_row("a = N_opt exponent", f"{report['a_opt']:.4f}", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-")
        console.print(table)
        at = report["at_flops"]
        loss = f", loss {at['loss']:.4f}" if at["loss"] is not None else ""
        kind = report["param_kind"].replace("_", "-")
        console.print(
            f"at {at['flops']:.3g} FLOPs: N_opt {at['n_opt']:.4g} ({kind} parameters), D_opt {at['d_opt']:.4g} "
            f"({at['tokens_per_param']:.1f} tokens/param){loss}"
        )
        for p in report["predictions"]:
            ci = p["ci95"]
            interval = f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
            far = f", {p['extrapolation']:.3g}x the largest fitted compute" if p["extrapolation"] else ""
            console.print(f"predicted loss at N={p['n']:.4g}, D={p['d']:.4g}: {p['loss']:.4f}{interval}{far}")
        for warning in [*report["fit"].get("warnings", []), *report["warnings"]]:
            console.print(f"[yellow]warning:[/] {warning}")
        boot = report["fit"].get("bootstrap")
        if boot:
            console.print(
                f"bootstrap: {boot['converged']} of {boot['requested']} resamples converged ({boot['dropped']} dropped)"
            )
        for key in ("out", "plot"):
            if report.get(key):
                console.print(f"wrote {report[key]}")

    return render


def _render_moe(report: dict[str, Any]):
    def render(console) -> None:
        console.print(_params_table(f"{report['form']} fit of {report['n_points']} runs ({report['source']})", report))
        console.print(f"rmse of log loss {report['fit']['rmse_log_loss']:.4g}")
        if "cutoff_params" in report:
            console.print(f"experts stop helping beyond N = {report['cutoff_params']:.4g} (b + c log10 N = 0)")
        for warning in report["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")
        if report.get("out"):
            console.print(f"wrote {report['out']}")

    return render


@app.command()
def fit(
    file: str = typer.Argument(..., help="Runs as CSV, Parquet or JSONL, one run per row."),
    approach: int = typer.Option(
        3, "--approach", help="1 = loss envelope, 2 = IsoFLOP parabolas, 3 = parametric law (Hoffmann et al. 2022)."
    ),
    n_col: str | None = typer.Option(
        None, "--n-col", help="Column of parameter counts (default: N, params, 'Model Size', ...)."
    ),
    d_col: str | None = typer.Option(None, "--d-col", help="Column of training tokens."),
    c_col: str | None = typer.Option(None, "--c-col", help="Column of training FLOPs (then D = C / 6N)."),
    loss_col: str | None = typer.Option(None, "--loss-col", help="Column of final losses."),
    where: list[str] = typer.Option(
        [],
        "--where",
        help="Keep rows matching COLUMN=VALUE, COLUMN<=VALUE (<, >, >=, !=) or 'COLUMN in A,B' "
        "(repeatable, combined with AND; numbers compare as numbers).",
    ),
    group_by: str | None = typer.Option(None, "--group-by", help="Fit one law per value of this column."),
    predict_at: list[str] = typer.Option(
        [], "--predict", help="Predict the loss at N,D with its 95% interval (repeatable; Approach 3)."
    ),
    drop: int = typer.Option(0, "--drop-highest-loss", help="Drop the K highest-loss runs (Besiroglu et al. drop 5)."),
    bootstrap: int = typer.Option(
        0, "--bootstrap", help="Bootstrap resamples (runs drawn with replacement) for 95% intervals."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    bootstrap_method: str = typer.Option(
        "auto",
        "--bootstrap-method",
        help="runs (resample runs), residual (resample the fit's residuals at the same runs; few runs) or auto "
        "(runs from 30 runs on).",
    ),
    form: str = typer.Option(
        "chinchilla",
        "--form",
        help="Approach 3 form: chinchilla (E + A/N^alpha + B/D^beta), chinchilla_tied (alpha = beta) or "
        "overtraining (Gadre et al. 2024: E + (a M^eta + b M^-eta) C^-eta); MoE: moe_routed (Clark et al. 2022, "
        "N and experts) or moe_granularity (Krajewski et al. 2024, N, D and granularity).",
    ),
    objective: str = typer.Option(
        "huber_log",
        "--objective",
        help="huber_log (Huber on log loss, Hoffmann et al.) or ls_raw (least squares on raw loss, Gadre et al.).",
    ),
    at_flops: float = typer.Option(
        5.76e23, "--at-flops", help="Budget for the derived N_opt, D_opt and loss (default: Chinchilla's)."
    ),
    plot: str | None = typer.Option(None, "--plot", help="Write a figure of the fit (PNG/PDF/SVG)."),
    out: str | None = typer.Option(
        None, "--out", help="Write the law as JSON/YAML; `isoflop plan --law FILE` reads it."
    ),
    param_kind: str = typer.Option(
        "total",
        "--param-kind",
        help="What the N column counts: total or non_embedding "
        "(Kaplan et al. 2020); recorded in the law file, `isoflop plan` sizes models in it.",
    ),
    experts_col: str | None = typer.Option(
        None, "--experts-col", help="Column of expert counts for --form moe_routed (default: n_experts)."
    ),
    granularity_col: str | None = typer.Option(
        None, "--granularity-col", help="Column of granularities for --form moe_granularity (default: granularity)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit a scaling law to training runs, with bootstrap confidence intervals."""
    if form in MOE_FORMS:
        _fit_moe(file, form, locals())
        return
    if plot and "." in Path(plot).name and Path(plot).suffix[1:].lower() not in PLOT_FORMATS:
        raise IsoflopError(
            f"--plot {plot}: unknown figure format {Path(plot).suffix!r}; use one of .{', .'.join(PLOT_FORMATS)}"
        )
    filters, points_at = parse_filters(where), [parse_point(p) for p in predict_at]
    if objective not in OBJECTIVES:
        raise IsoflopError(f"unknown --objective {quote(objective, 80)}; use one of {', '.join(OBJECTIVES)}")
    if bootstrap_method not in ("auto", *B.BOOTSTRAP_METHODS):
        raise IsoflopError(f"unknown --bootstrap-method {quote(bootstrap_method, 80)}; use auto, runs or residual")
    options = dict(form=form, objective=objective, bootstrap_method=bootstrap_method)
    table = read_table(file)
    columns = dict(n_col=n_col, d_col=d_col, c_col=c_col, loss_col=loss_col, param_kind=param_kind, table=table)
    if group_by is not None:
        if group_by not in table:
            raise IsoflopError(
                f"--group-by column {quote(group_by, 80)} is not in the file; columns are: {', '.join(table)}"
            )
        if out or plot:
            raise IsoflopError("--out and --plot take one law; drop them with --group-by, or filter with --where")
        columns["table"] = apply_filters(table, filters)
        values = list(dict.fromkeys(str(v) for v in columns["table"][group_by]))
        reports = []
        for value in values:
            runs = read_runs(file, where=[RowFilter(group_by, "=", (value,))], **columns)
            reports.append(
                {
                    "group": value,
                    **fit_report(runs, approach, drop, bootstrap, seed, at_flops, param_kind, points_at, **options)[0],
                }
            )
        grouped = {"group_by": group_by, "groups": reports}
        emit(grouped, as_json, lambda console: [_render(r)(console) for r in reports])
        return
    runs = read_runs(file, where=filters, **columns)
    report, law, points = fit_report(runs, approach, drop, bootstrap, seed, at_flops, param_kind, points_at, **options)
    if out:
        law.save(out)
        report["out"] = out
    if plot:
        _plot(law, points, plot)
        report["plot"] = plot
    emit(report, as_json, _render(report))


def _fit_moe(file: str, form: str, opts: dict[str, Any]) -> None:
    """``isoflop fit --form moe_routed|moe_granularity`` (``isoflop.laws.moe_fit``)."""
    unsupported = [
        flag
        for flag, given in (
            ("--approach", opts["approach"] != 3),
            ("--group-by", opts["group_by"] is not None),
            ("--predict", bool(opts["predict_at"])),
            ("--drop-highest-loss", opts["drop"] != 0),
            ("--plot", opts["plot"] is not None),
            ("--objective", opts["objective"] != "huber_log"),
        )
        if given
    ]
    if unsupported:
        raise IsoflopError(f"{', '.join(unsupported)} do(es) not apply to --form {form}; drop them")
    runs = read_moe_runs(
        file,
        form,
        n_col=opts["n_col"],
        d_col=opts["d_col"],
        c_col=opts["c_col"],
        loss_col=opts["loss_col"],
        experts_col=opts["experts_col"],
        granularity_col=opts["granularity_col"],
        where=opts["where"],
        param_kind=opts["param_kind"],
    )
    report, law = moe_fit_report(runs, form, opts["param_kind"], opts["bootstrap"], opts["seed"])
    if opts["out"]:
        law.save(opts["out"])
        report["out"] = opts["out"]
    emit(report, opts["as_json"], _render_moe(report))
