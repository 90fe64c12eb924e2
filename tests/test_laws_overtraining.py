"""Over-training forms and objectives (issue 18): Gadre et al. 2024's L(C, M), the tied Chinchilla form, least
squares on raw loss, the residual bootstrap, and the paper's own held-out numbers reproduced."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from isoflop.errors import IsoflopError
from isoflop.laws import bootstrap as B
from isoflop.laws import fit as F
from isoflop.laws.forms import ChinchillaLaw, OvertrainingLaw, TiedChinchillaLaw, law_from_dict
from isoflop.laws.predict import predict

TIED = {"E": 1.9, "A": 300.0, "B": 900.0, "alpha": 0.3}


def test_overtraining_form_is_the_tied_form_rewritten() -> None:
    tied = TiedChinchillaLaw(**TIED)
    over = OvertrainingLaw(**OvertrainingLaw.tied_to_overtraining(TIED))
    n, d = np.geomspace(1e7, 1e10, 7), np.geomspace(1e8, 1e12, 7)[::-1]
    assert OvertrainingLaw.overtraining_to_tied(over.params_) == pytest.approx(TIED, rel=1e-12)
    np.testing.assert_allclose(over.predict(n, d), tied.predict(n, d), rtol=1e-12)
    # Gadre et al. Eq. 4 written out: E + (a M^eta + b M^-eta) C^-eta with C = 6ND, M = D/N.
    p, c, m = over.params_, 6 * n * d, d / n
    np.testing.assert_allclose(
        over.predict(n, d), p["E"] + (p["a"] * m ** p["eta"] + p["b"] * m ** -p["eta"]) * c ** -p["eta"]
    )


def test_closed_form_optimum_matches_a_numerical_minimum() -> None:
    over = OvertrainingLaw(**OvertrainingLaw.tied_to_overtraining(TIED))
    budget = 1e22
    res = minimize_scalar(
        lambda x: float(over.predict(np.exp(x), budget / (6 * np.exp(x)))),
        bounds=(10, 30),
        method="bounded",
        options={"xatol": 1e-10},
    )
    n_opt, _ = over.optimal(budget)
    assert float(n_opt) == pytest.approx(np.exp(res.x), rel=1e-4)
    np.testing.assert_allclose(TiedChinchillaLaw(**TIED).optimal(budget), over.optimal(budget), rtol=1e-12)


@pytest.mark.parametrize("form", [TiedChinchillaLaw, OvertrainingLaw, ChinchillaLaw])
def test_least_squares_on_raw_loss_recovers_known_parameters(form) -> None:
    rng = np.random.default_rng(3)
    n, d = 10 ** rng.uniform(7, 9.5, 40), 10 ** rng.uniform(8.5, 11.5, 40)
    truth = TiedChinchillaLaw(**TIED)
    loss = truth.predict(n, d) + rng.normal(0, 1e-4, 40)
    law = F.fit(form(objective="ls_raw"), n, d, loss)
    assert law.info_["objective"] == "ls_raw"
    grid_n, grid_d = np.geomspace(1e7, 1e10, 5), np.geomspace(1e9, 1e12, 5)
    np.testing.assert_allclose(law.predict(grid_n, grid_d), truth.predict(grid_n, grid_d), rtol=2e-3)


def test_law_file_records_form_and_objective(tmp_path) -> None:
    law = OvertrainingLaw("x", objective="ls_raw", **OvertrainingLaw.tied_to_overtraining(TIED))
    back = law_from_dict(json.loads(json.dumps(law.to_dict())))
    assert isinstance(back, OvertrainingLaw) and back.objective == "ls_raw" and back.params_ == law.params_


def test_residual_bootstrap_gives_intervals_for_five_runs_and_refuses_none_left() -> None:
    rng = np.random.default_rng(1)
    n, d = np.array([1e7, 8e7, 1.5e8, 4e8, 1e7]), np.array([2e8, 1.6e9, 3e9, 8e9, 3.2e9])
    loss = TiedChinchillaLaw(**TIED).predict(n, d) * np.exp(rng.normal(0, 0.005, 5))
    law = B.bootstrap(F.fit(OvertrainingLaw(objective="ls_raw"), n, d, loss), 50, seed=0, method="residual")
    p = predict(law, 1.4e9, 8e11)
    assert p.ci95 is not None and p.ci95[0] < p.loss < p.ci95[1] and p.pi95 is not None
    with pytest.raises(IsoflopError, match="degree of freedom"):
        B.bootstrap(F.fit(ChinchillaLaw(objective="ls_raw"), n, d, loss), 10, method="residual")


def test_the_papers_protocol_reproduces_its_published_errors(shared_data) -> None:
    """Gadre et al. 2024 (Fig. 1): fit L(C, M) on 5 small RedPajama runs, C4 eval; predict 1.4B at M = 640 with
    0.7% error and 6.9B at M = 20 with 0.7% (0.71% and 0.73%)."""
    rows = [
        r for r in csv.DictReader((shared_data / "overtraining_gadre2024.csv").open()) if r["train_dataset"] == "rpj"
    ]
    mult = lambda r: float(r["chinchilla_multiplier"])
    fit_rows = [
        r for r in rows if (float(r["params"]) < 5e8 and mult(r) == 1) or (float(r["params"]) < 2e7 and mult(r) == 16)
    ]
    targets = [r for r in rows if float(r["params"]) > 1e9 and (mult(r) == 32 or float(r["params"]) > 5e9)]
    arr = lambda rs, k: np.array([float(r[k]) for r in rs])
    law = F.fit(
        OvertrainingLaw(objective="ls_raw"),
        arr(fit_rows, "params"),
        arr(fit_rows, "tokens"),
        arr(fit_rows, "loss_c4_val"),
    )
    err = 100 * (law.predict(arr(targets, "params"), arr(targets, "tokens")) / arr(targets, "loss_c4_val") - 1)
    assert len(fit_rows) == 5 and np.abs(err) == pytest.approx([0.71, 0.73], abs=0.03)


def test_fit_cli_form_and_objective(cli, shared_data) -> None:
    path = shared_data / "overtraining_gadre2024.csv"
    res = cli("fit", str(path), "--loss-col", "loss_c4_val", "--where", "train_dataset=rpj", "--form", "overtraining",
              "--objective", "ls_raw", "--json")  # fmt: skip
    out = json.loads(res.out)
    assert (
        res.code == 0
        and out["form"] == "overtraining"
        and out["objective"] == "ls_raw"
        and out["a_opt"] == pytest.approx(0.5)
    )
    bad = cli("fit", str(path), "--form", "nosuch", "--loss-col", "loss_c4_val")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "--form" in bad.err


def test_residual_bootstrap_warm_start_matches_multi_start_refits() -> None:
    """The Huber Approach 3 residual bootstrap refines each draw from the full-data optimum; the same draws refitted
    by the full multi-start fit (``refit_params``) give the same 95% intervals."""
    rng = np.random.default_rng(3)
    n = np.repeat(np.geomspace(1e7, 1e9, 4), 4)
    d = np.tile(np.geomspace(2e8, 2e10, 4), 4)
    truth = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
    loss = truth.predict(n, d) * np.exp(rng.normal(0, 0.01, len(n)))
    law = B.bootstrap(F.fit(ChinchillaLaw(), n, d, loss), 60, seed=0, method="residual")
    pred, r = law.predict(n, d), B.modified_residuals(law)

    def multi_start(idx: np.ndarray) -> np.ndarray:
        params = F.refit_params(law, n, d, pred * np.exp(r[idx]))
        return np.array([params[k] for k in law.param_names])

    rows, dropped = B.resample(60, 0, B.with_replacement(len(n)), multi_start)
    assert dropped == law.info_["bootstrap"]["dropped"]
    np.testing.assert_allclose(
        np.percentile(law.samples_, [2.5, 97.5], axis=0), np.percentile(rows, [2.5, 97.5], axis=0), rtol=1e-3
    )
