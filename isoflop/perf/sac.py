"""torchtitan's op-level selective activation checkpointing (``recompute: op``), per its policy.

pytorch/torchtitan ``parallelize_llama.py`` (``_apply_ac_to_transformer_block``, ``selective_ac_option = "op"``)
counts the ``aten.mm`` calls of each transformer block in forward order and saves the output of the odd ones
(1st, 3rd, ...) and of the attention kernel; everything else (the even matmuls, norms, RoPE, the activation
function) is recomputed in the backward. A Llama block's matmuls in forward order are ``wq, wk, wv, wo``, then
``w1, w3, w2`` (SwiGLU, ``w2(silu(w1 x) * w3 x)``) or ``w1, w2`` (ungated MLP). isoflop's trainer fuses Q/K/V
and the SwiGLU gate/up into one matmul each (``fused=True``): ``qkv, out, gate_up, down``, the same policy saving
``qkv`` and ``gate_up``. ``SAVED_KERNELS`` and ``saves_matmul`` are the policy that ``isoflop.train.recompute`` runs.
"""

from __future__ import annotations

from isoflop.spec.model import ModelSpec

# (output width, input width) of each matmul of a block, in forward order; the widths are keys that the
# caller maps to per-GPU sizes: h = d_model, q = query width, kv = one of K / V, f = d_ff
_ATTENTION = (("q", "h"), ("kv", "h"), ("kv", "h"), ("h", "q"))
_GATED_MLP = (("f", "h"), ("f", "h"), ("h", "f"))
_MLP = (("f", "h"), ("h", "f"))
_FUSED_ATTENTION = (("qkv", "h"), ("h", "q"))
_FUSED_GATED_MLP = (("2f", "h"), ("h", "f"))

# aten ops whose outputs the policy always saves: the attention kernels (torchtitan's ``_save_list``)
SAVED_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def saves_matmul(position: int) -> bool:
    """Whether the policy saves the output of a block's ``position``-th matmul (1-based, forward order): odd ones."""
    return position % 2 == 1


def block_matmuls(spec: ModelSpec, fused: bool = False) -> tuple[tuple[str, str], ...]:
    """(output, input) width keys of a dense block's matmuls, in forward order (``fused``: isoflop's trainer)."""
    if fused:
        return _FUSED_ATTENTION + (_FUSED_GATED_MLP if spec.gated else _MLP)
    return _ATTENTION + (_GATED_MLP if spec.gated else _MLP)


def saved_and_recomputed(
    spec: ModelSpec, fused: bool = False
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """The matmuls whose outputs op-level SAC saves (odd positions) and those the backward reruns (the even ones
    but the block's last: non-reentrant checkpointing stops recomputing once the tensors the backward needs are
    rebuilt, and the last matmul's output only feeds the residual add; measured in tests/test_train_recompute.py)."""
    mms = block_matmuls(spec, fused)
    saved = tuple(mm for i, mm in enumerate(mms, 1) if saves_matmul(i))
    return saved, tuple(mm for i, mm in enumerate(mms[:-1], 1) if not saves_matmul(i))


def _widths(spec: ModelSpec) -> dict[str, int]:
    kv = spec.n_kv_heads * spec.head_dim
    return {
        "h": spec.d_model,
        "q": spec.q_dim,
        "kv": kv,
        "f": spec.d_ff,
        "qkv": spec.q_dim + 2 * kv,
        "2f": 2 * spec.d_ff,
    }


def tail_matmul_flops_per_token(spec: ModelSpec) -> float:
    """Forward FLOPs per token of each dense block's last matmul (the MLP's down projection), all layers: what
    PyTorch's non-reentrant checkpointing, ``full`` included, never reruns (see ``saved_and_recomputed``)."""
    widths = _widths(spec)
    out, inp = block_matmuls(spec)[-1]
    return 2.0 * spec.n_layers * widths[out] * widths[inp]


def recomputed_flops_per_token(spec: ModelSpec, fused: bool = False) -> float:
    """Forward FLOPs per token that op-level SAC recomputes, all layers (the even matmuls; MoE blocks, whose
    matmul order depends on the routing, are counted as half of the block's matmul FLOPs)."""
    widths = _widths(spec)
    if spec.is_moe:
        mlp = (spec.top_k + spec.n_shared_experts) * (3 if spec.gated else 2) * spec.d_model * spec.d_ff
        per_layer = 0.5 * (sum(widths[o] * widths[i] for o, i in _ATTENTION) + mlp)
    else:
        per_layer = sum(widths[o] * widths[i] for o, i in saved_and_recomputed(spec, fused)[1])
    return 2.0 * spec.n_layers * per_layer
