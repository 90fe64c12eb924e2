"""Run under torchrun with 4 processes by ``test_train_reshard.py``: DCP checkpoints of the trainer moved between
layouts. ``WORK`` holds ``one/`` (a 1-process checkpoint) and ``one.pt`` (its full weights and optimizer states).

1. TP2xDP2 (FSDP2 over dp_shard=2, tp=2) loads ``one/``: the full state equals ``one.pt``; one training step;
   saves ``tp/`` and ``tp.pt``.
2. DP4 (FSDP2 over 4 processes) loads ``tp/``: equals ``tp.pt``; the weights are moved; saves ``dp/``, ``dp.pt``.
3. TP2xDP2 loads ``dp/``: equals ``dp.pt``.

Usage: ``torchrun --nproc-per-node 4 tests/reshard_entry.py CONFIG.yaml WORK``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from isoflop.train.checkpoint import Checkpointer, latest_checkpoint
from isoflop.train.config import load_train_config
from isoflop.train.distributed import init_distributed, shutdown, wrap_model
from isoflop.train.model import build_model
from isoflop.train.optim import build_named_optimizer
from isoflop.train.parallel.apply import ParallelModel
from isoflop.train.parallel.tensor import fused_state_dict


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Weights and optimizer states, whole, under ``Transformer``'s (fused) keys: ``model/<fqn>``,
    ``<state>/<fqn>`` (the same function as in ``test_train_reshard.py``)."""
    opts = StateDictOptions(full_state_dict=True)
    weights, optim = get_state_dict(model, optimizer, options=opts)
    flat = {f"model/{k}": v for k, v in weights.items()}
    for fqn, states in optim["state"].items():
        flat.update({f"{name}/{fqn}": v for name, v in states.items() if torch.is_tensor(v) and v.dim() > 0})
    return {k: v.detach().cpu().clone() for k, v in fused_state_dict(flat).items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:6])
    for key, value in want.items():
        assert torch.equal(got[key], value), (what, key, (got[key] - value).abs().max().item())


class Batches:
    """A fixed batch per data-parallel rank (the sampler interface ``ParallelModel.step`` uses)."""

    def __init__(self, rank: int, rows: int, seq: int, vocab: int) -> None:
        gen = torch.Generator().manual_seed(100 + rank)
        self.tokens = torch.randint(0, vocab, (rows, seq + 1), generator=gen)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[:, :-1], self.tokens[:, 1:]


def main() -> None:
    config, work = sys.argv[1], Path(sys.argv[2])
    env = init_distributed("cpu")
    try:
        tp_cfg = load_train_config(config, overrides=["parallel.tp=2", "parallel.strategy=fsdp"])

        def tp_model() -> tuple[ParallelModel, torch.optim.Optimizer]:
            par = ParallelModel(tp_cfg, env, "fp32")
            return par, build_named_optimizer(par.module, tp_cfg.optim)

        def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
            ckpt = Checkpointer(work / name, 1, env)
            ckpt.load(latest_checkpoint(work / name), model, optimizer)

        def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> None:
            state = full_state(model, optimizer)
            Checkpointer(work / name, 1, env).save(1, model, optimizer, {"tokens": 0})
            if env.is_main:
                torch.save(state, work / f"{name}.pt")
            dist.barrier()

        par, opt = tp_model()  # seeded as the 1-process run was, then overwritten by the checkpoint
        load(par.module, opt, "one")
        assert_same(full_state(par.module, opt), torch.load(work / "one.pt"), "1 process -> TP2xDP2")
        spec = tp_cfg.model
        par.step(opt, Batches(par.dp_rank, par.micro_batch, tp_cfg.train.seq_len, spec.vocab_size))
        save(par.module, opt, "tp")

        model = wrap_model(build_model(spec, "cpu", seed=7), "fsdp", env, 1, True)
        dp_opt = build_named_optimizer(model, tp_cfg.optim)
        load(model, dp_opt, "tp")
        assert_same(full_state(model, dp_opt), torch.load(work / "tp.pt"), "TP2xDP2 -> DP4")
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        save(model, dp_opt, "dp")

        par, opt = tp_model()
        load(par.module, opt, "dp")
        assert_same(full_state(par.module, opt), torch.load(work / "dp.pt"), "DP4 -> TP2xDP2")
        if env.is_main:
            print("reshard ok")
    finally:
        shutdown(env)


if __name__ == "__main__":
    main()
