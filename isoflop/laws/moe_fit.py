"""``isoflop fit --form moe_routed|moe_granularity``: read MoE runs (columns for experts and granularity) and fit.

Columns: parameters and loss as for dense fits (``isoflop.laws.io``); ``moe_routed`` (Clark et al. 2022) reads the
expert count (``n_experts``), ``moe_granularity`` (Krajewski et al. 2024) the tokens (or FLOPs, then
``D = C / 6N``) and the granularity (``granularity``). Flags name other columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.laws import bootstrap as B
from isoflop.laws import fit as F
from isoflop.laws.filters import RowFilter, apply_filters, parse_filters
from isoflop.laws.forms import Law, check_param_kind
from isoflop.laws.io import C_NAMES, D_NAMES, LOSS_NAMES, N_NAMES, NON_EMBEDDING_NAMES, _numbers, _pick, read_table
from isoflop.laws.moe import MOE_FORMS, GranularityLaw, RoutedLaw

EXPERT_NAMES = ("n_experts", "experts", "num_experts", "E")
GRANULARITY_NAMES = ("granularity", "G")


@dataclass
class MoeRuns:
    """Runs of an MoE fit: the arrays in the order the form's ``fit_runs`` takes, and the columns used."""

    arrays: tuple[np.ndarray, ...]
    columns: dict[str, str]
    source: str


def read_moe_runs(
    path: str,
    form: str,
    *,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    experts_col: str | None = None,
    granularity_col: str | None = None,
    where: Sequence[str | RowFilter] | None = None,
    param_kind: str = "total",
) -> MoeRuns:
    """The runs of ``path`` for ``form`` (``moe_routed``: N, experts, loss; ``moe_granularity``: N, D, G, loss)."""
    table = apply_filters(read_table(path), parse_filters(where))
    names = NON_EMBEDDING_NAMES + N_NAMES if param_kind == "non_embedding" else N_NAMES
    cols = {
        "N": _pick(table, n_col, names, "parameters", "--n-col"),
        "loss": _pick(table, loss_col, LOSS_NAMES, "", ""),
    }
    if form == RoutedLaw.form:
        cols["experts"] = _pick(table, experts_col, EXPERT_NAMES, "experts", "--experts-col")
    else:
        cols["D"] = _pick(table, d_col, D_NAMES, "tokens", "--d-col") if c_col is None else None
        if cols["D"] is None:
            cols.pop("D")
            cols["C"] = _pick(table, c_col, C_NAMES, "FLOPs", "--c-col")
        cols["granularity"] = _pick(table, granularity_col, GRANULARITY_NAMES, "granularity", "--granularity-col")
    missing = [role for role, name in cols.items() if name is None]
    if missing:
        raise IsoflopError(
            f"{path}: no column for {', '.join(missing)} (a {form} fit); name it with --n-col, --d-col, --loss-col, "
            f"--experts-col or --granularity-col; columns are: {', '.join(table)}"
        )
    values = {role: _numbers(table, name, path) for role, name in cols.items()}
    if len(values["N"]) == 0:
        raise IsoflopError(f"{path} has no runs; add rows")
    if form == RoutedLaw.form:
        arrays = (values["N"], values["experts"], values["loss"])
    else:
        d = values["D"] if "D" in values else values["C"] / (6.0 * values["N"])
        arrays = (values["N"], d, values["granularity"], values["loss"])
    return MoeRuns(arrays=arrays, columns={k: str(v) for k, v in cols.items()}, source=str(path))


def moe_fit_report(runs: MoeRuns, form: str, param_kind: str, bootstrap: int, seed: int) -> tuple[dict[str, Any], Law]:
    """Fit ``form`` to ``runs`` (and bootstrap ``bootstrap`` resamples of the runs); the report of ``--json``."""
    check_param_kind(param_kind)
    if form not in MOE_FORMS:
        raise IsoflopError(f"unknown MoE form {form!r}; use one of {', '.join(MOE_FORMS)}")
    law = MOE_FORMS[form]("fitted", f"fitted by isoflop from {runs.source} ({form})", param_kind=param_kind)
    F.fit(law, *runs.arrays)
    if bootstrap:
        B.bootstrap(law, bootstrap, seed=seed, method="runs")
    report: dict[str, Any] = {
        "form": form,
        "source": runs.source,
        "columns": runs.columns,
        "n_points": int(len(runs.arrays[0])),
        "param_kind": param_kind,
        "params": dict(law.params_),
        "ci95": law.ci95,
        "fit": law.info_,
        "warnings": [],
    }
    if isinstance(law, RoutedLaw):
        report["cutoff_params"] = law.cutoff_params()
    elif isinstance(law, GranularityLaw) and law.params_["g"] < 1e-6:
        report["warnings"].append("g is ~0: the runs show no granularity effect (add runs at other granularities)")
    return report, law
