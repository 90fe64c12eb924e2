"""Memory pre-check: before the trainer allocates anything, compare the performance model's memory per process
(``isoflop.perf.estimate``: weights, gradients, AdamW states, activations, logits; Rajbhandari et al. 2020 and
Korthikanti et al. 2022, see ``isoflop.perf.memory``) with the memory this process can get, and refuse a run
that cannot fit with the numbers and a fix instead of dying in the allocator (or the OOM killer).

Available memory: on CUDA the device's free memory (``torch.cuda.mem_get_info``); on CPU ``MemAvailable``
(psutil), capped by a cgroup v2 ``memory.max``, shared by the processes of this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from isoflop.errors import IsoflopError

if TYPE_CHECKING:
    from isoflop.train.config import TrainConfig
    from isoflop.train.distributed import DistEnv

GIB = 2.0**30


@dataclass(frozen=True)
class MemoryNeed:
    """Predicted bytes per process, by part (GiB)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    total: float


def predicted_memory(
    cfg: TrainConfig, world: int, micro_batch: int, dtype: str, strategy: str, recompute: str
) -> MemoryNeed | None:
    """The perf model's GiB per process for this run (without the CUDA context allowance); None when the model
    does not cover it (the run is not refused for that)."""
    from isoflop.hardware import get_gpu
    from isoflop.perf.estimate import estimate

    layout = cfg.parallel.layout(world, strategy, micro_batch, recompute, dtype)
    try:  # the GPU only provides the model's constants here; memory per part does not depend on it
        est = estimate(cfg.model, get_gpu("h100-sxm"), world, layout, cfg.train.global_batch, cfg.train.seq_len)
    except IsoflopError:
        return None
    m = est.memory
    return MemoryNeed(
        weights=m["weights_gib"],
        gradients=m["gradients_gib"],
        optimizer=m["optimizer_gib"],
        activations=m["activations_gib"] + m["logits_gib"],
        total=m["total_gib"] - m["overhead_gib"],
    )


def _cgroup_limit() -> float | None:
    """Bytes left under a cgroup v2 memory limit, or None without one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(limit) - float((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_gib(device: torch.device, local_processes: int) -> tuple[float, str]:
    """(GiB one process can use, where the number comes from)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / GIB, f"{torch.cuda.get_device_name(device)} has"
    try:
        import psutil

        avail = float(psutil.virtual_memory().available)
    except ImportError:
        avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    cgroup = _cgroup_limit()
    if cgroup is not None:
        avail = min(avail, cgroup)
    share = f" (shared by {local_processes} processes)" if local_processes > 1 else ""
    return avail / GIB / local_processes, f"this machine has{share}"


def _fix(cfg: TrainConfig, world: int, micro_batch: int, dtype: str, strategy: str, avail: float) -> str:
    """The first change that fits: a smaller micro-batch, activation checkpointing, or both; else more processes."""
    per_rank = cfg.train.global_batch // world
    for recompute in dict.fromkeys((cfg.train.activation_checkpointing, "full")):
        for mb in sorted((d for d in range(1, micro_batch + 1) if per_rank % d == 0), reverse=True):
            if (mb, recompute) == (micro_batch, cfg.train.activation_checkpointing):
                continue
            need = predicted_memory(cfg, world, mb, dtype, strategy, recompute)
            if need is not None and need.total <= avail:
                opts = [f"--micro-batch {mb}"] if mb != micro_batch else []
                if recompute != cfg.train.activation_checkpointing:
                    opts += [f"--set train.activation_checkpointing={recompute}"]
                return f"use {' '.join(opts)} ({need.total:.1f} GiB)"
    return (
        "the weights and optimizer states alone do not fit: shard them over more processes "
        "(--nproc-per-node N --set parallel.strategy=fsdp), or train a smaller model"
    )


def check_memory(cfg: TrainConfig, env: DistEnv, micro_batch: int, dtype: str, strategy: str) -> None:
    """Raise ``IsoflopError`` when the predicted memory per process exceeds what is available."""
    need = predicted_memory(cfg, env.world, micro_batch, dtype, strategy, cfg.train.activation_checkpointing)
    if need is None:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world if env.device.type == "cpu" else 1))
    avail, where = available_gib(env.device, max(1, local))
    if need.total <= avail:
        return
    raise IsoflopError(
        f"the run needs about {need.total:.1f} GiB per process (weights {need.weights:.1f}, gradients "
        f"{need.gradients:.1f}, optimizer {need.optimizer:.1f}, activations {need.activations:.1f}; isoflop's memory "
        f"model) but {where} {avail:.1f} GiB available; " + _fix(cfg, env.world, micro_batch, dtype, strategy, avail)
    )
