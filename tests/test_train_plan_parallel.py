"""The plan runs as it is (issue 12): the ``parallel`` section is the performance model's ``Layout`` knobs, each
taking effect or refused with one line, and a planner's tensor-parallel plan, scaled down to a micro model, trains
under torchrun."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from _train_common import MICRO, run_cli, shared_cache, write_config

from isoflop.errors import IsoflopError
from isoflop.perf.layout import Layout
from isoflop.train.config import ParallelSection, build_config
from isoflop.train.parallel.apply import check_layout


def _cfg(parallel: dict, **train) -> dict:
    cfg = json.loads(json.dumps(MICRO))
    cfg["model"]["tie_embeddings"] = False
    cfg["train"].update(train)
    return {**cfg, "parallel": parallel}


def test_the_parallel_section_is_the_layouts_knobs():
    trainer_only = {"strategy", "reshard_after_forward", "pp_schedule"}
    assert set(ParallelSection.model_fields) - trainer_only == set(Layout.field_names())
    layout = build_config(_cfg({"tp": 2, "pp": 2, "strategy": "fsdp"})).parallel.layout(
        8, "model-parallel", 2, "full", "fp32"
    )
    assert (layout.tp, layout.pp, layout.dp, layout.zero, layout.recompute) == (2, 2, 2, 3, "full")


@pytest.mark.parametrize(
    "parallel, train, needle",
    [
        ({"offload": True}, {}, "parallel.offload=true is not implemented"),
        ({"dtype": "fp8"}, {}, 'parallel.dtype="fp8" is not implemented'),
        ({"tp": 2, "sequence_parallel": False}, {}, "always runs sequence-parallel"),
        ({"replicate": 2}, {}, "needs parallel.strategy: hsdp"),
        ({"zero": 0, "strategy": "fsdp"}, {}, "parallel.zero=0 contradicts parallel.strategy=fsdp"),
        ({"micro_batch": 2}, {"micro_batch": 4}, "parallel.micro_batch=2 contradicts train.micro_batch=4"),
        ({"recompute": "none"}, {"activation_checkpointing": True}, "contradicts train.activation_checkpointing"),
        ({"dtype": "fp32"}, {"dtype": "bf16"}, 'contradicts train.dtype="bf16"'),
    ],
)
def test_knobs_the_trainer_cannot_honour_are_refused(parallel, train, needle):
    with pytest.raises(IsoflopError, match=needle.replace("(", r"\(")):
        build_config(_cfg(parallel, **train))


@pytest.mark.parametrize("policy", ["none", "selective", "op", "full"])
def test_every_recompute_policy_of_the_model_runs_in_the_trainer(policy):
    cfg = build_config(_cfg({"recompute": policy}))
    assert cfg.train.activation_checkpointing == policy
    assert cfg.parallel.layout(1, "none", 1, cfg.train.activation_checkpointing, "fp32").recompute == policy


def test_knobs_take_effect_in_the_section_that_owns_them():
    cfg = build_config(_cfg({"micro_batch": 2, "recompute": "full", "dtype": "amp", "optimizer": "sgd", "zero": 2}))
    assert (cfg.train.micro_batch, cfg.train.activation_checkpointing, cfg.train.dtype) == (2, "full", "bf16")
    assert cfg.optim.name == "sgd" and cfg.parallel.strategy == "fsdp" and not cfg.parallel.fsdp_reshard()
    again = build_config(cfg.model_dump(mode="json"))  # the resolved config (config.yaml) reads back the same
    assert again == cfg
    with pytest.raises(IsoflopError, match="must equal the 4 launched processes"):
        check_layout(build_config(_cfg({"dp": 2})), 4)


@pytest.mark.slow
def test_a_tensor_parallel_plan_scaled_down_trains_as_it_is(tmp_path_factory, tmp_path):
    """``isoflop plan`` on 2048 H100s picks tensor parallelism (the global batch leaves fewer data-parallel
    ranks than GPUs); its plan.yaml, with the model and the run scaled down and dp scaled to 4 processes, trains
    under torchrun with every other ``parallel`` field as planned."""
    cache = shared_cache(tmp_path_factory)
    plan = tmp_path / "plan.yaml"
    result = run_cli(["plan", "--gpu", "h100-sxm", "--gpus", "2048", "--days", "7", "--out", str(plan)], cache)
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = yaml.safe_load(plan.read_text())
    par = cfg["parallel"]
    assert par["tp"] > 1 or par["pp"] > 1, par
    inner = par["tp"] * par["pp"] * par["cp"]
    world = 4
    par["dp"] = world // inner
    par["replicate"] = math.gcd(par["replicate"], par["dp"])
    cfg["model"] = {**MICRO["model"], "n_layers": max(2, par["pp"]), "tie_embeddings": False}
    cfg["data"] = MICRO["data"]
    cfg["train"].update(seq_len=32, global_batch=8, tokens=None, max_steps=3, eval_every=0, eval_batches=1)
    cfg["predicted"] = None
    scaled = write_config(tmp_path / "scaled.yaml", cfg)
    out = tmp_path / "run"
    result = run_cli(["train", str(scaled), "--out", str(out), "--nproc-per-node", str(world), "--json"], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["world"] == world
    assert summary["strategy"].startswith(f"tp{par['tp']} x pp{par['pp']}")
    assert summary["micro_batch"] == cfg["train"]["micro_batch"] and math.isfinite(summary["val_loss"])
    ran = yaml.safe_load((out / "config.yaml").read_text())["parallel"]
    assert {k: ran[k] for k in par} == par  # the parallel section ran as written


def test_a_plans_recompute_policy_is_the_trainers():
    """plan_file passes the planned recompute policy through unchanged (no more selective/op -> full)."""
    import dataclasses

    from isoflop.plan.plan_file import plan_train_config
    from isoflop.plan.planner import PlanRequest, make_plan

    plan = make_plan(PlanRequest(gpu="h100-sxm", n_gpus=64, days=14))
    for policy in ("none", "selective", "op", "full"):
        hardware = dataclasses.replace(plan.hardware, layout={**plan.hardware.layout, "recompute": policy})
        cfg = plan_train_config(dataclasses.replace(plan, hardware=hardware))
        assert cfg.train.activation_checkpointing == policy
