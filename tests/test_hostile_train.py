"""Hostile and broken input to ``isoflop train``: a diverging run stops (exit 3, one line) after bounded
rollbacks to a checkpoint from before the spike; a run too big for memory is refused before allocating; bad
``--set`` overrides are one-line errors."""

from __future__ import annotations

import json

import pytest
from _train_common import micro_config, run_cli, shared_cache, write_config

from isoflop.errors import IsoflopError
from isoflop.spec.accounting import count_params
from isoflop.train import precheck
from isoflop.train.config import build_config, load_train_config
from isoflop.train.loop import DivergedError, train
from isoflop.train.model import Transformer
from isoflop.train.schedule import lr_at


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("ISOFLOP_CACHE", str(cache_dir))


def _bad_on_calls(monkeypatch, calls: dict[int, float], after: int | None = None) -> None:
    """Training forward number k (1-based) returns its loss times ``calls[k]`` (nan, or a spike factor);
    with ``after``, every call beyond it returns NaN."""
    original = Transformer.forward
    count = {"n": 0}

    def forward(self, idx, targets=None):
        out = original(self, idx, targets)
        if self.training and targets is not None:
            count["n"] += 1
            n = count["n"]
            if after is not None and n > after:
                return out * float("nan")
            if n in calls:
                return out * calls[n]
        return out

    monkeypatch.setattr(Transformer, "forward", forward)


DIVERGE = {"max_steps": 16, "ckpt_every": 4, "keep_checkpoints": 3, "max_bad_steps": 2, "eval_every": 0}


def test_rollback_goes_to_a_checkpoint_from_before_the_spike_and_lowers_the_lr(tmp_path, monkeypatch, capsys):
    # Calls 1-8: steps 1-8; step-8 holds the weights of the 8th update. Call 9 (those weights) is NaN and call 10
    # spikes 10x: the 8th update diverged, so the rollback must skip step-8 and restore step-4.
    _bad_on_calls(monkeypatch, {9: float("nan"), 10: 10.0})
    cfg = micro_config(train={**DIVERGE, "rollback_lr_factor": 0.5})
    s = train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "spiking loss" in err
    assert "ROLLBACK 1/3: 2 consecutive bad steps at step 8" in err and "step-00000004 (step 4)" in err
    assert "learning rate x0.5" in err
    assert s["status"] == "complete" and s["steps"] == 16 and s["rollbacks"] == 1 and s["skipped_steps"] == 2
    # The checkpoint of the diverged weights is set aside, not resumed from later.
    assert (tmp_path / "run" / "checkpoints" / "step-00000008.rolled-back-diverged").is_dir()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warmup = build_config(cfg).warmup_steps()
    after, previous = False, 0
    for row in rows:  # the rows after the rollback (the step count goes back) run at half the schedule
        after, previous = after or row["step"] <= previous, row["step"]
        expected = lr_at(row["step"] - 1, 16, 0.01, warmup, "cosine", 0.1, 0.2) * (0.5 if after else 1.0)
        assert row["lr"] == pytest.approx(expected)
    assert after


def test_rollbacks_are_capped_and_the_run_stops_with_step_and_loss(tmp_path, monkeypatch):
    _bad_on_calls(monkeypatch, {}, after=8)  # diverged for good after the 8th update
    cfg = micro_config(train={**DIVERGE, "max_rollbacks": 1})
    with pytest.raises(DivergedError) as info:
        train(cfg, tmp_path / "run")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("training diverged at step 5 (loss nan) after 1 rollback(s)")
    assert "train.max_rollbacks=1" in msg


def test_lr_1e30_stops_with_exit_3_and_one_line(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", micro_config(train={"max_steps": 30, "ckpt_every": 2, "eval_every": 0}))
    res = run_cli(
        ["train", str(cfg), "--out", str(tmp_path / "run"), "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=0"],
        cache_dir,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step ") and "(loss " in last
    assert "Traceback" not in res.stderr and res.stderr.count("ROLLBACK") <= 3


# Memory pre-check -----------------------------------------------------------------------------------


def test_a_model_too_big_for_memory_is_refused_before_allocating(tmp_path):
    big = {"d_model": 8192, "n_layers": 64, "n_heads": 64, "d_ff": 32768}  # ~69B parameters
    with pytest.raises(IsoflopError) as info:
        train(micro_config(model=big), tmp_path / "run")
    msg = str(info.value)
    assert "needs about" in msg and "GiB available" in msg and "--nproc-per-node" in msg
    cfg = build_config(micro_config(model=big))
    need = precheck.predicted_memory(cfg, 1, 8, "fp32", "none", "none")
    params = count_params(cfg.model).total
    assert need.weights == pytest.approx(params * 4 / 2**30, rel=1e-3)  # fp32 weights: 4 bytes per parameter
    assert need.optimizer == pytest.approx(params * 8 / 2**30, rel=1e-3)  # AdamW's two fp32 moments
    assert f"{need.total:.1f} GiB" in msg
    assert not (tmp_path / "run" / "run.json").exists()


def test_activation_bound_run_gets_a_micro_batch_that_fits(tmp_path, monkeypatch):
    cfg = build_config(micro_config(train={"global_batch": 64, "seq_len": 64}, model={"max_seq_len": 64}))
    full = precheck.predicted_memory(cfg, 1, 64, "fp32", "none", "none").total
    small = precheck.predicted_memory(cfg, 1, 8, "fp32", "none", "none").total
    assert small < full
    monkeypatch.setattr(precheck, "available_gib", lambda device, local: ((small + full) / 2, "this machine has"))
    with pytest.raises(IsoflopError, match=r"use --micro-batch (\d+)") as info:
        train(cfg, tmp_path / "run")
    mb = int(info.value.args[0].split("use --micro-batch ")[1].split()[0])
    assert precheck.predicted_memory(cfg, 1, mb, "fp32", "none", "none").total <= (small + full) / 2


# --set errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", [".=1", "train=5", "train.max_steps.x=1", "=3"])
def test_bad_overrides_are_one_line_errors(item):
    with pytest.raises(IsoflopError) as info:
        load_train_config(preset="tiny", overrides=[item])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("item", [".=1", "train=5"])
def test_bad_overrides_exit_2_from_the_cli(item, tmp_path, cache_dir):
    res = run_cli(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", item], cache_dir, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
