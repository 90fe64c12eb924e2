"""``ModelSpec``: the one description of a decoder-only transformer.

The accounting (``isoflop.spec.accounting``), the performance model (``isoflop.perf``), the PyTorch
module (``isoflop.train.model``) and the Hugging Face export all read this object and nothing else.

Two families are covered by the same fields:

* GPT-2/3 style (Radford et al. 2019; Brown et al. 2020): learned positions, LayerNorm with bias,
  GELU MLP with ``d_ff = 4 d_model``, multi-head attention, biases on every linear layer, tied embeddings.
* Llama style (Touvron et al. 2023; Dubey et al. 2024): RoPE, RMSNorm, SwiGLU, grouped-query /
  multi-query attention (``n_kv_heads < n_heads``), no biases, untied embeddings.

Mixture-of-experts (Fedus et al. 2022; Jiang et al. 2024, Mixtral) replaces each layer's MLP by
``n_experts`` expert MLPs of width ``d_ff``, of which ``top_k`` run per token, plus ``n_shared_experts``
that always run (Dai et al. 2024, DeepSeekMoE), and a bias-free linear router. ``router`` picks Mixtral's
softmax top-k or DeepSeek-V3's sigmoid with normalised top-k; ``capacity_factor`` bounds each expert at
``ceil(capacity_factor * tokens * top_k / n_experts)`` tokens and drops the rest (Fedus et al. 2022, Sec. 2.2),
null means dropless (Gale et al. 2023, MegaBlocks). Fine-grained experts (Krajewski et al. 2024) are more,
narrower experts: a larger ``n_experts`` with a smaller ``d_ff``. Loss coefficients live in the training config.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from isoflop.errors import IsoflopError, quote

_INT_FIELDS = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_ff",
    "vocab_size",
    "max_seq_len",
    "n_experts",
    "top_k",
    "n_shared_experts",
)


class ModelSpec(BaseModel):
    """Shape and architecture of a decoder-only transformer (all sizes are counts, not bytes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("custom", description="Display name (a preset name, or 'custom').")
    d_model: int = Field(..., description="Residual stream width (hidden size).")
    n_layers: int = Field(..., description="Number of transformer blocks.")
    n_heads: int = Field(..., description="Number of query heads.")
    n_kv_heads: int = Field(
        None, description="Key/value heads; fewer than n_heads is GQA, 1 is MQA. Resolved on input; default n_heads."
    )
    head_dim: int = Field(None, description="Per-head width. Resolved on input; default d_model // n_heads.")
    d_ff: int = Field(..., description="MLP (or each expert's) hidden width.")
    vocab_size: int = Field(..., description="Vocabulary size (rows of the embedding table).")
    max_seq_len: int = Field(2048, description="Context length; sizes the learned position table.")
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    mlp: Literal["gelu", "swiglu"] = "swiglu"
    position: Literal["learned", "rope"] = "rope"
    tie_embeddings: bool = False
    bias: bool = Field(False, description="Biases on every linear layer and LayerNorm (GPT-2 style).")
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    n_experts: int = Field(0, description="Routed experts per MoE layer; 0 means a dense MLP.")
    top_k: int = Field(0, description="Routed experts each token runs through.")
    n_shared_experts: int = Field(0, description="Experts every token runs through (DeepSeekMoE).")
    router: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="MoE router: softmax top-k (Mixtral) or sigmoid with normalised top-k (DeepSeek-V3)."
    )
    capacity_factor: float | None = Field(
        None, description="MoE expert capacity as a multiple of the even share; null = dropless (no token dropped)."
    )

    @model_validator(mode="before")
    @classmethod
    def _unset_defaults(cls, data: Any) -> Any:
        """An explicit ``None`` for ``n_kv_heads`` / ``head_dim`` means the default, resolved in ``_check``."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (k in ("n_kv_heads", "head_dim") and v is None)}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for field in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_seq_len"):
            value = getattr(self, field)
            if value is None or value <= 0:
                raise IsoflopError(f"{field} must be a positive integer, got {value}; fix the model spec")
        for field in ("n_kv_heads", "head_dim"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise IsoflopError(f"{field} must be a positive integer, got {value}; fix the model spec")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise IsoflopError(f"norm_eps must be a positive finite number, got {self.norm_eps}")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise IsoflopError(f"rope_theta must be a positive finite number, got {self.rope_theta}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise IsoflopError(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model}; choose a head count that "
                    f"divides the width or set head_dim"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)  # resolved once; the model is frozen
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise IsoflopError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; use a divisor of n_heads "
                f"(1 = MQA)"
            )
        if self.rope and self.head_dim % 2:
            raise IsoflopError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if min(self.n_experts, self.top_k, self.n_shared_experts) < 0:
            raise IsoflopError("n_experts, top_k and n_shared_experts must be >= 0")
        if self.n_experts:
            if not 1 <= self.top_k <= self.n_experts:
                raise IsoflopError(
                    f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}; "
                    f"choose 1 <= top_k <= {self.n_experts} or add experts"
                )
        elif self.top_k or self.n_shared_experts:
            raise IsoflopError("top_k and n_shared_experts need n_experts > 0; set n_experts or drop them")
        cf = self.capacity_factor
        if cf is not None and not (isinstance(cf, (int, float)) and math.isfinite(cf) and cf > 0):
            raise IsoflopError(
                f"capacity_factor must be a positive number, got {cf}; use e.g. 1.25, or null for dropless routing"
            )
        return self

    @field_validator(*_INT_FIELDS, mode="before")
    @classmethod
    def _strict_int(cls, value: Any, info: ValidationInfo) -> Any:
        """A bool or a string is not a count (``num_hidden_layers: true`` is not one layer)."""
        if isinstance(value, (bool, str)):
            raise IsoflopError(f"{info.field_name} must be an integer, got {quote(value, 60)}; fix the model spec")
        return value

    @field_validator("tie_embeddings", "bias", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool):
            raise IsoflopError(f"{info.field_name} must be true or false, got {quote(value, 60)}; fix the model spec")
        return value

    def check_seq_len(self, seq_len: int) -> None:
        """Refuse a sequence longer than a learned-position table (GPT-2 has 1024 rows; RoPE has no table)."""
        if self.position == "learned" and seq_len > self.max_seq_len:
            raise IsoflopError(
                f"{self.name} has learned positions for {self.max_seq_len} tokens, so sequence length {seq_len} "
                f"does not fit; use --seq-len <= {self.max_seq_len} or raise max_seq_len (n_positions)"
            )

    # Derived shape -----------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (= d_model unless head_dim is set)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_dim

    @property
    def rope(self) -> bool:
        return self.position == "rope"

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def gated(self) -> bool:
        """SwiGLU has three weight matrices (gate, up, down); GELU has two."""
        return self.mlp == "swiglu"

    def replace(self, **changes: object) -> ModelSpec:
        """A copy with some fields changed, validated again.

        ``head_dim`` and ``n_kv_heads`` that hold their defaults follow a changed ``d_model`` / ``n_heads``
        (as if they had never been set); values that differ from the defaults are kept.
        """
        data = self.model_dump()
        if {"d_model", "n_heads"} & changes.keys() and self.head_dim * self.n_heads == self.d_model:
            data.pop("head_dim")
        if "n_heads" in changes and self.n_kv_heads == self.n_heads:
            data.pop("n_kv_heads")
        return ModelSpec(**{**data, **changes})
