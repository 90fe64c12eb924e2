"""A decoder-only transformer built from a ``ModelSpec`` and nothing else.

One module covers both families the spec describes:

* GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm, GELU MLP (tanh approximation,
  "gelu_new" as in the released GPT-2), biases, tied embeddings.
* Llama (Touvron et al. 2023): RoPE (Su et al. 2021) on interleaved dimension pairs, as in the
  paper and Meta's code (the Hugging Face export permutes rows into its half-split layout), RMSNorm
  (Zhang & Sennrich 2019), SwiGLU (Shazeer 2020), grouped-query attention (Ainslie et al. 2023;
  ``n_kv_heads = 1`` is MQA, Shazeer 2019) through SDPA's ``enable_gqa`` (no copies of K and V).

Layout choices made for speed, none of which changes the function computed:

* Q, K and V come from one fused matmul (``attn.qkv``); SwiGLU's gate and up projections from one
  (``mlp.gate_up``, gate rows first). The export splits them back into Hugging Face's names.
* Attention is ``F.scaled_dot_product_attention(..., is_causal=True)``: no mask tensor is built, and
  the fused kernel (FlashAttention on GPU, the flash-style CPU kernel otherwise) is picked by PyTorch.
* On CPU, half-precision attention may take SDPA's math backend, and RMSNorm and SwiGLU have hand-written
  backward passes; these kernels live in ``isoflop.train.kernels``.
* RoPE tables are computed once (in float64, stored as float32 buffers) and sliced per step; the
  rotation is one complex multiply per tensor, forward and backward.
* In fp32 on CPU the output head and the cross-entropy are fused and chunked
  (``isoflop.train.loss``): the full ``(tokens, vocab)`` logits are never materialised.
* A tied output head has no module of its own: the logits use the token embedding matrix
  directly, so there is exactly one tensor (no re-tying needed after ``to_empty`` or sharding).

Initialisation (GPT-2 / nanoGPT scheme): every linear and embedding weight ~ N(0, 0.02); the two
residual output projections of each block (``attn.out`` and ``mlp.down``) ~ N(0, 0.02 / sqrt(2 L))
(Radford et al. 2019, Sec. 2.3); biases 0; norm weights 1. ``init_weights()`` is separate from
construction, so a model built on the meta device, moved with ``to_empty`` and then initialised is
the same as one built directly (same seed, same values).

Mixture-of-experts specs put an ``isoflop.train.moe.MoE`` at ``layers.{i}.mlp``; in training the forward
with targets adds ``moe_coefs = (aux, z)`` times the layers' mean balancing and z losses to the cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec
from isoflop.train.config import AUX_LOSS_COEF, Z_LOSS_COEF
from isoflop.train.kernels import RMSNormCPU, SwiGLUFn, eager_cpu_training, uses_math_attention
from isoflop.train.loss import linear_cross_entropy
from isoflop.train.moe import MoE, moe_layers, moe_loss

INIT_STD = 0.02


def _norm(spec: ModelSpec) -> nn.Module:
    """LayerNorm always carries a bias (2 d parameters, as ``count_params`` counts it); RMSNorm has d."""
    if spec.norm == "layernorm":
        return nn.LayerNorm(spec.d_model, eps=spec.norm_eps)
    return RMSNorm(spec.d_model, eps=spec.norm_eps)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019, Eq. 4): ``x / sqrt(mean(x^2) + eps) * g``. ``F.rms_norm`` off
    CPU (fused kernels, and what ``torch.compile`` expects); a hand-written backward on CPU."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if eager_cpu_training(x) and x.dtype == self.weight.dtype:
            return RMSNormCPU.apply(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """RoPE angles (Su et al. 2021, Eq. 34) as ``cos`` and ``sin`` tables of shape ``(max_seq_len, head_dim / 2)``.

    Frequency ``i`` is ``theta^(-2i/d)``; it rotates the pair of dimensions ``(2i, 2i + 1)`` of each head
    (the paper's and Meta's interleaved layout; the export permutes rows into Hugging Face's half-split
    layout). Computed in float64, stored as float32.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim // 2, dtype=torch.float64, device=device) * 2 / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate ``x`` ``(B, T, heads, D)`` by complex ``freqs`` ``(T, 1, D/2)``: one complex multiply
    forward and one backward (instead of mul/roll/mul/add and their gradients)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * freqs).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with fused QKV, optional RoPE and GQA/MQA. ``recompute_core``: in training the
    attention core is recomputed in the backward (``selective``, Korthikanti et al. 2022; isoflop.train.recompute)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.recompute_core = False
        self.n_heads, self.n_kv, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.qkv = nn.Linear(spec.d_model, spec.q_dim + 2 * spec.kv_dim, bias=spec.bias)
        self.out = nn.Linear(spec.q_dim, spec.d_model, bias=spec.bias)

    def forward(self, x: Tensor, rope: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        q, k, v = self.qkv(x).view(B, T, H + 2 * K, D).split([H, K, K], dim=2)
        if rope is not None:
            # V gets its own buffer: as a view it would keep the fused QKV output alive beside the rotated Q and K
            q, k, v = apply_rope(q, rope), apply_rope(k, rope), v.contiguous()
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.recompute_core and self.training and torch.is_grad_enabled():
            y = checkpoint(_attention_core, q, k, v, use_reentrant=False)
        else:
            y = _attention_core(q, k, v)
        return self.out(y.transpose(1, 2).reshape(B, T, H * D))


def _attention_core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal ``softmax(Q K^T / sqrt(d)) V`` of ``(B, heads, T, D)`` tensors. GQA/MQA: each group of query heads
    shares one key/value head, without copying K and V."""
    gqa = k.shape[1] != q.shape[1]
    if uses_math_attention(q):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020, Eq. 6) with a fused gate/up matmul, or GPT-2's GELU MLP."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gated = spec.gated
        self.d_ff = spec.d_ff
        if self.gated:
            self.gate_up = nn.Linear(spec.d_model, 2 * spec.d_ff, bias=spec.bias)
        else:
            self.up = nn.Linear(spec.d_model, spec.d_ff, bias=spec.bias)
        self.down = nn.Linear(spec.d_ff, spec.d_model, bias=spec.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = self.gate_up(x)
            if eager_cpu_training(h):
                return self.down(SwiGLUFn.apply(h))
            gate, up = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.attn_norm = _norm(spec)
        self.attn = Attention(spec)
        self.mlp_norm = _norm(spec)
        self.mlp = MoE(spec) if spec.is_moe else MLP(spec)

    def forward(self, x: Tensor, rope: Tensor | None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder-only transformer for ``spec``. ``forward(idx)`` gives logits ``(B, T, V)``;
    ``forward(idx, targets)`` gives the mean next-token cross-entropy (targets ``-100`` are ignored)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.moe_coefs = (AUX_LOSS_COEF, Z_LOSS_COEF)  # MoE balancing and z-loss coefficients (train config moe)
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.pos_embed = nn.Embedding(spec.max_seq_len, spec.d_model) if spec.position == "learned" else None
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.norm = _norm(spec)
        self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if spec.rope:
            cos, sin = rope_tables(spec.head_dim, spec.max_seq_len, spec.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @property
    def output_weight(self) -> Tensor:
        """The ``(V, d)`` output matrix: the token embedding when tied, else ``lm_head.weight``."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """(Re)initialise every parameter and the RoPE buffers in place (GPT-2 scheme, module docstring).

        Call after ``to_empty()`` for a model built on the meta device."""
        residual_std = INIT_STD / math.sqrt(2 * self.spec.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("attn.out", "mlp.down", "mlp.shared.down")) else INIT_STD
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, MoE):
                module.init_weights(INIT_STD, residual_std, generator)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, INIT_STD, generator=generator)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.spec.rope:
            cos, sin = rope_tables(self.spec.head_dim, self.spec.max_seq_len, self.spec.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def _rope(self, seq_len: int) -> Tensor | None:
        """Complex ``cos + i sin`` of shape ``(T, 1, D/2)``, built once per step from the tables."""
        if not self.spec.rope:
            return None
        return torch.complex(self.rope_cos[:seq_len, None].float(), self.rope_sin[:seq_len, None].float())

    def hidden_states(self, idx: Tensor) -> Tensor:
        """The final-norm output ``(B, T, d)``, before the output head."""
        T = idx.shape[1]
        if self.spec.max_seq_len < T:
            raise IsoflopError(f"sequence length {T} exceeds max_seq_len={self.spec.max_seq_len}; shorten seq_len")
        x = self.embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:T]
        rope = self._rope(T)
        for block in self.layers:
            x = block(x, rope)
        return self.norm(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        h = self.hidden_states(idx)
        if targets is None:
            return F.linear(h, self.output_weight)
        # Softmax in float32 whatever the autocast dtype; fused and chunked on CPU (isoflop.train.loss).
        loss = linear_cross_entropy(h.flatten(0, 1), self.output_weight, targets.reshape(-1))
        if self.training and self.spec.is_moe:
            extra = moe_loss(moe_layers(self), *self.moe_coefs)
            if extra is not None:
                loss = loss + extra
        return loss


def build_model(spec: ModelSpec, device: str | torch.device = "cpu", seed: int | None = None) -> Transformer:
    """Build on the meta device, allocate on ``device`` with ``to_empty``, then ``init_weights`` (seeded)."""
    with torch.device("meta"):
        model = Transformer(spec)
    model.to_empty(device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    model.init_weights(generator)
    return model


def compile_blocks(model: Transformer, backend: str = "inductor", mode: str | None = None) -> Transformer:
    """``torch.compile`` each block in place (per-block compile, as torchtitan does: short compiles,
    FSDP2-friendly). Returns the model; raises ``IsoflopError`` when torch.compile is unavailable."""
    if not hasattr(torch, "compile"):
        raise IsoflopError("torch.compile is not available in this PyTorch; run without compile")
    for block in model.layers:
        block.compile(backend=backend, mode=mode, fullgraph=True)  # in place: state_dict keys unchanged
    return model
