"""TrainConfig validation, overrides and learning-rate schedules (closed forms)."""

from __future__ import annotations

import math

import pytest
import yaml

from isoflop.errors import IsoflopError
from isoflop.train.config import build_config, load_train_config, preset_names
from isoflop.train.schedule import default_warmup, lr_at


def test_tiny_preset_loads_and_resolves():
    cfg = load_train_config(preset="tiny")
    assert "tiny" in preset_names()
    spec = cfg.model
    assert spec.name == "tiny-llama" and cfg.total_steps() == 40
    assert cfg.micro_batch_for(2) == (8, 1)


def test_plan_yaml_schema_runs_as_is(tmp_path):
    """Every section of the shared plan.yaml schema, including the planner's informational layout fields."""
    plan = {
        "model": {"preset": "tiny-llama", "n_layers": 2},
        "data": {"source": "stdlib", "vocab_size": 4096, "tokenizer": None},
        "train": {
            "seq_len": 128,
            "global_batch": 32,
            "micro_batch": 8,
            "max_steps": None,
            "tokens": "3.2e6",
            "seed": 0,
            "dtype": "auto",
            "compile": False,
            "activation_checkpointing": False,
            "eval_every": 50,
            "eval_batches": 8,
            "log_every": 10,
            "ckpt_every": 0,
            "keep_checkpoints": 2,
        },
        "optim": {
            "lr": 3.0e-3,
            "min_lr_ratio": 0.1,
            "schedule": "wsd",
            "warmup_steps": None,
            "decay_fraction": 0.2,
            "weight_decay": 0.1,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1.0e-8,
            "grad_clip": 1.0,
        },
        "parallel": {"strategy": "auto", "replicate": 1, "tp": 1, "pp": 1, "dp": 64, "zero": 2},
        "predicted": {
            "loss": 2.1,
            "loss_ci95": [2.0, 2.2],
            "step_time_s": 1.2,
            "memory_gib": 40.0,
            "tokens_per_s": 1.0e6,
            "mfu": 0.4,
        },
        "plan": {"budget": {"flops": 1e21}, "law": "besiroglu"},
    }
    cfg = build_config(yaml.safe_load(yaml.safe_dump(plan)))
    # PyYAML reads "3.2e6" as a string; whole numbers are accepted for integer fields.
    assert cfg.train.tokens == 3_200_000
    assert cfg.total_steps() == math.ceil(3_200_000 / (32 * 128))
    assert cfg.warmup_steps() == default_warmup(cfg.total_steps())
    assert cfg.micro_batch_for(2) == (8, 2)
    assert cfg.parallel.fsdp_reshard() is False  # zero 2 = SHARD_GRAD_OP
    assert cfg.model.n_layers == 2 and cfg.predicted.loss == 2.1


def test_unknown_key_names_the_closest(tmp_path):
    with pytest.raises(IsoflopError, match=r"unknown key train.max_step \(did you mean train.max_steps\?\)"):
        build_config({"train": {"max_step": 3}})
    with pytest.raises(IsoflopError, match="optim.lr"):
        build_config({"train": {"max_steps": 3}, "optim": {"lr": -1}})
    with pytest.raises(IsoflopError, match="not a multiple"):
        build_config({"train": {"max_steps": 3, "global_batch": 10, "micro_batch": 4}})
    with pytest.raises(IsoflopError, match="both null"):
        build_config({"train": {"max_steps": None}})


def test_overrides_and_cli_errors_are_one_line(cli, tmp_path):
    cfg = load_train_config(preset="tiny", overrides=["train.max_steps=7", "optim.schedule=wsd"])
    assert cfg.train.max_steps == 7 and cfg.optim.schedule == "wsd"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  seq_len: 128\n  globl_batch: 4\n", encoding="utf-8")
    for args in (
        ["train", str(bad), "--out", str(tmp_path / "r")],
        ["train", "--preset", "tinyy", "--out", str(tmp_path / "r")],
        ["train", "--preset", "tiny", "--set", "train.seq_len=4096", "--out", str(tmp_path / "r")],
        ["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")],
        ["train", "--preset", "tiny", "--set", "nonsense", "--out", str(tmp_path / "r")],
    ):
        result = cli(*args)
        assert result.code == 2, (args, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "globl_batch" in cli("train", str(bad), "--out", str(tmp_path / "r")).err


def test_cosine_schedule_closed_form():
    lr, total, warm, ratio = 1e-3, 100, 10, 0.1
    assert lr_at(0, total, lr, warm) == pytest.approx(lr / warm)
    assert lr_at(9, total, lr, warm) == pytest.approx(lr)
    assert lr_at(10, total, lr, warm) == pytest.approx(lr)
    for step in (10, 37, 55, 99):
        p = (step - warm) / (total - warm)
        expect = lr * ratio + (lr - lr * ratio) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr_at(step, total, lr, warm, "cosine", ratio) == pytest.approx(expect)
    assert lr_at(55, total, lr, warm) == pytest.approx(lr * (ratio + (1 - ratio) / 2))


def test_wsd_schedule_shape():
    lr, total, warm, ratio, frac = 1e-3, 100, 5, 0.1, 0.2
    values = [lr_at(s, total, lr, warm, "wsd", ratio, frac) for s in range(total)]
    assert values[4] == pytest.approx(lr) and all(v == pytest.approx(lr) for v in values[5:80])
    decay = values[80:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(lr * ratio)
    assert decay[9] == pytest.approx(lr + (lr * ratio - lr) * 10 / 20)
    with pytest.raises(IsoflopError):
        lr_at(0, total, lr, warm, "linear")


def test_planner_plan_yaml_loads_as_is(cli, tmp_path):
    """``isoflop plan --out plan.yaml`` (with and without hardware) is a valid training config unchanged."""
    plain, hw = tmp_path / "plan.yaml", tmp_path / "plan_hw.yaml"
    assert cli("plan", "--budget-flops", "1e21", "--out", str(plain), "--json").code == 0
    assert cli("plan", "--gpu", "h100-sxm", "--gpus", "64", "--days", "14", "--out", str(hw), "--json").code == 0
    for path in (plain, hw):
        cfg = load_train_config(path)
        raw = yaml.safe_load(path.read_text())
        spec = cfg.model
        assert spec.d_model == raw["model"]["d_model"] and cfg.train.tokens == raw["train"]["tokens"]
        assert cfg.total_steps() == math.ceil(cfg.train.tokens / (cfg.train.global_batch * cfg.train.seq_len))
        world = cfg.parallel.dp or 1
        mb, accum = cfg.micro_batch_for(world)
        assert mb * accum * world == cfg.train.global_batch
        assert cfg.predicted is not None and cfg.predicted.loss == raw["predicted"]["loss"]
