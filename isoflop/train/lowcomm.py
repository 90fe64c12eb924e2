"""Low-communication data parallelism in the trainer: torch's DDP comm hooks or DiLoCo, and a byte counter.

* ``sync.comm_hook``: ``allreduce`` (torch's Python all-reduce hook, the same arithmetic as DDP's built-in
  reducer), ``fp16`` / ``bf16`` (gradients sent in half precision) or ``powersgd`` (Vogels et al. 2019) from
  ``torch.distributed.algorithms.ddp_comm_hooks``.
* ``sync.mode: diloco``: workers are not wrapped in DDP; ``isoflop.train.diloco.DiLoCo`` runs the outer step.
* ``CommCounter`` counts the payload bytes of every collective that torch's hook modules and DiLoCo issue, by
  handing those modules a counting proxy of ``torch.distributed`` (the loss/flag reductions of the loop are
  not gradient traffic and are not counted). ``isoflop.perf.lowcomm`` predicts the same numbers.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.distributed as dist
from torch import nn

from isoflop.errors import IsoflopError
from isoflop.perf.lowcomm import check_powersgd_rank
from isoflop.perf.optimizer_state import ParamShape
from isoflop.train.config import TrainConfig
from isoflop.train.distributed import DistEnv

COUNTED = ("all_reduce", "all_gather_into_tensor", "all_gather")


class _CountingDist:
    """``torch.distributed`` with the collectives' input bytes added to a counter."""

    def __init__(self, counter: CommCounter) -> None:
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        real = getattr(dist, name)
        if name not in COUNTED:
            return real

        def counted(*args: Any, **kwargs: Any) -> Any:
            tensor = args[1] if name.startswith("all_gather") else args[0]
            self._counter.add(tensor.numel() * tensor.element_size())
            return real(*args, **kwargs)

        return counted


class CommCounter:
    """Payload bytes of the gradient / pseudo-gradient collectives of this process."""

    def __init__(self) -> None:
        self.bytes = 0
        self._lock = threading.Lock()
        self._patched: list[tuple[ModuleType, Any]] = []

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes

    def install(self, modules: list[ModuleType]) -> None:
        proxy = _CountingDist(self)
        for module in modules:
            self._patched.append((module, module.dist))
            module.dist = proxy

    def remove(self) -> None:
        for module, original in reversed(self._patched):
            module.dist = original
        self._patched.clear()


@dataclass
class CommReport:
    """What ``summary.json`` records under ``comm``."""

    scheme: str
    steps: int
    bytes_total: int
    bytes_per_step: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensor_shapes(model: nn.Module) -> list[ParamShape]:
    """The trainable tensors of ``model`` (unwrapped), in order, as the performance model's shapes."""
    inner = getattr(model, "module", model)
    return [
        ParamShape(name, tuple(p.shape), "linear" if p.ndim >= 2 else "vector")
        for name, p in inner.named_parameters()
        if p.requires_grad
    ]


class _DomainSampler:
    """Federated data (Sani et al. 2024): rank ``r`` of ``w`` reads the ``r``-th contiguous ``1/w`` of the token
    stream (the corpus in document order, so each worker has its own mix of sources); window starts drawn by the
    wrapped sampler are folded into that slice, so every worker still takes ``batch_size`` windows per call."""

    def __init__(self, inner: Any, rank: int, world: int) -> None:
        self.inner, self.rank = inner, rank
        self.span = len(inner.tokens) // world
        if self.span <= inner.seq_len + 1:
            raise IsoflopError(f"the corpus is too small to give {world} workers a slice each; use more data")

    def next_batch(self) -> tuple[Any, Any]:
        import numpy as np
        import torch

        starts = self.inner.next_window_starts() % (self.span - self.inner.seq_len - 1) + self.rank * self.span
        idx = starts[:, None] + np.arange(self.inner.seq_len + 1, dtype=np.int64)[None, :]
        rows = torch.from_numpy(np.asarray(self.inner.tokens[idx], dtype=np.int64))
        return rows[:, :-1], rows[:, 1:]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LowComm:
    """The trainer's hook: set up the chosen scheme, run DiLoCo's outer steps, report the bytes counted."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, strategy: str) -> None:
        self.cfg, self.env, self.sync = cfg, env, cfg.sync
        self.counter = CommCounter()
        self.diloco: Any = None
        self.steps = 0
        if self.sync.comm_hook != "default" and strategy != "ddp":
            raise IsoflopError(
                f"sync.comm_hook={self.sync.comm_hook} needs parallel.strategy ddp (got {strategy}); "
                "set parallel.strategy=ddp"
            )

    @property
    def scheme(self) -> str:
        if self.sync.mode == "diloco":
            return "diloco"
        return "ddp" if self.sync.comm_hook in ("default", "allreduce") else self.sync.comm_hook

    def attach(self, model: nn.Module, optimizer: Any, out: Path, resumed_step: int | None) -> None:
        """Register the DDP comm hook, or build DiLoCo's outer state (from the identical initial weights, or from
        this worker's state file of the checkpoint being resumed)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        hook = self.sync.comm_hook
        if hook == "powersgd":
            check_powersgd_rank(tensor_shapes(model), self.sync.powersgd_rank)
            state = powerSGD_hook.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=self.sync.powersgd_rank,
                start_powerSGD_iter=self.sync.powersgd_start_iter,
                random_seed=self.cfg.train.seed,
            )
            model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        elif hook in ("allreduce", "fp16", "bf16"):
            fn = {
                "allreduce": default_hooks.allreduce_hook,
                "fp16": default_hooks.fp16_compress_hook,
                "bf16": default_hooks.bf16_compress_hook,
            }[hook]
            model.register_comm_hook(None, fn)
        if self.sync.mode == "diloco":
            from isoflop.train import diloco

            self.diloco = diloco.DiLoCo(model, self.sync, resumed_step is None)
            self.worker_state = diloco.WorkerState(
                out / "diloco", self.env.rank, self.cfg.train.keep_checkpoints + 1, model, optimizer
            )
            if resumed_step is not None:
                self.worker_state.load(resumed_step, self.diloco)
            self.counter.install([diloco])
        elif hook != "default":
            self.counter.install([default_hooks, powerSGD_hook])

    def wrap_sampler(self, sampler: Any) -> Any:
        """``sync.non_iid``: the worker's windows come only from its own contiguous slice of the corpus."""
        return _DomainSampler(sampler, self.env.rank, self.env.world) if self.sync.non_iid else sampler

    def after_step(self, step: int) -> None:
        """Called after every accepted optimizer step (1-based ``step``)."""
        self.steps += 1
        if self.diloco is not None:
            self.diloco.after_inner_step(step)
            every = self.cfg.train.ckpt_every
            if (every and step % every == 0) or step == self.cfg.total_steps():
                self.worker_state.save(step, self.diloco)  # beside the trainer's checkpoint of the same step

    def close(self) -> CommReport:
        self.counter.remove()
        return CommReport(self.scheme, self.steps, self.counter.bytes, self.counter.bytes / max(1, self.steps))
