"""``isoflop plan`` and ``isoflop fit`` as a user runs them: the issue's acceptance numbers, hardware plans,
plan.yaml in the TrainConfig schema, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from isoflop.hardware import get_gpu
from isoflop.laws import get_law_preset
from isoflop.spec import ModelSpec, count_flops, count_params


def test_plan_besiroglu_chinchilla_budget(cli) -> None:
    result = cli("plan", "--law", "besiroglu", "--budget-flops", "5.76e23", "--json")
    assert result.code == 0, result.err
    plan = result.json()
    n_closed, d_closed = get_law_preset("besiroglu").optimal(5.76e23)
    assert plan["model"]["params"] == pytest.approx(float(n_closed), rel=0.01)
    assert plan["tokens"] == pytest.approx(float(d_closed), rel=0.01)
    assert plan["predicted_loss"] == pytest.approx(1.974, abs=1e-3)
    assert "predicted_loss_ci95" in plan
    spec = ModelSpec(**plan["model"]["spec"])
    assert count_params(spec).total == plan["model"]["params"]
    for key in ("layers", "d_model", "heads", "n_kv_heads", "ffn"):
        assert isinstance(plan["model"][key], int)
    assert plan["hyperparameters"]["lr"] > 0 and plan["hyperparameters"]["batch_tokens"] > 0


def test_hardware_plan_is_consistent(cli, tmp_path) -> None:
    out = tmp_path / "plan.yaml"
    result = cli("plan", "--gpu", "h100-sxm", "--gpus", "64", "--days", "14", "--json", "--out", str(out))
    assert result.code == 0, result.err
    plan = result.json()
    gpu = get_gpu("h100-sxm")
    assert plan["days"] == pytest.approx(14, rel=0.01)
    assert plan["gpu_hours"] == pytest.approx(64 * plan["days"] * 24)
    assert plan["cost_usd"] == pytest.approx(plan["gpu_hours"] * gpu.price_per_hour_usd)
    assert plan["energy_kwh"] == pytest.approx(plan["gpu_hours"] * gpu.tdp_watts / 1000 * plan["assumptions"]["pue"])
    assert plan["memory_gib"] <= gpu.memory_gib
    lay = plan["layout"]
    assert lay["tp"] * lay["pp"] * lay["dp"] * lay["cp"] == 64 and plan["model"]["heads"] % lay["tp"] == 0
    # The fixed point: the budget is what this model achieves on this hardware in 14 days.
    spec = ModelSpec(**plan["model"]["spec"])
    tokens = plan["tokens_per_s"] * 14 * 86400
    assert plan["tokens"] == pytest.approx(tokens, rel=0.01)
    mfu = plan["tokens_per_s"] * count_flops(spec, plan["seq_len"]).training / (64 * gpu.peak_flops("bf16"))
    assert mfu == pytest.approx(plan["mfu"], rel=1e-6) and 0.2 < mfu < 0.7
    assert 5e9 < plan["model"]["params"] < 40e9
    # plan.yaml: the TrainConfig schema, with the same numbers.
    cfg = yaml.safe_load(out.read_text())
    assert set(cfg) >= {"model", "data", "train", "optim", "parallel", "predicted", "plan"}
    assert ModelSpec(**cfg["model"]) == spec
    assert (
        cfg["train"]["tokens"] == round(plan["tokens"])
        and cfg["train"]["global_batch"] == plan["hyperparameters"]["global_batch"]
    )
    assert cfg["optim"]["lr"] == pytest.approx(plan["hyperparameters"]["lr"]) and cfg["predicted"][
        "loss"
    ] == pytest.approx(plan["predicted_loss"])
    try:
        from isoflop.train.config import load_train_config
    except ImportError:
        return
    load_train_config(out)


def test_mfu_override_scales_the_budget(cli) -> None:
    low = cli("plan", "--gpu", "a100-80gb", "--gpus", "16", "--days", "7", "--mfu", "0.25", "--json").json()
    high = cli("plan", "--gpu", "a100-80gb", "--gpus", "16", "--days", "7", "--mfu", "0.5", "--json").json()
    assert low["mfu"] == 0.25 and high["mfu"] == 0.5
    assert high["flops"] > 1.7 * low["flops"] and high["model"]["params"] > low["model"]["params"]
    assert high["cost_usd"] == pytest.approx(low["cost_usd"], rel=0.01)


def test_unique_and_inference_tokens_through_the_cli(cli) -> None:
    base = cli("plan", "--budget-flops", "1e23", "--json").json()
    scarce = cli("plan", "--budget-flops", "1e23", "--unique-tokens", "1e11", "--json").json()
    assert scarce["law_optimum"]["epochs"] > 1 and scarce["predicted_loss"] > base["predicted_loss"]
    served = cli("plan", "--budget-flops", "1e23", "--inference-tokens", "1e13", "--json").json()
    assert served["model"]["params"] < base["model"]["params"]
    assert served["law_optimum"]["compute_optimal_reference"]["lifetime_saving"] > 0
    assert "repetition" in cli("plan", "--budget-flops", "1e23", "--unique-tokens", "1e11").out


def test_fit_then_plan_with_the_fitted_law(cli, tmp_path) -> None:
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7, 10, 60), 10 ** rng.uniform(9, 11.5, 60)
    law = get_law_preset("besiroglu")
    loss = law.predict(n, d) * np.exp(rng.normal(0, 0.003, 60))
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps({"params": a, "tokens": b, "loss": c}) + "\n" for a, b, c in zip(n, d, loss)))
    law_file = tmp_path / "law.json"
    fitted = cli(
        "fit", str(runs), "--bootstrap", "40", "--out", str(law_file), "--plot", str(tmp_path / "fit.png"), "--json"
    )
    assert fitted.code == 0, fitted.err
    report = fitted.json()
    assert report["params"]["alpha"] == pytest.approx(0.3478, rel=0.1) and len(report["ci95"]["a_opt"]) == 2
    assert report["fit"]["bootstrap"]["converged"] + report["fit"]["bootstrap"]["dropped"] == 40
    assert (tmp_path / "fit.png").stat().st_size > 1000
    plan = cli("plan", "--law", str(law_file), "--budget-flops", "1e22", "--json").json()
    lo, hi = plan["predicted_loss_ci95"]
    assert lo < plan["predicted_loss"] < hi


def test_fit_approach2_cli_and_csv_with_c_col(cli, tmp_path) -> None:
    law = get_law_preset("besiroglu")
    rows = ["model_size,flops,final"]
    for c in np.geomspace(1e18, 1e21, 4):
        for n in law.optimal(c)[0] * np.geomspace(0.2, 5, 7):
            rows.append(f"{n},{c},{float(law.predict(n, c / (6 * n)))}")
    path = tmp_path / "iso.csv"
    path.write_text("\n".join(rows) + "\n")
    result = cli(
        "fit",
        str(path),
        "--approach",
        "2",
        "--n-col",
        "model_size",
        "--c-col",
        "flops",
        "--loss-col",
        "final",
        "--json",
    )
    assert result.code == 0, result.err
    assert result.json()["a_opt"] == pytest.approx(law.a_opt, abs=0.01)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["plan", "--budget-flops", "1e12"], "too small"),
        (["plan", "--budget-flops", "1e22", "--gpu", "h100-sxm", "--gpus", "8", "--days", "1"], "exactly one"),
        (["plan", "--gpu", "h100-sxm", "--gpus", "8"], "--days"),
        (["plan", "--budget-flops", "-5"], "positive"),
        (["plan", "--budget-flops", "1e22", "--law", "nope"], "preset"),
        (["plan", "--gpu", "h100", "--gpus", "8", "--days", "1"], "unknown GPU"),
        (["fit", "/nonexistent.csv"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, args, needle) -> None:
    result = cli(*args)
    assert result.code == 2, result.out
    assert needle in result.err and len(result.err.strip().splitlines()) == 1


def test_fit_bad_files(cli, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D,loss\n1e8,1e9,3.1\n2e8,nan,3.0\n")
    result = cli("fit", str(bad))
    assert result.code == 2 and "row 2" in result.err
    missing = tmp_path / "missing.csv"
    missing.write_text("N,tokens_seen,loss\n1e8,1e9,3.1\n")
    result = cli("fit", str(missing))
    assert result.code == 2 and "--d-col or --c-col" in result.err
    few = tmp_path / "few.csv"
    few.write_text("N,D,loss\n1e8,1e9,3.1\n2e8,1e9,3.0\n3e8,1e9,2.9\n")
    result = cli("fit", str(few))
    assert result.code == 2 and "at least 5 runs" in result.err


def test_help_for_fit_and_plan(cli) -> None:
    for cmd in ("fit", "plan"):
        assert cli(cmd, "--help").code == 0


def test_runs_from_parquet_and_malformed_jsonl(cli, tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from isoflop.laws.io import read_runs

    rng = np.random.default_rng(2)
    n, d = 10 ** rng.uniform(7, 10, 30), 10 ** rng.uniform(9, 11.5, 30)
    loss = get_law_preset("besiroglu").predict(n, d)
    path = tmp_path / "runs.parquet"
    pq.write_table(pa.table({"N": n, "D": d, "loss": loss}), path)
    runs = read_runs(path)
    assert np.array_equal(runs.n, n) and runs.columns == {"N": "N", "loss": "loss", "D": "D"}
    result = cli("fit", str(path), "--json")
    assert result.code == 0 and result.json()["params"]["alpha"] == pytest.approx(0.3478, rel=1e-3)
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"N": 1e8, "D": 1e9, "loss": 3}\n{oops\n')
    result = cli("fit", str(bad))
    assert result.code == 2 and "line 2" in result.err


def test_plan_yaml_without_hardware(cli, tmp_path) -> None:
    out = tmp_path / "plan.yaml"
    assert (
        cli("plan", "--budget-flops", "1e19", "--vocab-size", "4096", "--seq-len", "256", "--out", str(out)).code == 0
    )
    cfg = yaml.safe_load(out.read_text())
    assert cfg["parallel"]["strategy"] == "auto" and cfg["train"]["micro_batch"] is None
    assert cfg["model"]["vocab_size"] == cfg["data"]["vocab_size"] == 4096 and cfg["train"]["seq_len"] == 256
