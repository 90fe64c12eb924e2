"""Tensor parallelism with sequence parallelism (Shoeybi et al. 2019; Korthikanti et al. 2022) through
``parallelize_module``, as torchtitan applies it to Llama.

* The fused projections are split first (``attn.qkv`` -> ``attn.q``/``attn.k``/``attn.v``, ``mlp.gate_up``
  -> ``mlp.gate``/``mlp.up``) so each column shard holds whole heads and matching gate/up rows; the values
  are the fused rows, unchanged. ``fused_state_dict`` concatenates them back for the export.
* Norms run sequence-parallel (``SequenceParallel``: activations sharded on the sequence dimension); the
  attention and MLP inputs are all-gathered once (``PrepareModuleInput``), their column-parallel projections
  keep local heads, the row-parallel output projections reduce-scatter back onto the sequence shards.
* The token embedding is row-parallel (vocabulary-sharded); the output head multiplies the gathered final
  hidden states by the vocabulary-sharded output matrix and the cross-entropy runs on the sharded logits
  (``loss_parallel``): the full ``(tokens, vocab)`` logits never exist on one rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from isoflop.train.model import MLP, Attention, Transformer


class _Concat(nn.Module):
    """Column-parallel pieces of a fused projection; ``forward`` concatenates their local outputs."""

    def __init__(self, parts: dict[str, nn.Linear]) -> None:
        super().__init__()
        self.parts = list(parts)
        for name, lin in parts.items():
            self.add_module(name, lin)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.parts], dim=-1)


def _split_linear(fused: nn.Linear, sizes: dict[str, int]) -> dict[str, nn.Linear]:
    """Row blocks of ``fused`` as separate linears with the same values."""
    out, start = {}, 0
    for name, rows in sizes.items():
        lin = nn.Linear(fused.in_features, rows, bias=fused.bias is not None, device=fused.weight.device)
        with torch.no_grad():
            lin.weight.copy_(fused.weight[start : start + rows])
            if fused.bias is not None:
                lin.bias.copy_(fused.bias[start : start + rows])
        out[name], start = lin, start + rows
    return out


def _split_fused(model: Transformer) -> None:
    spec = model.spec
    for block in model.layers:
        attn: Attention = block.attn
        sizes = {"q": spec.q_dim, "k": spec.kv_dim, "v": spec.kv_dim}
        attn.qkv = _Concat(_split_linear(attn.qkv, sizes))
        if block.mlp.gated:
            mlp: MLP = block.mlp
            mlp.gate_up = _Concat(_split_linear(mlp.gate_up, {"gate": spec.d_ff, "up": spec.d_ff}))


FUSED = {"attn.qkv": ("q", "k", "v"), "mlp.gate_up": ("gate", "up")}


def fused_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A (full, unsharded) state dict of a split model with the fused keys of ``Transformer`` restored."""
    out = dict(state)
    for key in list(state):
        for fused, parts in FUSED.items():
            head = f".{fused}.{parts[0]}."
            if head in key:
                prefix, kind = key.split(head)
                names = [f"{prefix}.{fused}.{p}.{kind}" for p in parts]
                out[f"{prefix}.{fused}.{kind}"] = torch.cat([out.pop(n) for n in names])
    return out


class _TPTransformer(Transformer):
    """The same module tree; the loss is the vocabulary-parallel cross-entropy on sharded logits: call it, and
    run its backward pass, inside ``loss_parallel()`` (``tp_loss_context``)."""

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        h = self.hidden_states(idx)
        if isinstance(h, DTensor):
            h = h.redistribute(placements=[Replicate()])
        logits = F.linear(h, self.output_weight)  # (B, T, V) sharded on V
        if targets is None:
            return logits.full_tensor() if isinstance(logits, DTensor) else logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), ignore_index=-100)


def apply_tensor_parallel(model: Transformer, tp_mesh) -> Transformer:
    """Shard ``model`` in place over ``tp_mesh`` (module docstring); returns it."""
    spec = model.spec
    tp = tp_mesh.size()
    _split_fused(model)
    model.__class__ = _TPTransformer
    plan: dict[str, object] = {
        # A DTensor output when learned positions (a replicated DTensor) are added to it.
        "embed": RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=model.pos_embed is None
        ),
        "norm": SequenceParallel(),
    }
    if model.lm_head is not None:  # its weight is used directly by the loss (vocabulary rows sharded)
        plan["lm_head"] = ColwiseParallel()
    parallelize_module(model, tp_mesh, plan)
    if model.pos_embed is not None:
        model.pos_embed.weight = nn.Parameter(distribute_tensor(model.pos_embed.weight.data, tp_mesh, [Replicate()]))
    for block in model.layers:
        block_plan: dict[str, object] = {
            # The residual stream between blocks is the local sequence shard (a plain tensor).
            "": PrepareModuleInput(
                input_layouts=(Shard(1), None), desired_input_layouts=(Shard(1), None), use_local_output=True
            ),
            "attn_norm": SequenceParallel(),
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)),
            "attn.qkv.q": ColwiseParallel(),
            "attn.qkv.k": ColwiseParallel(),
            "attn.qkv.v": ColwiseParallel(),
            "attn.out": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.down": RowwiseParallel(output_layouts=Shard(1)),
        }
        if block.mlp.gated:
            block_plan["mlp.gate_up.gate"] = ColwiseParallel()
            block_plan["mlp.gate_up.up"] = ColwiseParallel()
        else:
            block_plan["mlp.up"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, block_plan)
        block.attn.n_heads, block.attn.n_kv = spec.n_heads // tp, spec.n_kv_heads // tp
    return model


def settle_gradients(module: nn.Module) -> None:
    """Give each DTensor gradient its parameter's placements, once per step after accumulation: the
    sequence-parallel norms' ``Partial`` gradients are all-reduced once (Korthikanti et al. 2022, Sec. 4.2.2),
    not again by each reader (the gradient norm, the optimizer); the vocabulary-parallel embedding's
    ``Replicate`` gradient is cut to its shard (no communication), so no rank keeps a full-size gradient."""
    for p in module.parameters():
        grad = p.grad
        if isinstance(p, DTensor) and isinstance(grad, DTensor) and grad.placements != p.placements:
            p.grad = grad.redistribute(p.device_mesh, p.placements)
