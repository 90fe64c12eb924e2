"""torchtitan's op-level selective activation checkpointing (``recompute: op``), per its policy.

pytorch/torchtitan ``parallelize_llama.py`` (``_apply_ac_to_transformer_block``, ``selective_ac_option = "op"``)
counts the ``aten.mm`` calls of each transformer block in forward order and saves the output of the odd ones
(1st, 3rd, ...) and of the attention kernel; everything else (the even matmuls, norms, RoPE, the activation
function) is recomputed in the backward. A Llama block's matmuls in forward order are ``wq, wk, wv, wo``, then
``w1, w3, w2`` (SwiGLU, ``w2(silu(w1 x) * w3 x)``) or ``w1, w2`` (ungated MLP).
"""

from __future__ import annotations

from isoflop.spec.model import ModelSpec

# (output width, input width) of each matmul of a block, in forward order; the widths are keys that the
# caller maps to per-GPU sizes: h = d_model, q = query width, kv = one of K / V, f = d_ff
_ATTENTION = (("q", "h"), ("kv", "h"), ("kv", "h"), ("h", "q"))
_GATED_MLP = (("f", "h"), ("f", "h"), ("h", "f"))
_MLP = (("f", "h"), ("h", "f"))


def block_matmuls(spec: ModelSpec) -> tuple[tuple[str, str], ...]:
    """(output, input) width keys of a dense block's matmuls, in forward order."""
    return _ATTENTION + (_GATED_MLP if spec.gated else _MLP)


def saved_and_recomputed(spec: ModelSpec) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """The matmuls whose outputs op-level SAC saves (odd positions) and those it recomputes (even)."""
    mms = block_matmuls(spec)
    return mms[0::2], mms[1::2]


def recomputed_flops_per_token(spec: ModelSpec) -> float:
    """Forward FLOPs per token that op-level SAC recomputes, all layers (the even matmuls; MoE blocks, whose
    matmul order depends on the routing, are counted as half of the block's matmul FLOPs)."""
    widths = {"h": spec.d_model, "q": spec.q_dim, "kv": spec.n_kv_heads * spec.head_dim, "f": spec.d_ff}
    if spec.is_moe:
        mlp = (spec.top_k + spec.n_shared_experts) * (3 if spec.gated else 2) * spec.d_model * spec.d_ff
        per_layer = 0.5 * (sum(widths[o] * widths[i] for o, i in _ATTENTION) + mlp)
    else:
        per_layer = sum(widths[o] * widths[i] for o, i in saved_and_recomputed(spec)[1])
    return 2.0 * spec.n_layers * per_layer
