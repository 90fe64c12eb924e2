"""``isoflop estimate`` and ``isoflop layout`` through the real entry point."""

from __future__ import annotations

import pytest

from isoflop.perf import load_constants
from isoflop.perf.constants import PerfConstants, calibratable


def test_estimate_json_keys(cli) -> None:
    res = cli(
        "estimate",
        "llama3-8b",
        "--gpu",
        "h100-sxm",
        "--gpus",
        "8",
        "--zero",
        "3",
        "--recompute",
        "full",
        "--global-batch",
        "16",
        "--seq-len",
        "4096",
        "--json",
    )
    assert res.code == 0, res.err
    data = res.json()
    for key in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "total_gib"):
        assert data["memory"][key] > 0
    assert data["fits"] is True and data["dp"] == 8 and data["microbatches"] == 2
    for key in ("step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu"):
        assert data[key] > 0
    assert set(data["breakdown"]) >= {"compute_s", "exposed_comm_s", "bubble_s"}
    table = cli("estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "1", "--seq-len", "8192")
    assert table.code == 0 and "does not fit" in table.out and "MFU" in table.out


def test_estimate_framework_profile_and_band(cli) -> None:
    """--framework changes the constants (Megatron-LM 2021: unfused attention, DP gradients not overlapped:
    slower); the 90% band brackets the point estimate."""
    args = ("estimate", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "16", "--tp", "8", "--pp", "2", "--json")
    plain = cli(*args, "--global-batch", "32").json()
    megatron = cli(*args, "--global-batch", "32", "--framework", "megatron").json()
    assert megatron["step_time_s"] > plain["step_time_s"]
    lo, hi = plain["step_time_s_ci90"]
    assert lo < plain["step_time_s"] < hi
    mlo, mhi = plain["mfu_ci90"]
    assert mlo < plain["mfu"] < mhi


def test_layout_json_list(cli) -> None:
    res = cli(
        "layout",
        "llama3-70b",
        "--gpu",
        "h100-sxm",
        "--gpus",
        "64",
        "--global-batch",
        "512",
        "--seq-len",
        "8192",
        "--top",
        "3",
        "--json",
    )
    assert res.code == 0, res.err
    rows = res.json()
    assert len(rows) == 3 and rows[0]["tokens_per_s"] >= rows[1]["tokens_per_s"] * 0.995
    for key in (
        "tp",
        "pp",
        "dp",
        "cp",
        "zero",
        "recompute",
        "micro_batch",
        "interleave",
        "sequence_parallel",
        "mfu",
        "reason",
    ):
        assert key in rows[0]
    fixed = cli(
        "layout",
        "llama3-70b",
        "--gpu",
        "h100-sxm",
        "--gpus",
        "64",
        "--global-batch",
        "512",
        "--tp",
        "8",
        "--pp",
        "2",
        "--json",
    )
    assert fixed.code == 0 and all(r["tp"] == 8 and r["pp"] == 2 for r in fixed.json())


def test_layout_nothing_fits_says_what_would(cli) -> None:
    res = cli("layout", "llama3-405b", "--gpu", "h100-sxm", "--gpus", "8", "--global-batch", "64", "--seq-len", "8192")
    assert res.code == 0 and "no layout fits" in res.out and "GPUs" in res.out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--gpus", "24", "--tp", "3"], "does not divide n_heads"),
        (["--gpus", "64", "--pp", "64"], "exceeds n_layers=32"),
        (["--gpus", "4", "--pp", "4", "--interleave", "3"], "does not divide the 8 layers per pipeline stage"),
        (["--gpus", "8", "--framework", "jax"], "unknown framework profile 'jax'; use one of deepspeed, fsdp"),
        (["--gpus", "8", "--tp", "2", "--dp", "2"], "must equal the GPU count"),
        (["--gpus", "8", "--global-batch", "12", "--micro-batch", "2"], "not divisible"),
        (["--gpus", "8", "--zero", "5"], "zero must be"),
        (["--gpus", "8", "--recompute", "most"], "recompute must be"),
    ],
)
def test_bad_layouts_are_one_line_errors(cli, args, needle) -> None:
    res = cli("estimate", "llama3-8b", "--gpu", "h100-sxm", *args)
    assert res.code == 2 and needle in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_unknown_gpu(cli) -> None:
    for cmd in (["estimate"], ["layout", "--global-batch", "8"]):
        res = cli(*cmd, "llama3-8b", "--gpu", "h1000", "--gpus", "8")
        assert res.code == 2 and "unknown GPU" in res.err


def test_calibration_file_overrides_constants(tmp_path, monkeypatch) -> None:
    path = tmp_path / "calibration.yaml"
    path.write_text("h100-sxm: {gemm_eff_max: 0.5, step_overhead_s: 0.25}\n")
    monkeypatch.setenv("ISOFLOP_CALIBRATION", str(path))
    c = load_constants("h100-sxm")
    assert c.gemm_eff_max == 0.5 and c.step_overhead_s == 0.25
    assert load_constants("a100-80gb").gemm_eff_max != 0.5
    path.write_text("h100-sxm: {gemm_speed: 2}\n")
    with pytest.raises(Exception, match="unknown constant"):
        load_constants("h100-sxm")
    monkeypatch.setenv("ISOFLOP_CALIBRATION", str(tmp_path / "missing.yaml"))
    with pytest.raises(Exception, match="does not exist"):
        load_constants("h100-sxm")


def test_calibratable_names_are_constants() -> None:
    assert set(calibratable()) <= set(PerfConstants.model_fields)


def test_help(cli) -> None:
    for cmd in ("estimate", "layout"):
        res = cli(cmd, "--help")
        assert res.code == 0 and "--gpu" in res.out
