"""From a parameter count to a concrete Llama-style architecture (RMSNorm, SwiGLU, RoPE, GQA).

Rules (conventions of published models; the aspect-ratio curve is our interpolation between them):

* Depth/width: loss changes by only a few percent over a wide range of aspect ratios ``d_model / n_layers``
  (Kaplan et al. 2020, Sec. 3.1 and Fig. 5); we aim at a ratio that grows with size, from
  16 for tiny models to 128 for large ones (GPT-3 175B: 12288/96 = 128; Llama 3 8B: 4096/32 = 128; GPT-2 small:
  768/12 = 64), ``ratio = 16 * 2^(0.6 (log10 N - 5))`` clipped to [16, 128].
* Widths are multiples of ``multiple`` (128 by default, tensor-core and TP friendly; 16 or 32 allowed for tiny
  models); heads of 128 dimensions from ``d_model >= 2048``, 64 from 256, else ``d_model / 4``, and then, from 16
  heads on, a multiple of 8 heads (a ``head_dim`` given by the caller fixes the heads at ``d_model / head_dim``).
* SwiGLU hidden size ``8/3 d_model`` rounded up to a multiple of 256 (Shazeer 2020; Touvron et al. 2023, Llama:
  11008 for d_model 4096), or of ``multiple`` when that is smaller than 128.
* Grouped-query attention with 8 key/value heads once there are at least 32 query heads and ``d_model >= 2048``
  (Ainslie et al. 2023; Dubey et al. 2024, Llama 3), else multi-head; query and key/value heads divide by ``tp``.

The candidate grid (layers x widths) is scored analytically and the winner is checked against
``isoflop.spec.count_params``; a size the grid cannot reach within ``tolerance`` is an error.
"""

from __future__ import annotations

import math

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.spec import ModelSpec, count_params


def target_aspect(n_params: float) -> float:
    """Aimed-at ``d_model / n_layers`` for a model of ``n_params`` parameters (see module docstring)."""
    return float(np.clip(16.0 * 2.0 ** (0.6 * (math.log10(n_params) - 5.0)), 16.0, 128.0))


def _head_dim(d: np.ndarray, head_dim: int | None) -> np.ndarray:
    if head_dim is not None:
        return np.full_like(d, head_dim)
    return np.where(d >= 2048, 128, np.where(d >= 256, 64, np.maximum(d // 4, 2)))


def _round_up(x: np.ndarray, m: int) -> np.ndarray:
    return (np.ceil(x / m) * m).astype(np.int64)


class NoShapeError(IsoflopError):
    """No width x depth lands near the requested size; ``too_large`` when even the largest shape is smaller."""

    def __init__(self, message: str, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


def shape_for_params(
    n_params: float,
    vocab_size: int = 32000,
    seq_len: int = 2048,
    *,
    multiple: int = 128,
    head_dim: int | None = None,
    tp: int = 1,
    n_kv_heads: int | None = None,
    ffn_multiple: int | None = None,
    count: str = "total",
    tie_embeddings: bool = False,
    aspect: float | None = None,
    max_layers: int = 256,
    tolerance: float = 0.1,
    name: str = "planned",
) -> ModelSpec:
    """A ``ModelSpec`` with about ``n_params`` parameters (``count``: ``total`` or ``non_embedding``).

    ``multiple`` sets the width granularity (use 16 or 32 for tiny models); ``tp`` the tensor-parallel degree the
    heads must divide; ``n_kv_heads`` fixes the key/value heads (default: 8-way GQA from 32 heads on); ``aspect``
    overrides the aimed-at ``d_model / n_layers``. Raises ``IsoflopError`` when no shape is within ``tolerance``.
    """
    if not (math.isfinite(n_params) and n_params > 0):
        raise IsoflopError(f"parameter count must be a positive finite number, got {n_params!r}")
    for value, label in (
        (vocab_size, "vocab_size"),
        (seq_len, "seq_len"),
        (multiple, "multiple"),
        (tp, "tp"),
        (max_layers, "max_layers"),
    ):
        if int(value) != value or value <= 0:
            raise IsoflopError(f"{label} must be a positive integer, got {value!r}")
    if count not in ("total", "non_embedding"):
        raise IsoflopError(f"count must be 'total' or 'non_embedding', got {count!r}")
    if head_dim is not None and (head_dim <= 0 or head_dim % 2):
        raise IsoflopError(f"head_dim must be a positive even integer (RoPE), got {head_dim}")
    ffn_mult = ffn_multiple or (256 if multiple >= 128 else multiple)
    ratio = aspect or target_aspect(n_params)

    widths = np.arange(multiple, 65536 + 1, multiple, dtype=np.int64)
    hd = _head_dim(widths, head_dim)
    heads = widths // hd
    valid = (widths % hd == 0) & (heads >= 1) & (heads % tp == 0) & (hd % 2 == 0)
    if head_dim is None:  # our own head size: from 16 heads on, multiples of 8 (8-way GQA; TP up to 8 divides them)
        valid &= (heads < 16) | (heads % 8 == 0)
    if n_kv_heads is not None:
        kv = np.full_like(heads, n_kv_heads)
        valid &= (heads % n_kv_heads == 0) & (n_kv_heads % tp == 0)
    else:
        kv = np.where((heads >= 32) & (heads % 8 == 0) & (widths >= 2048), 8, heads)
        kv = np.where(kv % tp == 0, kv, heads)
    ffn = _round_up(8.0 * widths / 3.0, ffn_mult)
    attn = 2 * widths * (heads * hd) + 2 * widths * (kv * hd)
    per_layer = attn + 3 * widths * ffn + 2 * widths
    embed = vocab_size * widths
    head = 0 if tie_embeddings else vocab_size * widths
    fixed = embed + widths + head if count == "total" else widths + head
    small = fixed + per_layer <= 3 * n_params  # widths whose one-layer model is not already far too big
    small[0] = True
    widths, hd, heads, kv, ffn, per_layer, fixed, valid = (
        x[small] for x in (widths, hd, heads, kv, ffn, per_layer, fixed, valid)
    )
    layers = np.arange(1, max_layers + 1, dtype=np.int64)
    total = fixed[None, :] + layers[:, None] * per_layer[None, :]  # (layers, widths)
    size_err = np.log(total / n_params)
    aspect_err = np.log(widths[None, :] / layers[:, None] / ratio)
    score = (size_err / 0.015) ** 2 + (aspect_err / 0.4) ** 2  # 1.5% in size weighs like a factor 1.5 in aspect
    score[:, ~valid] = np.inf
    if not np.isfinite(score).any():
        raise IsoflopError(f"no head layout divides tp={tp}; lower --tp or choose head_dim/n_kv_heads that divide it")
    li, wi = np.unravel_index(np.argmin(score), score.shape)
    n_layers, d_model = int(layers[li]), int(widths[wi])
    got = int(total[li, wi])
    if abs(got / n_params - 1.0) > tolerance:
        hint = (
            "use count='non_embedding' with tie_embeddings=True, a smaller vocabulary or a finer multiple"
            if got > n_params
            else "raise max_layers"
        )
        raise NoShapeError(
            f"no architecture has about {n_params:.3g} parameters (closest {got:.3g}, vocab {vocab_size}, width "
            f"multiple {multiple}); {hint}",
            too_large=got < n_params,
        )
    spec = ModelSpec(
        name=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=int(heads[wi]),
        n_kv_heads=int(kv[wi]),
        head_dim=int(hd[wi]) if head_dim is not None else None,
        d_ff=int(ffn[wi]),
        vocab_size=int(vocab_size),
        max_seq_len=int(seq_len),
        norm="rmsnorm",
        mlp="swiglu",
        position="rope",
        tie_embeddings=tie_embeddings,
        bias=False,
    )
    params = count_params(spec)
    exact = params.total if count == "total" else params.non_embedding
    if exact != got:  # the analytic grid must agree with the exact accounting
        raise AssertionError(f"shape grid counted {got} parameters, accounting {exact}")
    return spec
