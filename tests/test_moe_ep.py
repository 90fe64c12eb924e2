"""Expert parallelism on two gloo processes (all-to-all dispatch and combine) against one process: DDP and
FSDP2, 20 steps of a micro MoE in fp32; and the one-line errors of layouts that cannot hold the experts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _train_common import MICRO, micro_config, run_cli, run_torchrun, shared_cache, summary, write_config
from safetensors.torch import load_file

from isoflop.train.data import DataConfig, prepare_data

REL = 1e-5
MOE = {"d_ff": 32, "n_experts": 4, "top_k": 2}
# One process takes the global batch of 8 in two micro-batches of 4, as two EP ranks do, so every balancing loss
# is computed over the same 4 sequences (the loss is per micro-batch, as in Switch and Mixtral).
TRAIN = {"max_steps": 20, "log_every": 1, "eval_every": 10, "ckpt_every": 10, "micro_batch": 4}


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
    ref = summary(tmp_path / "one")
    assert summary(out)["val_loss"] == pytest.approx(ref["val_loss"], rel=REL)
    assert (capacity is None) == all(r["moe_dropped_fraction"] == 0 for r in one)
    if capacity is None:  # the Hugging Face export (Mixtral: dropless) gathers every expert from its rank
        hf_one, hf_two = (
            load_file(tmp_path / "one" / "hf" / "model.safetensors"),
            load_file(out / "hf" / "model.safetensors"),
        )
        assert hf_one.keys() == hf_two.keys()
        for key, value in hf_one.items():
            torch.testing.assert_close(hf_two[key], value, rtol=1e-4, atol=1e-5)
    # Resume the sharded step-10 checkpoint (DCP reshards the experts): in one process after DDP, on EP2 after FSDP2.
    shutil.rmtree(out / "checkpoints" / "step-00000020")
    (out / "summary.json").unlink()
    again = args[:-4] if strategy == "ddp" else args
    result = run_cli(again, cache_dir) if strategy == "ddp" else run_torchrun(2, again, cache_dir)
    assert result.returncode == 0, result.stderr
    resumed = summary(out)
    assert resumed["resumed_from"] == 10 and resumed["world"] == (1 if strategy == "ddp" else 2)
    assert resumed["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=REL)
    assert resumed["val_loss"] == pytest.approx(ref["val_loss"], rel=REL)


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


def _check_local_experts(rank: int, strategy: str) -> None:
    """Expert-parallel weights on this rank after one step under ``strategy``: E / ep experts of each."""
    from isoflop.train.config import build_config
    from isoflop.train.distributed import DistEnv, wrap_model
    from isoflop.train.model import build_model
    from isoflop.train.moe import enable_expert_parallel, moe_layers, reduce_expert_grads
    from isoflop.train.optim import build_optimizer

    spec = build_config(micro_config(model=MOE)).model
    model = build_model(spec, "cpu", seed=0)
    full = {id(m): (m.experts.gate_up.numel(), m.experts.down.numel()) for m in moe_layers(model)}
    enable_expert_parallel(model, 2, "cpu")
    layers = moe_layers(model)
    sizes = [full[id(m)] for m in layers]
    model = wrap_model(model, strategy, DistEnv(rank=rank, world=2), 1, True)
    optimizer = build_optimizer(model, 1e-3)
    x = torch.randint(0, MICRO["model"]["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(rank))
    model(x, x.roll(-1, 1)).backward()
    if strategy == "ddp":
        reduce_expert_grads(model, 2)
    optimizer.step()
    for layer, (gate_up, down) in zip(layers, sizes, strict=True):
        for p, n in ((layer.experts.gate_up, gate_up), (layer.experts.down, down)):
            assert p.shape[0] == MOE["n_experts"] and p.to_local().shape[0] == MOE["n_experts"] // 2
            assert p.to_local().numel() == n // 2 and p.grad.to_local().numel() == n // 2
            assert optimizer.state[p]["exp_avg"].to_local().numel() == n // 2


def _local_experts(rank: int, init: str) -> None:
    """One gloo rank of ``test_each_rank_holds_its_experts``: weights, gradients and AdamW state of E / ep experts,
    under DDP and FSDP2."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        for strategy in ("ddp", "fsdp"):
            _check_local_experts(rank, strategy)
    finally:
        dist.destroy_process_group()


def test_each_rank_holds_its_experts(tmp_path):
    torch.multiprocessing.spawn(_local_experts, args=(f"file://{tmp_path / 'init'}",), nprocs=2)
