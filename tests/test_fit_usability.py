"""`isoflop fit` usability (issue 18): --where comparisons and sets, --group-by, --predict, the IsoFLOP-grid check
and --param-kind non_embedding, against filters and fits computed independently from the CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from isoflop.laws import ChinchillaLaw
from isoflop.laws import fit as F
from isoflop.laws.filters import RowFilter, parse_filters


@pytest.fixture
def gadre(shared_data):
    path = shared_data / "overtraining_gadre2024.csv"
    return path, list(csv.DictReader(path.open()))


def _fit_rows(rows, loss_col="loss_c4_val", n_col="params") -> ChinchillaLaw:
    n = np.array([float(r[n_col]) for r in rows])
    d = np.array([float(r["tokens"]) for r in rows])
    loss = np.array([float(r[loss_col]) for r in rows])
    return F.fit(ChinchillaLaw("ref"), n, d, loss)


def test_filters_compare_numbers_as_numbers() -> None:
    assert RowFilter.parse("chinchilla_multiplier=4").matches("4.0")
    assert RowFilter.parse("params<=4.2e8").matches("411616256") and not RowFilter.parse("params<4e8").matches("4.2e8")
    in_set = RowFilter.parse("chinchilla_multiplier in 1, 16")
    assert [in_set.matches(v) for v in ("1.0", "16", "4")] == [True, True, False]
    assert RowFilter.parse("train_dataset!=rpj").matches("c4_original")
    assert parse_filters({"a": "1"}) == [RowFilter("a", "=", ("1",))]


def test_where_and_predict_match_an_independent_fit(cli, gadre) -> None:
    path, rows = gadre
    keep = [
        r
        for r in rows
        if r["train_dataset"] == "rpj" and float(r["params"]) <= 4.2e8 and float(r["chinchilla_multiplier"]) in (1, 16)
    ]
    res = cli(
        "fit", str(path), "--loss-col", "loss_c4_val", "--where", "train_dataset=rpj", "--where", "params<=4.2e8",
        "--where", "chinchilla_multiplier in 1,16.0", "--predict", "1.4e9,2.8e10", "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["n_points"] == len(keep)
    ref = _fit_rows(keep)
    assert out["params"]["alpha"] == pytest.approx(ref.params_["alpha"], rel=1e-9)
    (pred,) = out["predictions"]
    assert pred["loss"] == pytest.approx(float(ref.predict(1.4e9, 2.8e10)), rel=1e-9)
    top = max(6 * float(r["params"]) * float(r["tokens"]) for r in keep)
    assert pred["extrapolation"] == pytest.approx(6 * 1.4e9 * 2.8e10 / top, rel=1e-9)
    assert pred["ci95"] is None  # no bootstrap asked
    assert any("extrapolates" in w for w in out["warnings"])  # the default --at-flops is far beyond the data


def test_predict_interval_from_the_bootstrap(cli, gadre) -> None:
    path, _ = gadre
    args = ("fit", str(path), "--loss-col", "loss_c4_val", "--where", "train_dataset=rpj", "--bootstrap", "20")
    out = json.loads(cli(*args, "--predict", "4e8,8e9", "--json").out)
    lo, hi = out["predictions"][0]["ci95"]
    assert lo <= out["predictions"][0]["loss"] <= hi


def test_group_by_fits_one_law_per_value(cli, gadre) -> None:
    path, rows = gadre
    res = cli("fit", str(path), "--loss-col", "loss_c4_val", "--group-by", "train_dataset", "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    groups = {g["group"]: g for g in out["groups"]}
    assert set(groups) == {r["train_dataset"] for r in rows}
    for name, g in groups.items():
        ref = _fit_rows([r for r in rows if r["train_dataset"] == name])
        assert g["params"]["beta"] == pytest.approx(ref.params_["beta"], rel=1e-9)


def test_param_kind_non_embedding_uses_that_column_or_refuses(cli, gadre, shared_data) -> None:
    path, rows = gadre
    args = ("fit", str(path), "--loss-col", "loss_c4_val", "--where", "train_dataset=rpj", "--json")
    out = json.loads(cli(*args, "--param-kind", "non_embedding").out)
    assert out["columns"]["N"] == "params_no_embed"
    ref = _fit_rows([r for r in rows if r["train_dataset"] == "rpj"], n_col="params_no_embed")
    assert out["params"]["alpha"] == pytest.approx(ref.params_["alpha"], rel=1e-9)
    res = cli("fit", str(shared_data / "chinchilla_svg_extracted.csv"), "--param-kind", "non_embedding")
    assert res.code == 2 and res.err.count("\n") == 1 and "non-embedding" in res.err


def test_approach2_refuses_a_grid_that_is_not_isoflop(cli, gadre) -> None:
    path, _ = gadre
    res = cli("fit", str(path), "--loss-col", "loss_c4_val", "--where", "train_dataset=rpj", "--approach", "2")
    assert res.code == 2 and "IsoFLOP grid" in res.err and res.err.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--where", "params=", "does not parse"),
        ("--where", "params<<3", "needs a number"),
        ("--where", "params<abc", "needs a number"),
        ("--group-by", "nosuch", "not in the file"),
        ("--predict", "-1,5", "positive"),
        ("--predict", "1e9", "N,D"),
    ],
)
def test_bad_fit_flags_are_one_line_errors(cli, gadre, flag, value, needle) -> None:
    path, _ = gadre
    res = cli("fit", str(path), "--loss-col", "loss_c4_val", flag, value)
    assert res.code == 2 and res.err.startswith("error: ") and res.err.count("\n") == 1 and needle in res.err
