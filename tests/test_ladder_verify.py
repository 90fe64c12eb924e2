"""Fits and held-out prediction on runs drawn from a known law (Hoffmann et al. 2022's published form)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isoflop.ladder.grid import LadderDesign, design_grid
from isoflop.ladder.registry import Registry
from isoflop.ladder.verify import fit_ladder, parabola_residuals, plan_heldout, plan_overtrained, predict, run_arrays

# A law of the published form with tiny-model constants: L = E + A / N^alpha + B / D^beta.
TRUTH = {"E": 1.9, "A": 40.0, "B": 90.0, "alpha": 0.35, "beta": 0.3}


def law(n, d):
    return (
        TRUTH["E"]
        + TRUTH["A"] / np.asarray(n, float) ** TRUTH["alpha"]
        + TRUTH["B"] / np.asarray(d, float) ** TRUTH["beta"]
    )


def _ladder(tmp_path, noise: float, seed: int = 0, budgets=(1e11, 3e11, 1e12, 3e12), sizes: int = 5):
    design = LadderDesign(name="synthetic", budgets=budgets, sizes=sizes, size_ratio=2.0, bootstrap=100)
    reg = Registry(tmp_path / "reg.sqlite")
    rng = np.random.default_rng(seed)
    for p in design_grid(design):
        rid = reg.add(
            design.name,
            p.config.model_dump(mode="json"),
            budget=p.budget,
            n_params=p.n_params,
            n_params_non_embedding=p.n_params_non_embedding,
            tokens=p.tokens,
            flops=p.flops,
        )
        reg.claim(rid, "x")
        loss = float(law(p.n_params_non_embedding, p.tokens)) * (1 + noise * rng.standard_normal())
        reg.finish(rid, {"val_loss": loss, "final_loss": loss})
    return design, run_arrays(reg.runs())


def test_noise_free_runs_recover_the_law_and_the_heldout_loss(tmp_path) -> None:
    design, arr = _ladder(tmp_path, noise=0.0)
    fits = fit_ladder(arr, bootstrap=20)
    a3 = fits.approach3.params_
    # Fitted on non-embedding N (Kaplan et al. 2020, Sec. 1.2); the laws say so, for `isoflop plan`.
    assert fits.approach3.param_kind == fits.approach2.param_kind == "non_embedding"
    assert {s.param_kind for s in fits.approach3.sample_laws()} == {"non_embedding"}
    assert a3["alpha"] == pytest.approx(TRUTH["alpha"], rel=0.02) and a3["beta"] == pytest.approx(
        TRUTH["beta"], rel=0.02
    )
    assert a3["E"] == pytest.approx(TRUTH["E"], rel=0.02)
    held = plan_heldout(design, fits)
    assert held.budget == pytest.approx(3.5 * 3e12) and held.role == "heldout"
    truth = float(law(held.n_params_non_embedding, held.tokens))
    preds = {p["method"]: p for p in predict(fits, held.n_params_non_embedding, held.tokens, held.flops)[0]}
    assert preds["approach3"]["predicted_loss"] == pytest.approx(truth, rel=1e-3)
    assert preds["envelope"]["predicted_loss"] == pytest.approx(truth, rel=0.01)
    # Held-out N sits near the law's own optimum at that compute (the parabola vertex extrapolated).
    ns = np.logspace(np.log10(held.n_params_non_embedding) - 1, np.log10(held.n_params_non_embedding) + 1, 400)
    from isoflop.ladder.grid import family_spec, point_for

    d_of_n = [point_for(design, family_spec(n, design), held.budget).tokens for n in ns]
    best = ns[int(np.argmin(law(ns, d_of_n)))]
    assert 0.4 < held.n_params_non_embedding / best < 2.5


def test_noisy_runs_give_intervals_that_cover_the_truth(tmp_path) -> None:
    design, arr = _ladder(tmp_path, noise=0.004, seed=1)
    fits = fit_ladder(arr, bootstrap=60)
    held = plan_heldout(dataclasses.replace(design), fits)
    truth = float(law(held.n_params_non_embedding, held.tokens))
    for p in predict(fits, held.n_params_non_embedding, held.tokens, held.flops)[0]:
        lo, hi = p["ci95"]
        assert lo < p["predicted_loss"] < hi
        assert lo <= truth <= hi, p
        assert abs(p["predicted_loss"] / truth - 1) < 0.03


def test_overtrained_heldout_is_off_the_ladder_and_predicted_by_approach3(tmp_path) -> None:
    design, arr = _ladder(tmp_path, noise=0.0)
    fits = fit_ladder(arr, bootstrap=20)
    over = plan_overtrained(design, fits, plan_heldout(design, fits))
    top = arr["n"][arr["budget"] == max(design.budgets)]
    assert over.role == "heldout_overtrained" and over.budget == max(design.budgets)
    assert over.n_params_non_embedding < top.min()  # never a fitted run
    # About sqrt(16) = 4x below approach 2's optimum (family sizes are discrete), so ~16x its tokens per parameter.
    assert 2.5 < fits.approach2.optimal(over.budget)[0] / over.n_params_non_embedding < 8
    (pred,), _ = predict(fits, over.n_params_non_embedding, over.tokens, over.flops, compute_optimal=False)
    assert pred["method"] == "approach3"
    assert pred["predicted_loss"] == pytest.approx(float(law(over.n_params_non_embedding, over.tokens)), rel=1e-3)
    assert plan_overtrained(dataclasses.replace(design, overtrain=0.0), fits, plan_heldout(design, fits)) is None


def test_envelope_interval_on_a_four_size_ladder(tmp_path) -> None:
    # 3 budgets x 4 sizes: resampling runs left most budgets with < 3 sizes; the parabolas' residual bootstrap keeps
    # every size, so the envelope has an interval, and it covers the true compute-optimal loss.
    design, arr = _ladder(tmp_path, noise=0.003, seed=2, budgets=(1e11, 3e11, 1e12), sizes=4)
    fitted, r = parabola_residuals(arr)
    dof = len(r) - 3 * 3
    raw = arr["loss"] - fitted
    assert r == pytest.approx(raw * np.sqrt(len(r) / dof)) and abs(raw.sum()) < 1e-9  # least-squares residuals
    fits = fit_ladder(arr, bootstrap=100)
    held = plan_heldout(design, fits)
    env = next(
        p for p in predict(fits, held.n_params_non_embedding, held.tokens, held.flops)[0] if p["method"] == "envelope"
    )
    ns = np.logspace(np.log10(held.n_params_non_embedding) - 1, np.log10(held.n_params_non_embedding) + 1, 400)
    from isoflop.ladder.grid import family_spec, point_for

    best = min(float(law(n, point_for(design, family_spec(n, design), held.budget).tokens)) for n in ns)
    lo, hi = env["ci95"]
    assert lo < env["predicted_loss"] < hi and lo <= best <= hi
