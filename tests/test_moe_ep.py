"""Expert parallelism on two gloo processes (all-to-all dispatch and combine) against one process: DDP and
FSDP2, 20 steps of a micro MoE in fp32; and the one-line errors of layouts that cannot hold the experts."""

from __future__ import annotations

import json

import pytest
from _train_common import micro_config, run_cli, run_torchrun, shared_cache, summary, write_config

from isoflop.train.data import DataConfig, prepare_data

REL = 1e-5
MOE = {"d_ff": 32, "n_experts": 4, "top_k": 2}
# One process takes the global batch of 8 in two micro-batches of 4, as two EP ranks do, so every balancing loss
# is computed over the same 4 sequences (the loss is per micro-batch, as in Switch and Mixtral).
TRAIN = {"max_steps": 20, "log_every": 1, "eval_every": 10, "ckpt_every": 0, "micro_batch": 4}


def _config(**model) -> dict:
    return micro_config(model={**MOE, **model}, train=TRAIN)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    prepare_data(DataConfig(**micro_config()["data"]), cache_dir=cache / "data")
    return cache


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _flips(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True))


@pytest.mark.parametrize(
    ("capacity", "strategy"), [(None, "ddp"), (1.0, "fsdp")], ids=["dropless-ddp", "capacity-fsdp"]
)
def test_ep2_on_two_processes_equals_one_process(cache_dir, tmp_path, capacity, strategy):
    cfg = write_config(tmp_path / "moe.yaml", _config(capacity_factor=capacity))
    ref = run_cli(["train", str(cfg), "--out", str(tmp_path / "one")], cache_dir)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / strategy
    args = ["train", str(cfg), "--out", str(out), "--set", "parallel.ep=2", "--set", f"parallel.strategy={strategy}"]
    result = run_torchrun(2, args, cache_dir)
    assert result.returncode == 0, result.stderr
    assert summary(out)["world"] == 2 and summary(out)["strategy"] == strategy
    one, two = _rows(tmp_path / "one"), _rows(out)
    assert len(one) == len(two) == 20
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=REL)
        assert b["moe_aux_loss"] == pytest.approx(a["moe_aux_loss"], rel=REL)
        # An expert GEMM sums the rows of both ranks at once, so the weights agree to rounding and a token whose
        # top-2 is a near tie may flip: at most one flipped assignment per layer and step.
        flips = _flips(a["moe_tokens_per_expert"], b["moe_tokens_per_expert"])
        assert flips <= 2 * len(a["moe_tokens_per_expert"])
        assert b["moe_dropped_fraction"] == pytest.approx(a["moe_dropped_fraction"], abs=flips / 512)
    assert summary(out)["val_loss"] == pytest.approx(summary(tmp_path / "one")["val_loss"], rel=REL)
    assert (capacity is None) == all(r["moe_dropped_fraction"] == 0 for r in one)


def test_ep_that_does_not_divide_is_one_line(cache_dir, tmp_path):
    cfg = write_config(tmp_path / "moe.yaml", _config())
    cases = [
        (["--set", "parallel.ep=3"], "parallel.ep=3 does not divide n_experts=4; choose an ep"),
        (["--set", "parallel.ep=4"], "parallel.ep=4 does not divide the 1 launched processes; launch a multiple"),
        (["--set", "parallel.ep=2", "--set", "model.n_experts=0", "--set", "model.top_k=0"], "needs a mixture-of"),
        (["--set", "model.capacity_factor=0"], "capacity_factor must be a positive number, got 0"),
        (["--set", "model.top_k=5"], "top_k=5 must be between 1 and n_experts=4"),
        (["--set", "parallel.tp=2"], "mixture-of-experts models train with data and expert parallelism"),
    ]
    for extra, message in cases:
        result = run_cli(["train", str(cfg), "--out", str(tmp_path / "bad"), *extra], cache_dir)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
