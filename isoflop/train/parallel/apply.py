"""Compose the layout in torchtitan's order and run its training step.

Order (torchtitan's ``parallelize_llama`` / ``pipeline_llama``): tensor + sequence parallelism, activation
checkpointing, ``torch.compile`` per block, FSDP2 over the data-parallel mesh (ZeRO-3, or ZeRO-2 with
``reshard_after_forward=False``, HSDP with ``replicate``), then the pipeline stages and schedule. Every rank
builds the same seeded full model first, so all layouts start from the weights a 1-process run starts from.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from isoflop.errors import IsoflopError
from isoflop.train.config import TrainConfig
from isoflop.train.distributed import DistEnv
from isoflop.train.parallel.mesh import MeshLayout, build_mesh, resolve_layout
from isoflop.train.parallel.pipeline import build_schedule, build_stages, check_pipeline


def uses_model_parallelism(cfg: TrainConfig) -> bool:
    """Tensor, pipeline or context parallelism requested: the trainer takes this package's path."""
    p = cfg.parallel
    return p.tp > 1 or p.pp > 1 or p.cp > 1 or p.interleave > 1


def check_layout(cfg: TrainConfig, world: int) -> None:
    """The whole layout against ``world`` processes before any work (one-line errors)."""
    p = cfg.parallel
    if uses_model_parallelism(cfg):
        plan_layout(cfg, world)
    elif p.dp is not None and p.dp != world:
        raise IsoflopError(
            f"tp*pp*cp*dp = {p.dp} must equal the {world} launched processes; "
            f"launch {p.dp} processes or set parallel.dp to {world}"
        )


def plan_layout(cfg: TrainConfig, world: int) -> tuple[MeshLayout, str, int, int]:
    """Check the whole layout before any work: ``(mesh layout, pp schedule, micro batch, microbatches)``."""
    p, spec = cfg.parallel, cfg.model
    if spec.is_moe:
        raise IsoflopError(
            "mixture-of-experts models train with data and expert parallelism (ddp/fsdp, parallel.ep) only; "
            "set parallel.tp, pp and cp to 1"
        )
    data = world // (p.tp * p.pp * p.cp) if world % (p.tp * p.pp * p.cp) == 0 else 1
    if p.strategy == "none" and data > 1:
        raise IsoflopError(f"parallel.strategy is none but the layout leaves dp={data}; use ddp, fsdp, hsdp or auto")
    # ddp: FSDP2 over a (dp, 1) mesh, i.e. replicated parameters with an all-reduce of the gradients (ZeRO-0)
    replicate = {"hsdp": p.replicate, "ddp": data}.get(p.strategy, 1)
    layout = resolve_layout(world, p.tp, p.pp, p.cp, p.dp, replicate, spec, cfg.train.seq_len)
    if p.cp > 1:  # after the layout's checks, so that a sequence CP cannot split is named as such
        raise IsoflopError(
            "cp > 1 needs torch's context_parallel (ring attention over SDPA), which does not run on CPU/gloo "
            "here; set parallel.cp: 1"
        )
    micro_batch, accum = cfg.micro_batch_for(layout.dp)
    v = p.interleave
    schedule = p.pp_schedule or ("1f1b" if v == 1 else "interleaved-1f1b")
    if layout.pp > 1:
        check_pipeline(spec.n_layers, spec.tie_embeddings, layout.pp, v, schedule, accum)
    elif v > 1:
        raise IsoflopError(f"parallel.interleave={v} needs pp > 1; set parallel.pp or drop interleave")
    return layout, schedule, micro_batch, accum


@dataclass
class _Groups:
    tp: Any
    pp: Any
    dp: Any  # a 1- or 2-D mesh for FSDP2, or None


class ParallelModel:
    """This rank's share of a tp x pp x dp model, with its training step, evaluation and export."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, dtype: str) -> None:
        if dtype != "fp32":
            raise IsoflopError(
                f"tensor/pipeline parallel training runs in fp32 here, got dtype {dtype}; set train.dtype: fp32"
            )
        self.cfg, self.env = cfg, env
        self.layout, self.schedule_name, self.micro_batch, self.accum = plan_layout(cfg, env.world)
        lay = self.layout
        coords = lay.coords(env.rank)
        self.dp_rank, self.dp_world = lay.dp_rank(env.rank), lay.dp
        self.pp_rank = coords["pp"]
        mesh = build_mesh(lay, env.device.type)
        dp_mesh = None
        if lay.dp > 1:
            dp_mesh = mesh["dp_replicate", "dp_shard"] if lay.dp_replicate > 1 else mesh["dp_shard"]
        self.groups = _Groups(tp=mesh["tp"], pp=mesh["pp"], dp=dp_mesh)
        self.module, self.schedule, self.is_last = self._build(cfg, env)

    @property
    def description(self) -> str:
        lay = self.layout
        pp = f" {self.schedule_name}" if lay.pp > 1 else ""
        return f"tp{lay.tp} x pp{lay.pp}{pp} x dp{lay.dp}"

    # -- composition ------------------------------------------------------------------------------
    def _build(self, cfg: TrainConfig, env: DistEnv) -> tuple[nn.Module, Any, bool]:
        from isoflop.train.model import build_model, compile_blocks
        from isoflop.train.parallel.tensor import apply_tensor_parallel
        from isoflop.train.recompute import apply_recompute

        lay = self.layout
        model = build_model(cfg.model, "cpu", seed=cfg.train.seed).to(env.device)
        if lay.tp > 1:
            apply_tensor_parallel(model, self.groups.tp)
        apply_recompute(model.layers, cfg.train.activation_checkpointing)
        if cfg.train.compile and env.device.type != "cpu":
            compile_blocks(model)
        if lay.pp == 1:
            self._shard(model, list(model.layers))
            return model, None, True
        v = cfg.parallel.interleave
        stages, module = build_stages(model, lay.pp, self.pp_rank, v)
        for _, stage in stages:
            stage.seq_shards = lay.tp
            self._shard(stage, list(stage.layers.values()))
        schedule = build_schedule(
            stages, lay.pp * v, self.schedule_name, self.accum, env.device, self.groups.pp.get_group()
        )
        return module, schedule, any(s.last for _, s in stages)

    def _shard(self, root: nn.Module, blocks: list[nn.Module]) -> None:
        """FSDP2 per block and on ``root`` over the data-parallel mesh (nothing when dp = 1)."""
        if self.groups.dp is None:
            return
        from torch.distributed.fsdp import fully_shard

        reshard = self.cfg.parallel.fsdp_reshard()
        for block in blocks:
            fully_shard(block, mesh=self.groups.dp, reshard_after_forward=reshard)
        fully_shard(root, mesh=self.groups.dp, reshard_after_forward=reshard)

    def _loss_context(self):
        if self.layout.tp == 1:
            return nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    # -- the step ---------------------------------------------------------------------------------
    def _mean_over_replicas(self, value: torch.Tensor) -> float:
        """Average a per-replica scalar held by the last pipeline stage (equal on tp ranks) over the job."""
        value = value.detach().float().reshape(())
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        value = value if self.is_last else torch.zeros_like(value)
        if dist.is_initialized() and self.env.world > 1:
            dist.all_reduce(value)
            value = value / (self.env.world // self.layout.pp)
        return float(value)

    def _grad_norm_and_clip(self, clip: float) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        if self.layout.pp > 1:  # each pipeline rank holds other parameters: sum the squares
            sq = norm.float() ** 2
            dist.all_reduce(sq, group=self.groups.pp.get_group())
            norm = sq.sqrt()
        if math.isfinite(float(norm)):
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        return float(norm)

    def step(self, optimizer: torch.optim.Optimizer, sampler: Any) -> tuple[float, float]:
        """One optimizer step over the global batch; (mean loss, gradient norm before clipping)."""
        device = self.env.device
        batches = [sampler.next_batch() for _ in range(self.accum)]
        if self.schedule is None:
            total = torch.zeros((), device=device)
            for micro, (x, y) in enumerate(batches):
                sync = micro == self.accum - 1
                if self.groups.dp is not None:
                    self.module.set_requires_gradient_sync(sync)
                with self._loss_context():
                    loss = self.module(x.to(device), y.to(device))
                    (loss / self.accum).backward()
                total += (loss.full_tensor() if hasattr(loss, "full_tensor") else loss).detach()
            loss_value = self._mean_over_replicas(total / self.accum)
        else:
            x = torch.cat([b[0] for b in batches]).to(device)
            y = torch.cat([b[1] for b in batches]).to(device)
            losses: list[torch.Tensor] = []
            with self._loss_context():
                self._run_schedule(self.schedule.step, x, y, losses)
            loss_value = self._mean_over_replicas(torch.stack(losses).mean() if losses else torch.zeros(()))
        if self.layout.tp > 1:
            from isoflop.train.parallel.tensor import settle_gradients

            settle_gradients(self.module)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = self._grad_norm_and_clip(clip)
        if math.isfinite(loss_value) and math.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, norm

    def _run_schedule(self, fn: Any, x: torch.Tensor, y: torch.Tensor, losses: list) -> None:
        first = self.pp_rank == 0
        args = (x,) if first else ()
        fn(*args, target=y if self.is_last else None, losses=losses if self.is_last else None)

    @torch.no_grad()
    def evaluate(self, val_sets: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean token loss over the fixed validation batches (each data-parallel rank takes its rows)."""
        device, rows = self.env.device, self.cfg.train.global_batch // self.dp_world
        self.module.eval()
        total = torch.zeros((), device=device, dtype=torch.float64)
        for x, y in val_sets:
            xs = x[self.dp_rank * rows : (self.dp_rank + 1) * rows].to(device)
            ys = y[self.dp_rank * rows : (self.dp_rank + 1) * rows].to(device)
            if self.schedule is None:
                parts = []
                for lo in range(0, rows, self.micro_batch):
                    with self._loss_context():
                        loss = self.module(xs[lo : lo + self.micro_batch], ys[lo : lo + self.micro_batch])
                    parts.append(loss.full_tensor() if hasattr(loss, "full_tensor") else loss)
                total += torch.stack(parts).double().mean()
            else:
                losses: list[torch.Tensor] = []
                with self._loss_context():
                    self._run_schedule(self.schedule.eval, xs, ys, losses)
                if losses:
                    total += (
                        torch.stack([t.full_tensor() if hasattr(t, "full_tensor") else t for t in losses])
                        .double()
                        .mean()
                    )
        self.module.train()
        return self._mean_over_replicas(total / len(val_sets))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights with ``Transformer``'s keys, on rank 0 (None elsewhere)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from isoflop.train.parallel.tensor import fused_state_dict

        # not cpu_offload: with full_state_dict it keeps the values on global rank 0 only, and every stage sends
        part = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
        part = {k: v.detach().cpu() for k, v in part.items()}
        if self.layout.pp > 1:
            parts: list[Any] = [None] * self.env.world if self.env.rank == 0 else None
            dist.gather_object(part, parts, dst=0)
            if self.env.rank != 0:
                return None
            part = {k: v for p in parts for k, v in p.items()}
        if self.env.rank != 0:
            return None
        return fused_state_dict(part)
