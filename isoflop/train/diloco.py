"""DiLoCo (Douillard et al. 2023, Alg. 1) and Streaming DiLoCo (Douillard et al. 2025) on torch.distributed.

Each process is a worker with its own copy of the model and its own inner optimizer (the trainer's, AdamW by
default) and trains ``H = sync.inner_steps`` steps on its own data without communicating. Then, per fragment,
the pseudo-gradient ``Delta = theta_outer - theta_worker`` is averaged over the workers and applied to the outer
weights by SGD with Nesterov momentum (``sync.outer_lr``, ``sync.outer_momentum``); every worker continues from
the new outer weights, keeping its inner optimizer state. With streaming, fragment ``j`` of ``F`` (contiguous
parameter tensors) is synchronised at steps ``(j + 1) H / F (mod H)``, spreading the traffic. The pseudo-gradient
travels in fp32, bf16 (all-reduce) or int4 (absmax-scaled blocks of 64, all-gathered and dequantised).
With ``H = 1``, outer lr 1, no momentum and a linear inner update (SGD, no clipping) this is exactly DDP.
``WorkerState`` checkpoints what differs between workers, so a resumed run continues bitwise.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from isoflop.atomic import atomic_write_bytes
from isoflop.errors import IsoflopError
from isoflop.perf.lowcomm import INT4_BLOCK, fragment_index
from isoflop.train.config import SyncSection


def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


class DiLoCo:
    """The outer weights and optimizer of one worker; ``after_inner_step`` synchronises when due."""

    def __init__(self, model: nn.Module, sync: SyncSection, fresh: bool = True) -> None:
        self.sync = sync
        self.params = [p for p in model.parameters() if p.requires_grad]
        if fresh and _distributed():  # every worker starts from rank 0's weights
            with torch.no_grad():
                for p in self.params:
                    dist.broadcast(p.data, src=0)
        self.outer = [p.detach().clone().float() for p in self.params]
        momentum = sync.outer_momentum
        self.optimizer = torch.optim.SGD(self.outer, lr=sync.outer_lr, momentum=momentum, nesterov=momentum > 0)
        n = len(self.params)
        self.fragments = [
            [i for i in range(n) if fragment_index(i, n, sync.fragments) == j] for j in range(sync.fragments)
        ]

    def due(self, step: int) -> list[int]:
        """Fragments synchronised after inner step ``step`` (1-based)."""
        h, f = self.sync.inner_steps, self.sync.fragments
        return [j for j in range(f) if step >= (j + 1) * h // f and (step - (j + 1) * h // f) % h == 0]

    @torch.no_grad()
    def after_inner_step(self, step: int) -> None:
        for j in self.due(step):
            self._sync(self.fragments[j])

    @torch.no_grad()
    def _sync(self, indices: list[int]) -> None:
        delta = torch.cat([(self.outer[i] - self.params[i].detach().float()).reshape(-1) for i in indices])
        delta = self._average(delta)
        offset = 0
        for i in indices:
            numel = self.outer[i].numel()
            self.outer[i].grad = delta[offset : offset + numel].view_as(self.outer[i])
            offset += numel
        self.optimizer.step()
        for i in indices:
            self.outer[i].grad = None
            self.params[i].copy_(self.outer[i])

    def _average(self, delta: torch.Tensor) -> torch.Tensor:
        """The mean pseudo-gradient over workers, sent in ``sync.outer_dtype``."""
        if not _distributed():
            return delta
        world = dist.get_world_size()
        kind = self.sync.outer_dtype
        if kind == "fp32":
            dist.all_reduce(delta)
            return delta / world
        if kind == "bf16":
            wire = delta.to(torch.bfloat16)
            dist.all_reduce(wire)
            return wire.float() / world
        packed, scales = quantize_int4(delta)
        all_packed = [torch.empty_like(packed) for _ in range(world)]
        all_scales = [torch.empty_like(scales) for _ in range(world)]
        dist.all_gather(all_packed, packed)
        dist.all_gather(all_scales, scales)
        total = sum(dequantize_int4(q, s, delta.numel()) for q, s in zip(all_packed, all_scales))
        return total / world


class WorkerState:
    """What DiLoCo keeps per worker and the trainer's (replicated, rank-0) checkpoint cannot hold: this worker's
    weights and inner optimizer state, and the outer weights and momentum. One file per checkpointed step and
    rank, ``DIR/diloco/step-NNNNNNNN-rank-R.pt``, written atomically and read with ``weights_only=True``; a resume
    restores it after the trainer's checkpoint, so a killed run continues bitwise."""

    def __init__(self, root: Path, rank: int, keep: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.root, self.rank, self.keep = root, rank, keep
        self.model, self.optimizer = model, optimizer

    def _path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}-rank-{self.rank}.pt"

    def save(self, step: int, dl: DiLoCo) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {
            "params": [p.detach().clone() for p in dl.params],
            "inner": self.optimizer.state_dict(),
            "outer": [t.clone() for t in dl.outer],
            "outer_optimizer": dl.optimizer.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self._path(step), buffer.getvalue())
        mine = sorted(self.root.glob(f"step-*-rank-{self.rank}.pt"))
        for old in mine[: -self.keep]:
            old.unlink(missing_ok=True)

    @torch.no_grad()
    def load(self, step: int, dl: DiLoCo) -> None:
        path = self._path(step)
        if not path.is_file():
            raise IsoflopError(
                f"resuming DiLoCo at step {step} needs {path} (each worker's weights and optimizers), which is "
                "missing (a checkpoint saved by a signal between ckpt_every steps); start a new --out"
            )
        payload = torch.load(path, map_location="cpu", weights_only=True)
        for p, saved in zip(dl.params, payload["params"]):
            p.copy_(saved)
        for t, saved in zip(dl.outer, payload["outer"]):
            t.copy_(saved)
        dl.optimizer.load_state_dict(payload["outer_optimizer"])
        self.optimizer.load_state_dict(payload["inner"])


def quantize_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int4 per block of ``INT4_BLOCK`` (padded): two codes per byte, one fp32 scale a block."""
    blocks = -(-x.numel() // INT4_BLOCK)
    padded = torch.zeros(blocks * INT4_BLOCK, dtype=torch.float32, device=x.device)
    padded[: x.numel()] = x
    padded = padded.view(blocks, INT4_BLOCK)
    scales = padded.abs().amax(dim=1).clamp_min(1e-30) / 7.0
    codes = (torch.round(padded / scales[:, None]).clamp(-7, 7) + 8).to(torch.uint8).view(-1)
    return codes[0::2] | (codes[1::2] << 4), scales


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, numel: int) -> torch.Tensor:
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).view(-1).float() - 8.0
    return (codes.view(-1, INT4_BLOCK) * scales[:, None]).view(-1)[:numel]
