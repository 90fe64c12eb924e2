"""MoE scaling laws (isoflop.laws.moe): Clark et al. 2022 and Krajewski et al. 2024 against the papers' own numbers,
fit reproduction from the published laws, and `isoflop fit --form moe_*` end to end."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from isoflop.laws import load_law
from isoflop.laws.forms import law_from_dict
from isoflop.laws.moe import GranularityLaw, RoutedLaw, saturated_experts


def test_clark_presets_are_table_3():
    for name, row in {
        "clark-sbase": (-0.082, -0.108, 0.009, 1.104, 1.847, 314.478),
        "clark-rlr": (-0.083, -0.126, 0.012, 1.111, 1.880, 469.982),
        "clark-hash": (-0.087, -0.136, 0.012, 1.157, 4.175, 477.741),
    }.items():
        law = load_law(name)
        assert isinstance(law, RoutedLaw)
        assert tuple(law.params_.values()) == row


def test_saturating_transform_limits():
    # Clark et al. 2022, Sec. 4: Ê(1) = E_start, Ê -> E_max as E grows, Ê ~ E in between
    assert saturated_experts(1.0, 1.847, 314.478) == pytest.approx(1.847)
    assert saturated_experts(1e12, 1.847, 314.478) == pytest.approx(314.478, rel=1e-6)
    assert saturated_experts(16.0, 1.847, 314.478) == pytest.approx(16.0, rel=0.1)


def test_clark_dense_limit_matches_the_papers_dense_fit():
    # The paper's dense fit (Sec. 3): L = (N_c / N)^alpha_N with alpha_N = 0.078, N_c = 3.568e13; the S-BASE
    # law at E = 1 must describe the same dense models.
    law = load_law("clark-sbase")
    n = np.geomspace(1e7, 1.3e9, 6)
    assert law.predict(n, 1) == pytest.approx((3.568e13 / n) ** 0.078, rel=0.03)


def test_clark_effective_parameter_count_example():
    # Clark et al. 2022, Sec. 5.1: a 5M-parameter model with 128 experts performs like a ~55M dense model;
    # the published (rounded) S-BASE constants give 51.8M.
    law = load_law("clark-sbase")
    assert float(law.effective_params(5e6, 128)) == pytest.approx(55e6, rel=0.1)
    assert float(law.effective_params(1e8, 1)) == pytest.approx(1e8, rel=1e-9)


def test_clark_cutoff_where_routing_stops_helping():
    # Clark et al. 2022, Sec. 4.2: S-BASE routing stops helping at N_cutoff = 937B (b + c log10 N = 0); the
    # rounded Table 3 constants give 10^(0.108 / 0.009) = 1e12.
    law = load_law("clark-sbase")
    assert law.cutoff_params() == pytest.approx(937e9, rel=0.1)
    below, above = 1e10, 1e13
    assert law.predict(below, 64) < law.predict(below, 1)
    assert law.predict(above, 64) > law.predict(above, 1)


def test_krajewski_presets_are_table_1():
    law = load_law("krajewski")
    assert isinstance(law, GranularityLaw)
    assert law.params_ == {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}
    dense = load_law("krajewski-dense")
    assert dense.params_ == {"E": 0.47, "A": 16.3, "B": 26.7, "alpha": 0.126, "beta": 0.127}
    n, d, g = 1e9, 2e10, 8.0
    closed = 0.47 + (2.1 / g**0.58 + 18.1) / n**0.115 + 30.8 / d**0.147
    assert float(law.predict(n, d, g)) == pytest.approx(closed, rel=1e-12)
    # finer experts lower the loss, with diminishing returns (the g / G^gamma term)
    losses = law.predict(n, d, [1, 2, 4, 8, 16, 32])
    assert np.all(np.diff(losses) < 0) and np.all(np.diff(np.diff(losses)) > 0)


def _clark_runs(noise: float, seed: int = 0):
    law = load_law("clark-sbase")
    experts = np.tile([1, 2, 4, 8, 16, 32, 64, 128, 256, 512], 6).astype(float)
    n = np.repeat(np.geomspace(1.5e7, 1.3e9, 6), 10)
    loss = law.predict(n, experts) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return law, n, experts, loss


def test_clark_fit_recovers_the_published_law():
    truth, n, e, loss = _clark_runs(0.0)
    fitted = RoutedLaw().fit_runs(n, e, loss)
    for key in ("a", "b", "c", "d"):
        assert fitted.params_[key] == pytest.approx(truth.params_[key], abs=2e-4)
    truth, n, e, loss = _clark_runs(0.002)
    fitted = RoutedLaw().fit_runs(n, e, loss)
    assert fitted.params_["a"] == pytest.approx(-0.082, abs=0.003)
    assert fitted.params_["b"] == pytest.approx(-0.108, abs=0.01)
    held = (np.array([3e7, 2e9]), np.array([24.0, 48.0]))
    assert fitted.predict(*held) == pytest.approx(truth.predict(*held), rel=0.005)


def _krajewski_runs(noise: float, seed: int = 0):
    law = load_law("krajewski")
    n = np.repeat(np.geomspace(1e8, 4e9, 5), 16)
    d = np.tile(np.repeat(np.geomspace(1.6e10, 1.3e11, 4), 4), 5)
    g = np.tile([1.0, 2.0, 4.0, 16.0], 20)
    loss = law.predict(n, d, g) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return law, n, d, g, loss


def test_krajewski_fit_recovers_the_published_law():
    truth, n, d, g, loss = _krajewski_runs(0.0)
    fitted = GranularityLaw().fit_runs(n, d, g, loss)
    for key, value in truth.params_.items():
        assert fitted.params_[key] == pytest.approx(value, rel=0.02), key
    truth, n, d, g, loss = _krajewski_runs(0.002)
    fitted = GranularityLaw().fit_runs(n, d, g, loss)
    assert fitted.params_["alpha"] == pytest.approx(0.115, abs=0.01)
    assert fitted.params_["gamma"] == pytest.approx(0.58, abs=0.1)
    held = (np.array([6e9, 2e8]), np.array([2e11, 1e10]), np.array([8.0, 32.0]))
    assert fitted.predict(*held) == pytest.approx(truth.predict(*held), rel=0.01)


def test_moe_law_file_round_trip(tmp_path):
    law = load_law("krajewski")
    path = law.save(tmp_path / "law.yaml")
    back = law_from_dict(__import__("yaml").safe_load(path.read_text()))
    assert isinstance(back, GranularityLaw) and back.params_ == law.params_
    assert load_law(str(path)).predict(1e9, 1e10, 4) == law.predict(1e9, 1e10, 4)


def _write(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_cli_fit_moe_granularity_with_bootstrap(cli, tmp_path):
    _, n, d, g, loss = _krajewski_runs(0.002)
    runs = _write(tmp_path / "runs.csv", ["params_no_embed", "tokens", "granularity", "loss"], zip(n, d, g, loss))
    out = tmp_path / "law.json"
    res = cli(
        "fit",
        runs,
        "--form",
        "moe_granularity",
        "--param-kind",
        "non_embedding",
        "--bootstrap",
        "8",
        "--out",
        str(out),
        "--json",
    )
    assert res.code == 0, res.err
    report = res.json()
    assert report["columns"] == {"N": "params_no_embed", "loss": "loss", "D": "tokens", "granularity": "granularity"}
    assert report["params"]["alpha"] == pytest.approx(0.115, abs=0.01)
    lo, hi = report["ci95"]["alpha"]
    assert lo <= report["params"]["alpha"] <= hi
    law = load_law(str(out))
    assert law.param_kind == "non_embedding" and law.params_ == pytest.approx(report["params"])


def test_cli_fit_moe_routed_reads_n_experts(cli, tmp_path):
    _, n, e, loss = _clark_runs(0.001)
    runs = _write(tmp_path / "runs.csv", ["params", "n_experts", "loss"], zip(n, e, loss))
    res = cli("fit", runs, "--form", "moe_routed", "--json")
    assert res.code == 0, res.err
    report = res.json()
    assert report["columns"]["experts"] == "n_experts"
    assert report["params"]["a"] == pytest.approx(-0.082, abs=0.003)
    assert math.isfinite(report["cutoff_params"])


@pytest.mark.parametrize(
    ("header", "rows", "extra", "needle"),
    [
        (["params", "tokens", "loss"], [[1e8, 1e10, 3.0]] * 9, [], "no column for granularity"),
        (["params", "tokens", "granularity", "loss"], [[1e8, 1e10, 0.5, 3.0]] * 9, [], "granularity"),
        (["params", "n_experts", "loss"], [[1e8, 8, 3.0]] * 9, ["--group-by", "params"], "--group-by"),
        (["params", "n_experts", "loss"], [[1e8, 8, -3.0]] * 9, [], "positive"),
    ],
)
def test_cli_fit_moe_bad_input_is_one_line(cli, tmp_path, header, rows, extra, needle):
    runs = _write(tmp_path / "bad.csv", header, rows)
    form = "moe_granularity" if "tokens" in header else "moe_routed"
    res = cli("fit", runs, "--form", form, *extra)
    assert res.code == 2
    assert len(res.err.strip().splitlines()) == 1 and res.err.startswith("error: ") and needle in res.err


def test_unknown_moe_preset_is_one_line(cli):
    res = cli("plan", "--moe", "--budget-flops", "1e20", "--law", "krajewsky")
    assert res.code == 2 and res.err.startswith("error: ") and len(res.err.strip().splitlines()) == 1


def test_moe_presets_state_their_papers_counts():
    from isoflop.laws.moe import MOE_PRESETS

    assert {name: load_law(name).param_kind for name in MOE_PRESETS} == dict.fromkeys(MOE_PRESETS, "non_embedding")
