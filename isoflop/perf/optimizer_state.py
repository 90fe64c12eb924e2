"""Exact optimizer-state bytes of the trainer's optimizers, from the model's parameter shapes (torch-free).

Per parameter tensor of ``n`` fp32 elements (shape ``m x k`` for matrices):

* ``adamw`` (Loshchilov & Hutter 2019; ``torch.optim.AdamW``): two moments, ``8 n``, plus a 4-byte fp32 step.
* ``sgd`` (momentum SGD, ``torch.optim.SGD``): one momentum buffer, ``4 n``.
* ``adafactor`` (Shazeer & Stern 2018, Sec. 3; ``torch.optim.Adafactor``, no first moment): a matrix keeps
  the factored second moment, row and column sums, ``4 (m + k)``; a vector keeps ``4 n``; plus a 4-byte step.
* ``adam8bit`` (Dettmers et al. 2022, block-wise quantisation; ``bitsandbytes.optim.AdamW8bit``): a tensor of
  at least ``min_8bit_size`` elements keeps two uint8 moments, ``2 n``, and two fp32 absmax per block of 256,
  ``8 ceil(n / 256)``; smaller tensors keep fp32 moments, ``8 n``. The two 256-entry fp32 quantisation maps
  are shared by all tensors of the optimizer: ``2048`` bytes once.
* ``lion`` (Chen et al. 2023; ``bitsandbytes.optim.Lion``): one fp32 momentum, ``4 n``.
* ``galore`` (Zhao et al. 2024, Alg. 1; ``galore_torch.GaLoreAdamW``, ``proj_type=std``): a linear weight
  ``m x k`` with rank ``r`` keeps Adam moments of the projected gradient, ``8 r max(m, k)``, and the
  projection matrix: ``r min(m, k)`` entries, but galore-torch keeps them as a slice of the reduced SVD's
  square factor (``U`` or ``Vh``), so the storage alive is ``4 min(m, k)^2``; the other tensors keep plain
  Adam moments, ``8 n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec

OPTIMIZER_NAMES = ("adamw", "sgd", "adafactor", "adam8bit", "lion", "galore")
ADAM8BIT_BLOCK = 256
ADAM8BIT_MIN_SIZE = 4096
QMAP_ENTRIES = 256


@dataclass(frozen=True)
class ParamShape:
    """One trainable tensor of ``isoflop.train.model.Transformer``, in ``named_parameters()`` order."""

    name: str
    shape: tuple[int, ...]
    kind: Literal["linear", "embedding", "vector"]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def param_shapes(spec: ModelSpec) -> list[ParamShape]:
    """The trainer's parameter tensors for ``spec`` (fused QKV, fused gate/up for SwiGLU, optional head)."""
    if spec.is_moe:
        raise IsoflopError(f"{spec.name} is a mixture-of-experts model; the trainer builds dense models only")
    d = spec.d_model
    out = [ParamShape("embed.weight", (spec.vocab_size, d), "embedding")]
    if spec.position == "learned":
        out.append(ParamShape("pos_embed.weight", (spec.max_seq_len, d), "embedding"))

    def norm(prefix: str) -> list[ParamShape]:
        items = [ParamShape(f"{prefix}.weight", (d,), "vector")]
        if spec.norm == "layernorm":
            items.append(ParamShape(f"{prefix}.bias", (d,), "vector"))
        return items

    def linear(prefix: str, fan_in: int, fan_out: int) -> list[ParamShape]:
        items = [ParamShape(f"{prefix}.weight", (fan_out, fan_in), "linear")]
        if spec.bias:
            items.append(ParamShape(f"{prefix}.bias", (fan_out,), "vector"))
        return items

    for i in range(spec.n_layers):
        p = f"layers.{i}"
        out += norm(f"{p}.attn_norm")
        out += linear(f"{p}.attn.qkv", d, spec.q_dim + 2 * spec.kv_dim)
        out += linear(f"{p}.attn.out", spec.q_dim, d)
        out += norm(f"{p}.mlp_norm")
        if spec.gated:
            out += linear(f"{p}.mlp.gate_up", d, 2 * spec.d_ff)
        else:
            out += linear(f"{p}.mlp.up", d, spec.d_ff)
        out += linear(f"{p}.mlp.down", spec.d_ff, d)
    out += norm("norm")
    if not spec.tie_embeddings:
        out.append(ParamShape("lm_head.weight", (spec.vocab_size, d), "linear"))
    return out


def check_galore_rank(shapes: list[ParamShape], rank: int) -> None:
    """GaLore projects every linear weight to ``rank``; it must be below each matrix's smaller side."""
    if rank <= 0:
        raise IsoflopError(f"optim.galore_rank={rank} must be positive; use e.g. 4")
    smallest = min((min(p.shape) for p in shapes if p.kind == "linear"), default=None)
    if smallest is not None and rank >= smallest:
        raise IsoflopError(
            f"optim.galore_rank={rank} is not smaller than the smallest linear weight side ({smallest}); "
            f"use a rank below {smallest}"
        )


def tensor_state_bytes(p: ParamShape, optimizer: str, galore_rank: int = 0) -> int:
    """State bytes one tensor adds (the shared 8-bit quantisation maps excluded; see ``optimizer_state_bytes``)."""
    n = p.numel
    if optimizer == "adamw":
        return 8 * n + 4
    if optimizer in ("sgd", "lion"):
        return 4 * n
    if optimizer == "adafactor":
        return 4 + (4 * (p.shape[0] + p.shape[1]) if len(p.shape) == 2 else 4 * n)
    if optimizer == "adam8bit":
        if n < ADAM8BIT_MIN_SIZE:
            return 8 * n
        return 2 * n + 8 * -(-n // ADAM8BIT_BLOCK)
    if optimizer == "galore":
        if p.kind != "linear":
            return 8 * n
        return 8 * galore_rank * max(p.shape) + 4 * min(p.shape) ** 2
    raise IsoflopError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZER_NAMES)}")


def optimizer_state_bytes(shapes: list[ParamShape], optimizer: str, galore_rank: int = 0) -> int:
    """Bytes of all optimizer-state tensors after the first step (unique storages, fp32 parameters)."""
    if optimizer == "galore":
        check_galore_rank(shapes, galore_rank)
    total = sum(tensor_state_bytes(p, optimizer, galore_rank) for p in shapes)
    if optimizer == "adam8bit" and any(p.numel >= ADAM8BIT_MIN_SIZE for p in shapes):
        total += 2 * QMAP_ENTRIES * 4
    return total
