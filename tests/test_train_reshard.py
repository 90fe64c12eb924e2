"""DCP checkpoints reshard across three layouts (issue 12): 1 process -> TP2xDP2 -> DP4 -> TP2xDP2 under one
4-process gloo job (``reshard_entry.py``), and TP2xDP2 / DP4 -> 1 process here; weights and optimizer states
identical after every reshard. Tensor parallelism splits the fused projections; the checkpoint stores them under
the fused keys (``isoflop.train.parallel.reshard``), and DCP's planner does the resharding."""

from __future__ import annotations

import subprocess
import sys

import torch
from _train_common import ROOT, child_env, micro_config, write_config
from reshard_entry import Batches, assert_same, full_state

from isoflop.train.checkpoint import Checkpointer, latest_checkpoint
from isoflop.train.config import build_config
from isoflop.train.distributed import DistEnv
from isoflop.train.model import build_model
from isoflop.train.optim import build_named_optimizer
from isoflop.train.parallel.reshard import canonical_name

# Grouped-query attention (4 query heads, 2 kv heads): the q, k and v blocks differ in size.
CFG = micro_config(model={"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "tie_embeddings": False})


def _one_process(cfg):
    model = build_model(cfg.model, "cpu", seed=cfg.train.seed)
    return model, build_named_optimizer(model, cfg.optim)


def test_canonical_name_folds_split_parts():
    assert canonical_name("layers.3.attn.qkv.k.weight") == "layers.3.attn.qkv.weight"
    assert canonical_name("layers.0.mlp.gate_up.up.weight") == "layers.0.mlp.gate_up.weight"
    assert canonical_name("layers.0.mlp.down.weight") == "layers.0.mlp.down.weight"


def test_checkpoint_reshards_between_tp2xdp2_dp4_and_one_process(tmp_path):
    cfg = build_config(CFG)
    model, opt = _one_process(cfg)
    x, y = Batches(0, 4, cfg.train.seq_len, cfg.model.vocab_size).next_batch()
    model(x, y).backward()
    opt.step()
    Checkpointer(tmp_path / "one", 1, DistEnv()).save(1, model, opt, {"tokens": 0})
    torch.save(full_state(model, opt), tmp_path / "one.pt")

    config = write_config(tmp_path / "micro.yaml", CFG)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    cmd += [str(ROOT / "tests" / "reshard_entry.py"), str(config), str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=child_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reshard ok" in result.stdout

    for name in ("tp", "dp"):  # written by 4 processes, read back by one
        model, opt = _one_process(cfg)
        Checkpointer(tmp_path / name, 1, DistEnv()).load(latest_checkpoint(tmp_path / name), model, opt)
        assert_same(full_state(model, opt), torch.load(tmp_path / f"{name}.pt"), f"{name} -> 1 process")
