"""Exact parameter and FLOP accounting for a ``ModelSpec``.

Conventions (the ones ``torch.utils.flop_counter.FlopCounterMode`` uses, so tests compare exactly):

* A matmul of (m x k) by (k x n) costs ``2 m k n`` FLOPs; bias adds, norms, activations, softmax,
  RoPE and the embedding lookup are not counted (they are memory-bound and appear in the step-time
  model as bytes moved instead).
* Backward = 2 x forward: each weight matmul needs one matmul for the input gradient and one for the
  weight gradient (Kaplan et al. 2020, Sec. 2.1); training = 3 x forward.
* Attention scores ``Q K^T`` and the value product ``A V`` cost ``2 s d_head`` FLOPs each, per head,
  per token, for a sequence of length ``s``. By default the full ``s x s`` square is counted, as in
  Narayanan et al. 2021 (Eq. 3), PaLM's MFU (Chowdhery et al. 2022, App. B) and FlopCounterMode.
  ``causal=True`` counts only the lower triangle with its diagonal: ``(s + 1) / 2`` keys per query on
  average, what a FlashAttention kernel actually computes.
* Recomputation (Korthikanti et al. 2022): ``full`` re-runs each layer's forward in the backward pass;
  ``selective`` re-runs only the attention core (scores, softmax, ``A V``). Model FLOPs exclude it
  (MFU), hardware FLOPs include it (HFU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec

Recompute = Literal["none", "selective", "full"]


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts. ``embedding`` is the input lookup tables (token, plus learned positions);
    an untied output head counts as ``lm_head`` inside ``non_embedding``, since it costs FLOPs per token."""

    total: int
    embedding: int
    non_embedding: int
    active: int  # parameters a token passes through (MoE: top_k + shared experts only)
    attention: int  # all layers
    mlp: int  # all layers, all experts
    router: int
    norms: int
    lm_head: int
    per_layer: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _mlp_params(spec: ModelSpec) -> int:
    """One MLP (or one expert): SwiGLU has gate, up and down matrices (Shazeer 2020); GELU has up and down."""
    mats = 3 if spec.gated else 2
    bias = (2 * spec.d_ff + spec.d_model if spec.gated else spec.d_ff + spec.d_model) if spec.bias else 0
    return mats * spec.d_model * spec.d_ff + bias


def _attention_params(spec: ModelSpec) -> int:
    d, q, kv = spec.d_model, spec.q_dim, spec.kv_dim
    weights = d * q + 2 * d * kv + q * d
    return weights + ((q + 2 * kv + d) if spec.bias else 0)


def _norm_params(spec: ModelSpec) -> int:
    return (2 if spec.norm == "layernorm" else 1) * spec.d_model


def count_params(spec: ModelSpec) -> ParamCount:
    d, V, L = spec.d_model, spec.vocab_size, spec.n_layers
    embedding = V * d + (spec.max_seq_len * d if spec.position == "learned" else 0)
    lm_head = 0 if spec.tie_embeddings else V * d
    attn = _attention_params(spec)
    one_mlp = _mlp_params(spec)
    router = d * spec.n_experts if spec.is_moe else 0
    experts_total = (spec.n_experts + spec.n_shared_experts) if spec.is_moe else 1
    experts_active = (spec.top_k + spec.n_shared_experts) if spec.is_moe else 1
    norms_layer = 2 * _norm_params(spec)
    per_layer = attn + experts_total * one_mlp + router + norms_layer
    per_layer_active = attn + experts_active * one_mlp + router + norms_layer
    final_norm = _norm_params(spec)
    total = embedding + L * per_layer + final_norm + lm_head
    active = embedding + L * per_layer_active + final_norm + lm_head
    return ParamCount(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        active=active,
        attention=L * attn,
        mlp=L * experts_total * one_mlp,
        router=L * router,
        norms=L * norms_layer + final_norm,
        lm_head=lm_head,
        per_layer=per_layer,
    )


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per token for one sequence length. ``forward`` is the sum of the four parts below."""

    seq_len: int
    causal: bool
    attention_proj: float  # Q, K, V and output projections, all layers
    attention_scores: float  # Q K^T and A V, all layers
    mlp: float  # MLP or active experts, plus the router, all layers
    logits: float  # output head
    forward: float
    backward: float
    training: float
    six_n: float  # 6 N with N = active parameters (Hoffmann et al. 2022 convention)
    six_n_non_embedding: float  # 6 N with N = active non-embedding parameters (Kaplan et al. 2020)

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def attention_keys_per_query(seq_len: int, causal: bool) -> float:
    """Average keys each query attends to: ``s`` for the full square, ``(s + 1) / 2`` causal."""
    return (seq_len + 1) / 2 if causal else float(seq_len)


def count_flops(spec: ModelSpec, seq_len: int | None = None, causal: bool = False) -> FlopCount:
    """Forward, backward and training FLOPs per token at sequence length ``seq_len`` (default: context)."""
    s = spec.max_seq_len if seq_len is None else seq_len
    if s <= 0:
        raise IsoflopError(f"seq_len must be a positive integer, got {s}")
    spec.check_seq_len(s)
    d, L = spec.d_model, spec.n_layers
    params = count_params(spec)
    attn_proj = 2 * (d * spec.q_dim + 2 * d * spec.kv_dim + spec.q_dim * d)
    attn_core = 2 * 2 * spec.q_dim * attention_keys_per_query(s, causal)
    one_mlp = 2 * (3 if spec.gated else 2) * d * spec.d_ff
    experts = (spec.top_k + spec.n_shared_experts) if spec.is_moe else 1
    mlp = experts * one_mlp + (2 * d * spec.n_experts if spec.is_moe else 0)
    logits = 2 * d * spec.vocab_size
    forward = L * (attn_proj + attn_core + mlp) + logits
    active_non_embedding = params.active - params.embedding
    return FlopCount(
        seq_len=s,
        causal=causal,
        attention_proj=float(L * attn_proj),
        attention_scores=float(L * attn_core),
        mlp=float(L * mlp),
        logits=float(logits),
        forward=float(forward),
        backward=float(2 * forward),
        training=float(3 * forward),
        six_n=float(6 * params.active),
        six_n_non_embedding=float(6 * active_non_embedding),
    )


def recompute_flops_per_token(flops: FlopCount, recompute: Recompute) -> float:
    """Extra forward FLOPs per token spent re-computing activations in the backward pass.

    ``full``: the whole forward of every layer again (not the logits, whose input is kept).
    ``selective``: only the attention core (Korthikanti et al. 2022, Sec. 5).
    """
    if recompute == "none":
        return 0.0
    if recompute == "selective":
        return flops.attention_scores
    if recompute == "full":
        return flops.forward - flops.logits
    raise IsoflopError(f"recompute must be none, selective or full, got {recompute!r}")


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step on ``tokens`` tokens: model FLOPs (for MFU) and hardware FLOPs (HFU)."""

    tokens: int
    model: float
    hardware: float


def flops_per_step(
    spec: ModelSpec, batch_size: int, seq_len: int, recompute: Recompute = "none", causal: bool = False
) -> StepFlops:
    """Training FLOPs for ``batch_size`` sequences of ``seq_len`` tokens."""
    if batch_size <= 0:
        raise IsoflopError(f"batch size must be a positive integer, got {batch_size}")
    flops = count_flops(spec, seq_len, causal=causal)
    tokens = batch_size * seq_len
    model = tokens * flops.training
    return StepFlops(tokens=tokens, model=model, hardware=model + tokens * recompute_flops_per_token(flops, recompute))
