"""Which parameters a law's N counts (``param_kind``) and how ``isoflop plan`` honours it: Kaplan et al. 2020 count
non-embedding parameters (Sec. 1.2, C = 6 N D in Eq. 2.1), Hoffmann et al. 2022 count all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isoflop.errors import IsoflopError
from isoflop.laws import get_law_preset
from isoflop.laws.forms import PRESETS, load_law
from isoflop.laws.moe import MOE_PRESETS  # MoE presets state theirs in tests/test_moe_laws.py
from isoflop.spec import ModelSpec, count_params

ARCH_TOLERANCE = 0.1  # isoflop.plan.arch.shape_for_params' default


def test_presets_state_their_papers_counts() -> None:
    kinds = {name: get_law_preset(name).param_kind for name in PRESETS if name not in MOE_PRESETS}
    assert kinds == {"hoffmann": "total", "besiroglu": "total", "kaplan": "non_embedding", "muennighoff": "total"}


def test_kaplan_plan_is_sized_and_costed_in_non_embedding_parameters(cli) -> None:
    # 1e18 FLOPs: Kaplan's optimum is 117M non-embedding parameters; the 32k-vocabulary embeddings add ~20% more,
    # beyond the architecture's tolerance, so a model sized by its total count would fail the first check.
    budget = 1e18
    plan = cli("plan", "--law", "kaplan", "--budget-flops", str(budget), "--json").json()
    n_closed, _ = get_law_preset("kaplan").optimal(budget)
    counts = count_params(ModelSpec(**plan["model"]["spec"]))
    n = counts.non_embedding
    assert plan["law"]["param_kind"] == plan["law_optimum"]["param_kind"] == "non_embedding"
    assert plan["model"]["non_embedding_params"] == n
    assert abs(n / float(n_closed) - 1) < ARCH_TOLERANCE
    assert abs(counts.total / float(n_closed) - 1) > ARCH_TOLERANCE
    assert plan["tokens"] == pytest.approx(budget / (6 * n), rel=1e-12)
    assert plan["flops"] == pytest.approx(budget, rel=1e-12)
    assert plan["tokens_per_param"] == pytest.approx(plan["tokens"] / n, rel=1e-12)
    assert plan["predicted_loss"] == pytest.approx(
        float(get_law_preset("kaplan").predict(n, plan["tokens"])), rel=1e-12
    )
    assert "counts non-embedding" in cli("plan", "--law", "kaplan", "--budget-flops", str(budget)).out


def test_besiroglu_plan_is_sized_in_total_parameters(cli) -> None:
    budget = 1e21
    plan = cli("plan", "--law", "besiroglu", "--budget-flops", str(budget), "--json").json()
    n_closed, _ = get_law_preset("besiroglu").optimal(budget)
    n = count_params(ModelSpec(**plan["model"]["spec"])).total
    assert plan["law"]["param_kind"] == "total" and plan["model"]["params"] == n
    assert n == pytest.approx(float(n_closed), rel=0.01)
    assert plan["tokens"] == pytest.approx(budget / (6 * n), rel=1e-12)


def test_kaplan_hardware_plan_spends_six_n_non_embedding_per_token(cli) -> None:
    plan = cli("plan", "--law", "kaplan", "--gpu", "h100-sxm", "--gpus", "8", "--days", "2", "--json").json()
    n = plan["model"]["non_embedding_params"]
    assert plan["budget"]["converged"]
    assert plan["tokens"] == pytest.approx(plan["tokens_per_s"] * plan["days"] * 86400, rel=0.01)
    assert plan["flops"] == pytest.approx(6 * n * plan["tokens"], rel=1e-12)
    n_closed, _ = get_law_preset("kaplan").optimal(plan["budget"]["flops"])
    assert abs(n / float(n_closed) - 1) < ARCH_TOLERANCE


def test_law_files_round_trip_param_kind_and_old_files_load_as_total(tmp_path) -> None:
    law = get_law_preset("kaplan")
    for name in ("law.json", "law.yaml"):
        assert load_law(law.save(tmp_path / name)).param_kind == "non_embedding"
    old = {k: v for k, v in get_law_preset("besiroglu").to_dict().items() if k != "param_kind"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_law(tmp_path / "old.json").param_kind == "total"
    (tmp_path / "bad.json").write_text(json.dumps({**old, "param_kind": "embedding"}))
    with pytest.raises(IsoflopError, match="param_kind must be 'total' or 'non_embedding'"):
        load_law(tmp_path / "bad.json")


def test_derived_laws_keep_param_kind() -> None:
    from isoflop.laws.allocation import data_constrained
    from isoflop.laws.forms import ChinchillaLaw

    law = ChinchillaLaw("x", param_kind="non_embedding", **PRESETS["besiroglu"]["params"])
    dc = data_constrained(law)
    assert dc.param_kind == dc.base().param_kind == "non_embedding"
    law.samples_ = np.array([list(law.params_.values())] * 2)
    assert {s.param_kind for s in law.sample_laws()} == {"non_embedding"}


@pytest.mark.parametrize("approach", ["2", "3"])
def test_fit_records_param_kind_and_plan_uses_it(cli, tmp_path, approach) -> None:
    truth = get_law_preset("besiroglu")
    rows = []
    for c in np.geomspace(1e18, 1e21, 4):
        for n in truth.optimal(c)[0] * np.geomspace(0.2, 5, 7):
            rows.append({"N": n, "C": c, "loss": float(truth.predict(n, c / (6 * n)))})
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    law_file = tmp_path / "law.json"
    fitted = cli(
        "fit",
        str(runs),
        "--c-col",
        "C",
        "--n-col",  # names the column that counts non-embedding parameters (issue 18: else refused)
        "N",
        "--approach",
        approach,
        "--param-kind",
        "non_embedding",
        "--out",
        str(law_file),
        "--json",
    )
    assert fitted.code == 0, fitted.err
    assert fitted.json()["param_kind"] == json.loads(law_file.read_text())["param_kind"] == "non_embedding"
    budget = 1e21
    plan = cli("plan", "--law", str(law_file), "--budget-flops", str(budget), "--json").json()
    n_law, _ = load_law(law_file).optimal(budget)
    n = plan["model"]["non_embedding_params"]
    assert plan["law"]["param_kind"] == "non_embedding"
    assert abs(n / float(n_law) - 1) < ARCH_TOLERANCE
    assert plan["tokens"] == pytest.approx(budget / (6 * n), rel=1e-12)
    default = cli("fit", str(runs), "--c-col", "C", "--approach", approach, "--json").json()
    assert default["param_kind"] == "total"


def test_bad_param_kind_is_one_line_exit_2(cli, tmp_path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text(
        "N,D,loss\n" + "".join(f"{n},{20 * n},{3 - i / 10}\n" for i, n in enumerate(np.geomspace(1e7, 1e9, 6)))
    )
    result = cli("fit", str(runs), "--param-kind", "embedding")
    assert result.code == 2, result.out
    assert "param_kind must be 'total' or 'non_embedding'" in result.err and len(result.err.strip().splitlines()) == 1
