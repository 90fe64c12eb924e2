"""Crash and preemption: SIGKILL mid-run then resume is bitwise identical to an uninterrupted run;
SIGTERM saves a checkpoint and exits cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from _train_common import ROOT, child_env, micro_config, run_cli, shared_cache, summary, write_config
from safetensors.torch import load_file

from isoflop.train.checkpoint import complete_checkpoints
from isoflop.train.data import DataConfig, prepare_data

LONG = micro_config(train={"max_steps": 40, "ckpt_every": 10, "eval_every": 20, "log_every": 5})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    prepare_data(DataConfig(**LONG["data"]), cache_dir=cache / "data")
    return cache


def _start(cfg, out, cache, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "isoflop", "train", str(cfg), "--out", str(out), *extra],
        cwd=ROOT,
        env=child_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def test_sigkill_then_resume_is_bitwise_identical(cache_dir, tmp_path):
    cfg = write_config(tmp_path / "long.yaml", LONG)
    ref = run_cli(["train", str(cfg), "--out", str(tmp_path / "ref")], cache_dir)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = _start(cfg, out, cache_dir)
    assert _wait_for(lambda: bool(complete_checkpoints(out / "checkpoints")), proc), "no checkpoint before exit"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    resumed = run_cli(["train", str(cfg), "--out", str(out)], cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    a, b = summary(tmp_path / "ref"), summary(out)
    assert b["resumed_from"] is not None and 10 <= b["resumed_from"] < 40
    assert b["final_train_loss"] == a["final_train_loss"]
    assert b["val_loss"] == a["val_loss"] and b["val_history"] == a["val_history"]
    ref_rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    new_rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in new_rows] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in ref_rows
    ]
    wa, wb = load_file(tmp_path / "ref" / "hf" / "model.safetensors"), load_file(out / "hf" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_saves_and_exits_cleanly(cache_dir, tmp_path, sig):
    cfg = write_config(
        tmp_path / "forever.yaml",
        micro_config(train={"max_steps": 1_000_000, "ckpt_every": 0, "eval_every": 0, "log_every": 2}),
    )
    out = tmp_path / "term"
    proc = _start(cfg, out, cache_dir, "--json")
    assert _wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"stopped by signal {int(sig)}" in stderr
    result = json.loads(stdout)
    assert result["status"] == "preempted" and result["step"] >= 2
    ckpts = complete_checkpoints(out / "checkpoints")
    assert [step for step, _ in ckpts] == [result["step"]]
    assert not (out / "summary.json").exists()
