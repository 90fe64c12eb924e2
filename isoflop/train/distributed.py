"""Distribution with PyTorch's own engines: torchrun for processes, DDP and FSDP2 for the model.

* Processes come from ``torch.distributed.run`` (torchrun): ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are
  read from its environment. ``isoflop train --nproc-per-node P`` calls torchrun's own entry point.
* NCCL on GPU, gloo on CPU.
* ``ddp``: ``DistributedDataParallel`` (Li et al. 2020). ``fsdp``: FSDP2 ``fully_shard`` per transformer block
  and on the root (ZeRO-3, Rajbhandari et al. 2020; ``reshard_after_forward=False`` keeps parameters gathered
  between forward and backward, i.e. SHARD_GRAD_OP / ZeRO-2). ``hsdp``: the same over a 2-D device mesh
  (replicate x shard), sharding inside a group and replicating across groups.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from isoflop.env import repo_pythonpath
from isoflop.errors import IsoflopError


@dataclass
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local GPU when CUDA is available, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise IsoflopError("train.device is cuda but no CUDA GPU is visible; use device: cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the torchrun job described by the environment (a single process when there is none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    env = DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
        env.initialized_here = True
    return env


def shutdown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def resolve_strategy(strategy: str, env: DistEnv) -> str:
    """``auto``: no wrapper for one process; FSDP2 on GPUs, DDP on CPU processes."""
    if strategy == "auto":
        if env.world == 1:
            return "none"
        return "fsdp" if env.device.type == "cuda" else "ddp"
    if strategy != "none" and env.world == 1:
        return strategy  # a 1-process DDP/FSDP run is valid (and tested to match "none")
    if strategy == "none" and env.world > 1:
        raise IsoflopError(f"parallel.strategy is none but {env.world} processes run; use ddp, fsdp, hsdp or auto")
    return strategy


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (its largest ``ModuleList``)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise IsoflopError("the model has no ModuleList of blocks to shard or checkpoint")
    return max(lists, key=len)


def apply_activation_checkpointing(model: nn.Module, policy: str = "full") -> None:
    """Recompute activations in the backward pass under ``policy`` (none, selective, op, full;
    ``isoflop.train.recompute``)."""
    from isoflop.train.recompute import apply_recompute

    if policy != "none":
        apply_recompute(transformer_blocks(model), policy)


def wrap_model(
    model: nn.Module,
    strategy: str,
    env: DistEnv,
    replicate: int,
    reshard_after_forward: bool,
    bf16_params: bool = False,
) -> nn.Module:
    """Wrap ``model`` for ``strategy`` (none, ddp, fsdp, hsdp); FSDP2 shards in place and returns the model."""
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            _init_single_process_group(env)
        from torch.distributed.tensor import DTensor

        ids = [env.device.index] if env.device.type == "cuda" else None
        # expert-parallel weights (DTensors over the ep mesh) differ per rank: moe.reduce_expert_grads syncs them
        sharded = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sharded)
        return DistributedDataParallel(model, device_ids=ids)
    if strategy not in ("fsdp", "hsdp"):
        raise IsoflopError(f"unknown parallel.strategy {strategy!r}; use auto, none, ddp, fsdp or hsdp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        _init_single_process_group(env)
    if strategy == "hsdp":
        if env.world % replicate:
            raise IsoflopError(f"parallel.replicate={replicate} does not divide {env.world} processes; pick a divisor")
        mesh = init_device_mesh(
            env.device.type, (replicate, env.world // replicate), mesh_dim_names=("replicate", "shard")
        )
    else:
        mesh = init_device_mesh(env.device.type, (env.world,), mesh_dim_names=("shard",))
    # On GPU with bf16: bf16 parameters and gathers, fp32 gradient reduction (torchtitan's default policy).
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16_params
        else MixedPrecisionPolicy()
    )
    _shard_experts(model, env.world, reshard_after_forward, mp)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    return model


def _shard_experts(model: nn.Module, world: int, reshard_after_forward: bool, mp) -> None:
    """FSDP2 for expert-parallel experts over the ranks that hold the same experts (``dp_mod_ep``), before the
    blocks take the other parameters (torchtitan's ``apply_fsdp`` with EP); gradients divide by the world size
    like every other gradient, since each expert gradient already sums its ``ep`` group's tokens."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from isoflop.train.moe import expert_parallel_layers

    for layer in expert_parallel_layers(model):
        experts = layer.experts
        fully_shard(experts, mesh=layer.ep_mesh["dp_mod_ep"], reshard_after_forward=reshard_after_forward, mp_policy=mp)
        experts.set_gradient_divide_factor(float(world))
        for method in ("grouped", "padded"):  # the MoE layer calls these, not forward
            register_fsdp_forward_method(experts, method)


def _init_single_process_group(env: DistEnv) -> None:
    """DDP/FSDP need a process group even for one process: a private single-rank group on a free port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "nccl" if env.device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    env.initialized_here = True


@contextmanager
def no_grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on accumulation micro-steps that are not the last."""
    if sync:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over parameters that may live on different device meshes (expert-parallel DTensors
    beside FSDP2 or plain ones): each mesh's norm is reduced to a full value, the squares add, and every group is
    clipped by the total (torchtitan's EP ``clip_grad_norm_``)."""
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    if len(groups) <= 1:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    squares = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group])
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    total = torch.stack(squares).sum().sqrt()
    for group in groups.values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``avg`` or ``max``) when distributed; a no-op otherwise."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if op == "avg":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= dist.get_world_size()
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and env.world > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(nproc_per_node: int, module_args: list[str]) -> int:
    """Run ``python -m isoflop <module_args>`` under torchrun (``torch.distributed.run``), standalone on this node.

    Returns the exit status: 0 (also after SIGTERM/SIGINT, once the workers have saved), 2 when a worker
    rejected its input, 3 when training diverged, else 1 when a worker failed (torchrun has printed which).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        raise IsoflopError("--nproc-per-node inside a torchrun job; drop the option or run without torchrun")
    # Workers import isoflop from where this process did, whatever their working directory.
    os.environ["PYTHONPATH"] = repo_pythonpath()
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc_per_node), "-m", "isoflop", *module_args]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        first = next(iter(exc.failures.values()), None)
        code = first.exitcode if first is not None else 1
        print(f"error: a training process failed (exit code {code}); see its output above", file=sys.stderr)
        return code if code in (2, 3) else 1
    except SignalException as exc:
        # torchrun has forwarded the signal and waited for the workers, which save a checkpoint and stop.
        print(
            f"[isoflop train] launcher got signal {exc.sigval}; workers saved a checkpoint and stopped", file=sys.stderr
        )
        return 0
    return 0
