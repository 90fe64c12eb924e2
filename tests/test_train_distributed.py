"""Two gloo processes on CPU (torchrun) against one process on the same global batch: DDP, FSDP2, HSDP;
and a checkpoint written by 2 FSDP processes resumed by 1 process (DCP resharding)."""

from __future__ import annotations

import json
import shutil

import pytest
from _train_common import micro_config, run_cli, run_torchrun, shared_cache, summary, write_config

from isoflop.train.data import DataConfig, prepare_data
from isoflop.train.loop import train

REL = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    prepare_data(DataConfig(**micro_config()["data"]), cache_dir=cache / "data")  # tokenize once for all runs
    return cache


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    """The single-process run (in a subprocess, one thread, like the others)."""
    root = tmp_path_factory.mktemp("ref")
    cfg = write_config(root / "micro.yaml", micro_config())
    result = run_cli(["train", str(cfg), "--out", str(root / "run"), "--json"], cache_dir)
    assert result.returncode == 0, result.stderr
    return cfg, root / "run", json.loads(result.stdout)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_match(ref_out, ref, out, got):
    assert got["world"] == 2 and got["steps"] == ref["steps"]
    assert got["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=REL)
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=REL)
    for a, b in zip(_losses(ref_out), _losses(out), strict=True):
        assert b == pytest.approx(a, rel=REL)


def test_ddp_two_processes_via_cli_with_accumulation(reference, cache_dir, tmp_path):
    cfg, ref_out, ref = reference
    out = tmp_path / "ddp"
    # --nproc-per-node goes through torchrun's own launcher; micro_batch 2 adds 2 accumulation micro-steps.
    result = run_cli(
        [
            "train",
            str(cfg),
            "--out",
            str(out),
            "--nproc-per-node",
            "2",
            "--json",
            "--set",
            "parallel.strategy=ddp",
            "--set",
            "train.micro_batch=2",
        ],
        cache_dir,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["strategy"] == "ddp" and got["grad_accum"] == 2
    _assert_match(ref_out, ref, out, got)


@pytest.mark.parametrize("strategy", ["fsdp", "hsdp"])
def test_fsdp2_and_hsdp_by_hand_with_torchrun(reference, cache_dir, tmp_path, strategy, monkeypatch):
    cfg, ref_out, ref = reference
    out = tmp_path / strategy
    extra = ["--set", "parallel.replicate=2"] if strategy == "hsdp" else []
    result = run_torchrun(
        2, ["train", str(cfg), "--out", str(out), "--set", f"parallel.strategy={strategy}", *extra], cache_dir
    )
    assert result.returncode == 0, result.stderr
    got = summary(out)
    assert got["strategy"] == strategy
    _assert_match(ref_out, ref, out, got)
    if strategy == "fsdp":
        # Resume the sharded 2-process checkpoint of step 8 in one process: DCP reshards it.
        shutil.rmtree(out / "checkpoints" / "step-00000012")
        (out / "summary.json").unlink()
        monkeypatch.setenv("ISOFLOP_CACHE", str(cache_dir))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        resumed = train(micro_config(), out)
        assert resumed["resumed_from"] == 8 and resumed["world"] == 1
        assert resumed["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=REL)
        assert resumed["val_loss"] == pytest.approx(ref["val_loss"], rel=REL)
