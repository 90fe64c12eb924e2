"""calibrate: recovers step-time behaviour from measurements made with known constants; writes the file perf reads."""

from __future__ import annotations

import json

import pytest
import yaml

from isoflop.hardware import get_gpu
from isoflop.perf import Layout, estimate, load_constants
from isoflop.spec import get_model_preset

CASES = [
    ("gpt2", 1, {}, 8),
    ("gpt2", 8, {}, 64),
    ("gpt3-350m", 8, {"micro_batch": 2}, 64),
    ("llama3-8b", 8, {"tp": 8}, 32),
    ("gpt3-1.3b", 16, {"zero": 1, "micro_batch": 2}, 256),
    ("gpt2-medium", 4, {"recompute": "full"}, 16),
]


def _measurements(path, truth: dict[str, float]) -> list[dict]:
    """Step times and memory 'measured' on a GPU whose true constants differ from the built-in ones."""
    gpu = get_gpu("h100-sxm")
    const = load_constants("h100-sxm").replace(**truth)
    rows = []
    for model, n, lay, batch in CASES:
        layout = Layout(dp=n // lay.get("tp", 1), **lay)
        est = estimate(get_model_preset(model), gpu, n, layout, batch, 1024, constants=const)
        rows.append(
            {
                "model": model,
                "gpu": "h100-sxm",
                "n_gpus": n,
                "global_batch": batch,
                "seq_len": 1024,
                "step_time_s": est.step_time_s,
                "memory_gib": est.memory["total_gib"],
                **lay,
            }
        )
    path.write_text(json.dumps(rows))
    return rows


def test_calibrate_cli_reduces_error_and_perf_reads_the_file(cli, tmp_path, monkeypatch) -> None:
    calib = tmp_path / "calibration.yaml"
    monkeypatch.delenv("ISOFLOP_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/isoflop/calibration.yaml of the user's
    base = load_constants("h100-sxm")
    truth = {"gemm_eff_max": base.gemm_eff_max * 0.6, "step_overhead_s": 0.03, "fixed_overhead_gib": 3.0}
    rows = _measurements(tmp_path / "runs.json", truth)
    monkeypatch.setenv("ISOFLOP_CALIBRATION", str(calib))  # does not exist yet: calibrate creates it

    out = cli("calibrate", str(tmp_path / "runs.json"), "--json")
    assert out.code == 0, out.err
    (res,) = out.json()["gpus"]
    assert res["before"]["median_abs_step_time_error_pct"] > 20
    assert res["after"]["median_abs_step_time_error_pct"] < 2
    assert res["after"]["median_abs_memory_error_pct"] < res["before"]["median_abs_memory_error_pct"]

    # The file is what perf reads: later estimates on h100-sxm are calibrated.
    assert "h100-sxm" in yaml.safe_load(calib.read_text())
    gpu, row = get_gpu("h100-sxm"), rows[1]
    est = estimate(
        get_model_preset(row["model"]),
        gpu,
        row["n_gpus"],
        Layout(dp=8),
        row["global_batch"],
        1024,
        constants=load_constants("h100-sxm"),
    )
    assert est.step_time_s == pytest.approx(row["step_time_s"], rel=0.05)


def test_csv_input_and_bad_rows(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ISOFLOP_CALIBRATION", str(tmp_path / "c.yaml"))
    csv = tmp_path / "runs.csv"
    csv.write_text(
        "model,gpu,n_gpus,global_batch,seq_len,step_time_s\ngpt2,a100-80gb,1,8,1024,0.5\ngpt2,a100-80gb,1,16,1024,0.9\n"
    )
    ok = cli("calibrate", str(csv), "--dry-run", "--json")
    assert ok.code == 0, ok.err and ok.json()["calibration_file"] is None
    assert not (tmp_path / "c.yaml").exists()
    csv.write_text("model,gpu,n_gpus,global_batch,seq_len,step_time_s\ngpt2,a100-80gb,1,8,1024,-1\n")
    bad = cli("calibrate", str(csv))
    assert bad.code == 2 and "step_time_s must be positive" in bad.err
