"""The cross-site prediction: bytes per step of DDP, PowerSGD and DiLoCo from the closed forms, and the planner
choosing DiLoCo and its H for a slow inter-site network (4 sites x 256 H100 at 100 Gbit/s)."""

from __future__ import annotations

import pytest

from isoflop.perf.lowcomm import (
    choose_sync,
    cross_site_seconds,
    diloco_run_bytes,
    powersgd_step_bytes,
    sync_bytes,
)
from isoflop.perf.optimizer_state import ParamShape

MATRIX = [ParamShape("w", (1024, 256), "linear"), ParamShape("b", (1024,), "vector")]


def test_closed_forms():
    # PowerSGD rank 4: P (1024 x 4) + Q (256 x 4) in fp32, the bias whole (Vogels et al. 2019, Alg. 1)
    assert powersgd_step_bytes(MATRIX, 4) == 4 * (1024 * 4 + 256 * 4) + 4 * 1024
    # DiLoCo H=8 over 16 steps: 2 syncs of the whole model; streaming with 2 fragments: each fragment twice too
    assert diloco_run_bytes(MATRIX, 8, 1, "fp32", 16) == 2 * 4 * (1024 * 256 + 1024)
    assert diloco_run_bytes(MATRIX, 8, 2, "bf16", 16) == 2 * 2 * (1024 * 256 + 1024)
    assert sync_bytes(128, "int4") == 2 * (32 + 4)
    # ring all-reduce of 1 GB among 4 sites at 8 Gbit/s (1 GB/s): 2 * 3/4 s
    assert cross_site_seconds(1e9, 4, 8.0) == pytest.approx(1.5)


def test_choose_sync_fast_network_keeps_ddp():
    choice = choose_sync(int(1e9), 2.0, 1000, 4, 1e6)
    assert choice.choice == "ddp" and choice.inner_steps == 1 and choice.saved_days == 0


def test_plan_picks_diloco_for_slow_sites(cli):
    res = cli(
        "plan",
        "--gpu",
        "h100-sxm",
        "--gpus",
        "1024",
        "--days",
        "30",
        "--sites",
        "4",
        "--inter-site-gbps",
        "100",
        "--json",
    )
    assert res.code == 0, res.err
    cross = res.json()["cross_site"]
    assert cross["choice"] == "diloco" and cross["inner_steps"] > 1
    assert cross["saved_days"] > 0 and cross["diloco_step_time_s"] < cross["ddp_step_time_s"]
    # the saving is the DDP step's cross-site all-reduce minus DiLoCo's amortised sync
    expect = cross["ddp_comm_s"] - cross["diloco_comm_s"]
    assert cross["ddp_step_time_s"] - cross["diloco_step_time_s"] == pytest.approx(expect)
    assert cross["ddp_step_time_s"] > cross["powersgd_step_time_s"] > cross["step_time_s"]


def test_plan_bad_sites_is_one_line(cli):
    res = cli("plan", "--gpu", "h100-sxm", "--gpus", "1024", "--days", "30", "--sites", "3", "--inter-site-gbps", "1")
    assert res.code == 2
    assert res.err.strip().startswith("error: --sites 3 does not divide --gpus 1024")
