"""Mixture-of-experts feed-forward built from a ``ModelSpec`` (``layers.{i}.mlp`` when ``spec.is_moe``).

* Routers. ``softmax``: softmax over all experts, the top-k, the k weights renormalised to sum to 1 (Jiang et
  al. 2024, Mixtral; as Hugging Face's ``MixtralSparseMoeBlock``). ``sigmoid``: per-expert sigmoid affinities,
  the top-k, normalised over the k (DeepSeek-AI 2024, DeepSeek-V3, Eq. 13-16). Both select on
  ``score + expert_bias``; the bias is DeepSeek-V3's auxiliary-loss-free balancing (Sec. 2.1.2), moved outside
  autograd after each step by ``rate * sign(mean load - load)`` (``update_expert_bias``), and weighs nothing.
* Losses (training only, averaged over the MoE layers and added to the language-model loss by the model):
  the load-balancing loss ``E * sum_i f_i P_i`` (Fedus et al. 2022, Switch, Eq. 4; f_i the fraction of the
  ``T k`` assignments sent to expert i, P_i its mean router probability; 1 when balanced) and the router
  z-loss ``mean_t logsumexp(logits_t)^2`` (Zoph et al. 2022, ST-MoE, Eq. 5).
* Shared experts (Dai et al. 2024, DeepSeekMoE): one dense ``MLP`` of width ``n_shared_experts * d_ff``.
* Dispatch: the ``T k`` assignments are sorted by expert (top-1 choices first, then top-2, ..., so a capacity
  keeps first choices first, as GShard, Lepikhin et al. 2021, Alg. 1) and the experts run as grouped GEMMs
  (``torch._grouped_mm``; its backward is written here, so it also trains on CPU), or as one batched matmul
  over an ``(experts, capacity, d)`` buffer when a capacity is set, when the shapes miss the grouped kernel's
  16-byte alignment, or where the kernel is missing. No Python loop over experts.
* Capacity: ``ceil(capacity_factor * T k / E)`` slots per expert; assignments beyond it are dropped (the token
  keeps its residual and its other experts). ``capacity_factor: null`` is dropless.
* Expert parallelism (``enable_expert_parallel``): each rank of an ``ep`` group runs ``E / ep`` experts; tokens
  travel there and back with autograd-aware all-to-alls (dispatch and combine). Each rank holds only its
  experts: the weights are DTensors ``Shard(0)`` over the ``ep`` dimension of a ``(dp_mod_ep, ep)`` mesh
  (torchtitan's ``ExpertParallel``), so weights, gradients and optimizer state shrink by ``ep`` while DCP
  checkpoints and the full-state export keep the ``[E, ...]`` layout. DDP ignores them and
  ``reduce_expert_grads`` averages over ``dp_mod_ep``; FSDP2 shards them over ``dp_mod_ep``; both divide by the
  world size, like the other gradients.

FLOPs: the grouped path runs exactly ``T k`` expert rows, what ``isoflop.spec.accounting`` counts; a
``FlopCounterMode`` formula for ``aten._grouped_mm`` (which torch does not count) is registered below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec
from isoflop.train.kernels import SwiGLUFn, eager_cpu_training


@register_flop_formula(torch.ops.aten._grouped_mm)
def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """2 x multiply-adds of a grouped matmul (torch counts none). The groups partition one dimension, so the
    total is that of the whole product: 2-D x 2-D (grouped inner dimension ``M``) ``2 K M N``, otherwise
    ``2 x |out| x K``."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


class _GroupedMM(torch.autograd.Function):
    """``y[g] = x[g] @ w[e]`` for the row groups ``g`` given by cumulative ``offs``; forward and backward are
    grouped GEMMs (torch's own backward needs a CUDA kernel for the weight gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
        ctx.save_for_backward(x, w, offs)
        return torch._grouped_mm(x, w, offs=offs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, w, offs = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch._grouped_mm(grad, w.transpose(-2, -1), offs=offs)
        grad_w = torch._grouped_mm(x.t(), grad, offs=offs)
        return grad_x, grad_w, None


def _grouped_ok(x: Tensor, *dims: int) -> bool:
    """Whether ``torch._grouped_mm`` takes these operands: present, 16-byte aligned rows, and on CUDA bf16."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda" and x.dtype != torch.bfloat16:
        return False
    return x.device.type in ("cpu", "cuda") and all(d * x.element_size() % 16 == 0 for d in dims)


class Experts(nn.Module):
    """``n`` expert MLPs as stacked weights: ``gate_up`` ``[n, 2 d_ff, d]`` (gate rows first, like the dense
    ``mlp.gate_up.weight``) or ``up`` ``[n, d_ff, d]`` for GELU, and ``down`` ``[n, d, d_ff]``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        n, d, f = spec.n_experts, spec.d_model, spec.d_ff
        self.gated = spec.gated
        if self.gated:
            self.gate_up = nn.Parameter(torch.empty(n, 2 * f, d))
        else:
            self.up = nn.Parameter(torch.empty(n, f, d))
        self.down = nn.Parameter(torch.empty(n, d, f))

    @property
    def w_in(self) -> Tensor:
        return self.gate_up if self.gated else self.up

    def _act(self, h: Tensor) -> Tensor:
        if not self.gated:
            return F.gelu(h, approximate="tanh")
        if eager_cpu_training(h):
            return SwiGLUFn.apply(h)
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up

    def _weights(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Experts ``lo:hi`` of (``w_in``, ``down``); under expert parallelism the weights are DTensors that hold
        exactly these experts on this rank (``Shard(0)``), and the local shard is used."""
        from torch.distributed.tensor import DTensor

        w_in, w_out = self.w_in, self.down
        if isinstance(w_in, DTensor):
            return w_in.to_local(), w_out.to_local()
        return w_in[lo:hi], w_out[lo:hi]

    def grouped(self, x: Tensor, counts: Tensor, lo: int, hi: int) -> Tensor:
        """Rows of ``x`` sorted by expert, ``counts[e]`` rows for expert ``lo + e``, through experts ``lo:hi``."""
        w_in, w_out = self._weights(lo, hi)
        if _grouped_ok(x, w_out.shape[1], w_out.shape[2]):
            offs = counts.cumsum(0).to(torch.int32)
            h = self._act(_GroupedMM.apply(x, w_in.to(x.dtype).transpose(-2, -1), offs))
            return _GroupedMM.apply(h, w_out.to(x.dtype).transpose(-2, -1), offs)
        capacity = int(counts.max()) if counts.numel() else 0
        start = counts.cumsum(0) - counts
        expert = torch.repeat_interleave(torch.arange(hi - lo, device=x.device), counts, output_size=x.shape[0])
        slot = expert * capacity + torch.arange(x.shape[0], device=x.device) - start[expert]
        buf = x.new_zeros((hi - lo) * capacity, x.shape[1]).index_copy(0, slot, x)
        return self._padded(buf.view(hi - lo, capacity, -1), w_in, w_out).flatten(0, 1)[slot]

    def padded(self, buf: Tensor, lo: int, hi: int) -> Tensor:
        """``buf`` ``[experts hi - lo, slots, d]`` through experts ``lo:hi`` as two batched matmuls."""
        return self._padded(buf, *self._weights(lo, hi))

    def _padded(self, buf: Tensor, w_in: Tensor, w_out: Tensor) -> Tensor:
        h = self._act(torch.bmm(buf, w_in.to(buf.dtype).transpose(1, 2)))
        return torch.bmm(h, w_out.to(buf.dtype).transpose(1, 2))


@dataclass
class MoEStats:
    """Per-layer routing statistics summed over the forwards of one optimizer step (training only)."""

    tokens_per_expert: Tensor  # assignments routed to each expert, before any drop
    dropped: Tensor  # assignments dropped by the capacity
    assignments: Tensor  # T k
    aux_loss: Tensor  # sum over forwards of the load-balancing loss
    z_loss: Tensor  # sum over forwards of the router z-loss
    forwards: int = 0


class MoE(nn.Module):
    """Router, routed ``experts``, optional ``shared`` MLP; see the module docstring."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from isoflop.train.model import MLP

        if spec.bias:
            raise IsoflopError(
                f"{spec.name}: MoE experts have no biases in the trainer; set bias: false for an MoE model"
            )
        self.n_experts, self.top_k = spec.n_experts, spec.top_k
        self.router_kind, self.capacity_factor = spec.router, spec.capacity_factor
        self.router = nn.Linear(spec.d_model, spec.n_experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(spec.n_experts))
        self.experts = Experts(spec)
        self.shared = None
        if spec.n_shared_experts:
            dense = spec.replace(d_ff=spec.n_shared_experts * spec.d_ff, n_experts=0, top_k=0, n_shared_experts=0)
            self.shared = MLP(dense)
        self.ep_group = None  # torch.distributed group of the expert-parallel ranks (enable_expert_parallel)
        self.ep_mesh = None  # its ("dp_mod_ep", "ep") device mesh
        self.aux_loss: Tensor | None = None  # this forward's losses, read by Transformer.forward
        self.z_loss: Tensor | None = None
        self._routed: tuple[Tensor, Tensor, int] | None = None
        self.stats: MoEStats | None = None

    # -- routing ----------------------------------------------------------------------------------
    def route(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(expert indices ``[T, k]``, combine weights ``[T, k]``, router probabilities ``[T, E]`` for the
        balancing loss) from float32 router logits."""
        if self.router_kind == "softmax":
            scores = probs = logits.softmax(dim=-1)
        else:
            scores = logits.sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)  # DeepSeek-V3 Eq. 20
        idx = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, idx)
        return idx, weights / weights.sum(dim=-1, keepdim=True), probs

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, shape[-1])
        if torch.is_autocast_enabled(x.device.type):  # the expert matmuls run in the autocast dtype
            x = x.to(torch.get_autocast_dtype(x.device.type))
        logits = self.router(x).float()
        idx, weights, probs = self.route(logits)
        T, k, E = x.shape[0], self.top_k, self.n_experts
        flat = idx.t().reshape(-1)  # k-major: every token's first choice before any second choice
        counts = torch.bincount(flat, minlength=E)
        order = flat.argsort(stable=True)
        token = order % T
        rows = x[token]
        if self.capacity_factor is None:
            out, kept = self._dropless(rows, counts), None
        else:
            out, kept = self._capacity(rows, flat[order], counts)
        out = out * weights.t().reshape(-1)[order, None].to(out.dtype)
        y = torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))
        if self.shared is not None:
            y = y + self.shared(x)
        if self.training:
            self._losses(logits, probs, counts, T * k, kept)
        return y.view(shape).to(dtype)

    def _losses(self, logits: Tensor, probs: Tensor, counts: Tensor, assignments: int, kept: Tensor | None) -> None:
        """This forward's losses and routing counts, consumed once per model forward by ``moe_loss`` (so the
        re-run forward of activation checkpointing overwrites them instead of counting twice)."""
        frac = counts.float() / assignments
        self.aux_loss = self.n_experts * (frac * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        dropped = (assignments - kept.sum()) if kept is not None else torch.zeros((), device=counts.device)
        self._routed = (counts, dropped, assignments)

    def _record(self) -> None:
        """Add this forward's counts and losses to the step's ``stats``."""
        counts, dropped, assignments = self._routed
        if self.stats is None:
            zero = torch.zeros((), device=counts.device)
            self.stats = MoEStats(torch.zeros_like(counts), zero.clone(), zero.clone(), zero.clone(), zero.clone())
        s = self.stats
        s.tokens_per_expert += counts
        s.dropped += dropped
        s.assignments += assignments
        s.aux_loss += self.aux_loss.detach()
        s.z_loss += self.z_loss.detach()
        s.forwards += 1

    # -- dispatch ---------------------------------------------------------------------------------
    def _ep(self) -> tuple[int, int]:
        import torch.distributed as dist

        if self.ep_group is None:
            return 1, 0
        return dist.get_world_size(self.ep_group), dist.get_rank(self.ep_group)

    def _dropless(self, rows: Tensor, counts: Tensor) -> Tensor:
        ep, rank = self._ep()
        if ep == 1:
            return self.experts.grouped(rows, counts, 0, self.n_experts)
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_to_all_single

        local = self.n_experts // ep
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.ep_group)  # [source, local expert] counts
        recv = recv.view(ep, local)
        send_splits = counts.view(ep, local).sum(1).tolist()
        recv_splits = recv.sum(1).tolist()
        got = all_to_all_single(
            rows.new_empty(sum(recv_splits), rows.shape[1]), rows, recv_splits, send_splits, group=self.ep_group
        )
        expert = torch.repeat_interleave(
            torch.arange(local, device=rows.device).repeat(ep), recv.reshape(-1), output_size=got.shape[0]
        )
        perm = expert.argsort(stable=True)
        done = self.experts.grouped(got[perm], recv.sum(0), rank * local, (rank + 1) * local)
        back = torch.empty_like(done).index_copy(0, perm, done)
        return all_to_all_single(
            rows.new_empty(rows.shape[0], done.shape[1]), back, send_splits, recv_splits, group=self.ep_group
        )

    def _capacity(self, rows: Tensor, expert: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed ``[E, C, d]`` buffer; (outputs of the sorted assignments, 1 where kept)."""
        E, n = self.n_experts, rows.shape[0]
        capacity = math.ceil(self.capacity_factor * n / E)
        pos = torch.arange(n, device=rows.device) - (counts.cumsum(0) - counts)[expert]
        kept = pos < capacity
        slot = torch.where(kept, expert * capacity + pos, E * capacity)  # dropped rows go to a spare slot
        buf = rows.new_zeros(E * capacity + 1, rows.shape[1]).index_copy(0, slot, rows)[:-1]
        ep, rank = self._ep()
        if ep == 1:
            out = self.experts.padded(buf.view(E, capacity, -1), 0, E)
        else:
            from torch.distributed.nn.functional import all_to_all_single

            local = E // ep
            got = all_to_all_single(torch.empty_like(buf), buf, group=self.ep_group)
            got = got.view(ep, local, capacity, -1).transpose(0, 1).reshape(local, ep * capacity, -1)
            done = self.experts.padded(got, rank * local, (rank + 1) * local)
            done = done.view(local, ep, capacity, -1).transpose(0, 1).reshape(E * capacity, -1)
            out = all_to_all_single(torch.empty_like(done), done, group=self.ep_group).view(E, capacity, -1)
        out = torch.cat([out.reshape(E * capacity, -1), out.new_zeros(1, out.shape[-1])])
        return out[slot], kept

    @torch.no_grad()
    def init_weights(self, std: float, residual_std: float, generator: torch.Generator | None) -> None:
        """Experts as the dense MLP: inputs ~ N(0, std), ``down`` ~ N(0, residual_std); the bias at 0."""
        nn.init.normal_(self.experts.w_in, 0.0, std, generator=generator)
        nn.init.normal_(self.experts.down, 0.0, residual_std, generator=generator)
        self.expert_bias.zero_()


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_loss(layers: list[MoE], aux_coef: float, z_coef: float) -> Tensor | None:
    """``aux_coef * mean aux + z_coef * mean z`` over the layers' last training forward, which it consumes and
    adds to each layer's step ``stats`` (None when nothing was recorded)."""
    layers = [m for m in layers if m.aux_loss is not None]
    aux = [m.aux_loss for m in layers]
    z = [m.z_loss for m in layers]
    for m in layers:
        m._record()
        m.aux_loss = m.z_loss = m._routed = None
    if not aux:
        return None
    return aux_coef * torch.stack(aux).mean() + z_coef * torch.stack(z).mean()


def check_expert_parallel(spec: ModelSpec, ep: int, world: int) -> None:
    """One-line errors for an ``ep`` that the model or the process count cannot take."""
    if ep == 1:
        return
    if not spec.is_moe:
        raise IsoflopError(f"parallel.ep={ep} needs a mixture-of-experts model (n_experts > 0); set parallel.ep: 1")
    if spec.n_experts % ep:
        raise IsoflopError(
            f"parallel.ep={ep} does not divide n_experts={spec.n_experts}; choose an ep that divides the experts"
        )
    if world % ep:
        raise IsoflopError(
            f"parallel.ep={ep} does not divide the {world} launched processes; launch a multiple of {ep} processes"
        )


def enable_expert_parallel(model: nn.Module, ep: int, device_type: str) -> None:
    """Give each rank only its ``E / ep`` experts (all ranks must call; GShard, Lepikhin et al. 2021).

    A ``(world / ep, ep)`` device mesh ``("dp_mod_ep", "ep")`` groups ``ep`` consecutive ranks; every expert
    weight becomes a DTensor ``Shard(0)`` over ``ep`` (torchtitan's ``ExpertParallel``), so checkpoints keep the
    full ``[E, ...]`` layout and reshard. Data parallelism for the experts runs over ``dp_mod_ep``, the ranks
    that hold the same experts (``wrap_model``, ``reduce_expert_grads``)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    if ep == 1:
        return
    world = dist.get_world_size()
    mesh = init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))
    ep_mesh, rank = mesh["ep"], mesh["ep"].get_local_rank()
    for layer in moe_layers(model):
        layer.ep_group, layer.ep_mesh = ep_mesh.get_group(), mesh
        experts, local = layer.experts, layer.n_experts // ep
        for name in ("gate_up", "up", "down"):
            weight = getattr(experts, name, None)
            if weight is None:
                continue
            shard = weight.detach()[rank * local : (rank + 1) * local].clone()
            dt = DTensor.from_local(shard, ep_mesh, [Shard(0)], run_check=False)
            setattr(experts, name, nn.Parameter(dt, requires_grad=weight.requires_grad))


def expert_parallel_layers(model: nn.Module) -> list[MoE]:
    """The MoE layers whose experts are sharded over an ``ep`` mesh (``enable_expert_parallel``)."""
    return [m for m in moe_layers(model) if m.ep_mesh is not None]


@torch.no_grad()
def reduce_expert_grads(model: nn.Module, world: int) -> None:
    """DDP's step for the experts it ignores: sum each expert gradient over the ranks that hold the same experts
    (``dp_mod_ep``) and divide by the world size, as DDP divides the other gradients (each rank's expert gradient
    already sums its ``ep`` group's tokens through the all-to-all's backward)."""
    import torch.distributed as dist

    for layer in expert_parallel_layers(model):
        group = layer.ep_mesh["dp_mod_ep"]
        for p in layer.experts.parameters():
            if p.grad is None:
                continue
            g = p.grad.to_local()
            if group.size() > 1:
                dist.all_reduce(g, group=group.get_group())
            g.div_(world)


@dataclass(frozen=True)
class MoEStepStats:
    """Routing statistics of one optimizer step over all processes (``metrics.jsonl`` keys ``moe_*``)."""

    tokens_per_expert: list[list[int]]  # [layer][expert] assignments routed, before any drop
    dropped_fraction: float  # dropped assignments / all assignments, all layers
    aux_loss: float  # load-balancing loss, mean over layers and forwards (1 = balanced)
    z_loss: float  # router z-loss, mean over layers and forwards

    def to_row(self) -> dict[str, object]:
        return {
            "moe_aux_loss": self.aux_loss,
            "moe_z_loss": self.z_loss,
            "moe_dropped_fraction": self.dropped_fraction,
            "moe_tokens_per_expert": self.tokens_per_expert,
        }


@torch.no_grad()
def step_stats(model: nn.Module, bias_rate: float = 0.0) -> MoEStepStats | None:
    """Sum the step's statistics over the processes, move each layer's ``expert_bias`` by ``bias_rate *
    sign(mean load - load)`` (DeepSeek-V3 Sec. 2.1.2; the same on every rank) and reset. None for a dense model."""
    from isoflop.train.distributed import all_reduce

    layers = [m for m in moe_layers(model) if m.stats is not None]
    if not layers:
        return None
    packed = torch.stack(
        [
            torch.cat(
                [
                    s.tokens_per_expert.double(),
                    torch.stack([s.dropped, s.assignments, s.aux_loss, s.z_loss]).double(),
                    torch.tensor([s.forwards], dtype=torch.float64, device=s.dropped.device),
                ]
            )
            for s in (m.stats for m in layers)
        ]
    )
    all_reduce(packed, "sum")
    E = layers[0].n_experts
    load, (dropped, assignments, aux, z, forwards) = packed[:, :E], packed[:, E:].unbind(1)
    if bias_rate > 0:
        for layer, row in zip(layers, load, strict=True):
            layer.expert_bias += bias_rate * torch.sign(row.mean() - row).to(layer.expert_bias.dtype)
    for layer in layers:
        layer.stats = None
    return MoEStepStats(
        tokens_per_expert=load.round().long().tolist(),
        dropped_fraction=float(dropped.sum() / assignments.sum()),
        aux_loss=float((aux / forwards).mean()),
        z_loss=float((z / forwards).mean()),
    )
