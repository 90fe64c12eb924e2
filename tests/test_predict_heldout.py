"""benchmarks/predict_heldout.py (issue 18): the cross-validated choice of form, objective and fit set reads the
small runs only, never the held-out targets; prediction intervals combine every bootstrap draw with every residual."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from isoflop.laws import bootstrap as B
from isoflop.laws import fit as F
from isoflop.laws.forms import OvertrainingLaw, TiedChinchillaLaw
from isoflop.laws.intervals import ci95
from isoflop.laws.predict import predict, predictive_draws
from tests._benchmarks import load_benchmark

TIED = {"E": 1.9, "A": 300.0, "B": 900.0, "alpha": 0.3}


def test_cross_validation_never_reads_the_targets(shared_data, monkeypatch) -> None:
    bench = load_benchmark("predict_heldout")
    monkeypatch.setattr(bench, "GADRE", shared_data / "overtraining_gadre2024.csv")
    seen: list[float] = []

    def record(config, fit_rows, held, loss_col):
        seen.extend(float(r["params"]) for r in fit_rows + held)
        bench.FIT_SETS[config[0]](fit_rows)  # every rule applies to the fold's pool
        return bench._arrays(held, loss_col)[2] * (1.01 if config[1] == "chinchilla" else 1.02)

    monkeypatch.setattr(bench, "_predictions", record)
    out = bench.cross_validate()
    # Only the small runs (<= 0.411B) are read; the 1.4B and 6.9B targets never are.
    assert seen and max(seen) < 5e8 and min(seen) < 2e7
    assert out["selected"]["form"] == "chinchilla" and len(out["candidates"]) == 17
    assert out["selected"]["cv_score"] == pytest.approx(1.0)


def test_model_average_members_are_ranked_on_the_other_fold(shared_data, monkeypatch) -> None:
    bench = load_benchmark("predict_heldout")
    monkeypatch.setattr(bench, "GADRE", shared_data / "overtraining_gadre2024.csv")
    configs = [(fs, form, obj) for fs in bench.FIT_SETS for form, obj in bench.SELECTION_FORMS]

    def fake(config, fit_rows, held, loss_col):  # fold 1 ranks the configs in order, fold 2 in reverse
        rank = configs.index(config) + 1
        fold2 = max(float(r["params"]) for r in fit_rows) < 1e8
        return bench._arrays(held, loss_col)[2] * (1 + 0.01 * (17 - rank if fold2 else rank))

    monkeypatch.setattr(bench, "_predictions", fake)
    ens = bench.cross_validate()["candidates"][-1]
    first, second = bench.FOLDS
    assert ens["members_by_fold"][first] == [list(c) for c in configs[::-1][:3]]
    assert ens["members_by_fold"][second] == [list(c) for c in configs[:3]]
    # scored on fold 1 by the members fold 2 ranked best: errors 16, 15, 14% there, median 15%
    assert ens["cv_fold_scores"][first] == pytest.approx(15.0) and ens["cv_fold_scores"][second] == pytest.approx(15.0)


def test_split_matches_the_papers_targets(shared_data) -> None:
    bench = load_benchmark("predict_heldout")
    rows = [
        r for r in csv.DictReader((shared_data / "overtraining_gadre2024.csv").open()) if r["train_dataset"] == "rpj"
    ]
    small, targets = bench._split(rows)
    paper = bench.FIT_SETS["paper"](small)
    assert len(paper) == 5 and max(float(r["params"]) for r in small) < 5e8
    # 1.4B at M = 640 (32 x 20 tokens per parameter) and 6.9B at M = 20 (Gadre et al. 2024, Fig. 1).
    assert [(round(float(t["params"]) / 1e9, 1), 20 * float(t["chinchilla_multiplier"])) for t in targets] == [
        (1.4, 640.0),
        (6.9, 20.0),
    ]


def test_prediction_interval_is_every_draw_plus_every_residual() -> None:
    rng = np.random.default_rng(1)
    n, d = np.geomspace(1e7, 4e8, 8), np.geomspace(2e8, 1e11, 8)[rng.permutation(8)]
    loss = TiedChinchillaLaw(**TIED).predict(n, d) * np.exp(rng.normal(0, 0.01, 8))
    law = B.bootstrap(F.fit(OvertrainingLaw(objective="ls_raw"), n, d, loss), 40, seed=0, method="residual")
    p = predict(law, 1.4e9, 3e10)
    draws = np.array([float(s.predict(1.4e9, 3e10)) for s in law.sample_laws()])
    r = (loss - law.predict(n, d)) * np.sqrt(8 / (8 - 4))  # modified residuals on raw loss (Davison & Hinkley)
    assert p.pi95 == pytest.approx(np.percentile((draws[:, None] + r[None, :]).ravel(), [2.5, 97.5]).tolist())
    assert p.pi95[0] <= p.ci95[0] <= p.ci95[1] <= p.pi95[1]
    mixed = predictive_draws(law, 1.4e9, 3e10)  # what a model average pools across laws
    assert len(mixed) == len(draws) * 8 and ci95(mixed) == p.pi95
