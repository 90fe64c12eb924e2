"""Shared pieces of the trainer tests: a micro config on a capped stdlib corpus and subprocess runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# About 37k parameters, 8 x 32 tokens per step: a step takes milliseconds on one thread.
MICRO = {
    "model": {
        "name": "micro",
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "d_ff": 64,
        "vocab_size": 512,
        "max_seq_len": 64,
        "tie_embeddings": True,
    },
    "data": {"source": "stdlib", "vocab_size": 512, "max_bytes": 400_000},
    "train": {
        "seq_len": 32,
        "global_batch": 8,
        "max_steps": 12,
        "eval_every": 6,
        "eval_batches": 2,
        "log_every": 3,
        "ckpt_every": 4,
        "keep_checkpoints": 2,
    },
    "optim": {"lr": 0.01, "warmup_steps": 2},
}


def shared_cache(tmp_path_factory) -> Path:
    """One ``$ISOFLOP_CACHE`` for all trainer tests of a session: the corpus is tokenized and the CPU peak
    measured once, not once per module."""
    cache = tmp_path_factory.getbasetemp() / "isoflop-train-cache"
    cache.mkdir(exist_ok=True)
    return cache


def micro_config(**sections) -> dict:
    """``MICRO`` with some sections' fields replaced, e.g. ``micro_config(train={"max_steps": 20})``."""
    cfg = json.loads(json.dumps(MICRO))
    for name, fields in sections.items():
        cfg.setdefault(name, {}).update(fields)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def child_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", ISOFLOP_CACHE=str(cache))
    return env


def run_cli(args: list[str], cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m isoflop ARGS`` in a subprocess (cwd = repo root, one thread)."""
    return subprocess.run(
        [sys.executable, "-m", "isoflop", *args],
        cwd=ROOT,
        env=child_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_torchrun(nproc: int, args: list[str], cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m isoflop ARGS`` by hand."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "isoflop",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(cache), capture_output=True, text=True, timeout=timeout)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))
