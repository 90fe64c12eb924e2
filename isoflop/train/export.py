"""Export a ``Transformer`` as a Hugging Face checkpoint: ``model.safetensors`` + ``config.json``.

The target is chosen by the spec:

* ``GPT2LMHeadModel`` for GPT-2 specs (LayerNorm, GELU, learned positions, biases, ``n_kv_heads =
  n_heads``, ``head_dim = d_model / n_heads``). GPT-2's ``Conv1D`` stores weights as ``(in, out)``,
  so every projection is transposed; the fused QKV rows are already in GPT-2's ``c_attn`` order.
* ``LlamaForCausalLM`` for Llama specs (RMSNorm, SwiGLU, RoPE, no biases; GQA, explicit ``head_dim``
  and tied embeddings allowed). The fused ``qkv`` and ``gate_up`` matrices are split into
  ``q/k/v_proj`` and ``gate/up_proj``; the Q and K rows of each head are permuted from the trainer's
  interleaved RoPE pairs into Hugging Face's half-split layout.
* ``MixtralForCausalLM`` (Jiang et al. 2024) for Llama-family MoE specs with the softmax top-k router
  (softmax over all experts, top-k, renormalised), no shared experts and dropless routing. Attention,
  norms and embeddings are written as for Llama; each layer's router becomes ``block_sparse_moe.gate``
  and expert ``e`` becomes ``block_sparse_moe.experts.e.w1/w3/w2`` (gate/up/down), the layout of the
  released Mixtral checkpoints (transformers 5.x fuses them on load).
* ``Glm4MoeForCausalLM`` for MoE specs with DeepSeek-V3's router (Liu et al. 2024: sigmoid scores, top-k
  chosen on scores + the balancing bias, weights = the chosen scores normalised to sum 1) and optional shared
  experts. Hugging Face's ``DeepseekV3ForCausalLM`` has the same MoE but multi-head latent attention,
  which no GQA model equals; GLM-4.5's class pairs that MoE with GQA. It is configured to one expert group,
  full-width RoPE, no QK norm, no attention bias, no dense first layers and a routed scaling factor of 1.

Weights are written with ``safetensors`` only (no pickle), atomically (``isoflop.atomic``). A tied
model writes no ``lm_head.weight`` and sets ``tie_word_embeddings: true``. Given the run's tokenizer, the
folder also holds ``tokenizer.json`` and a ``tokenizer_config.json`` for ``PreTrainedTokenizerFast``, so
``AutoTokenizer.from_pretrained`` loads the same tokenizer the model was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from isoflop.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def hf_architecture(spec: ModelSpec) -> str:
    """``gpt2``, ``llama``, ``mixtral`` or ``glm4_moe``: the Hugging Face class that computes exactly this spec's
    function."""
    if spec.norm == "layernorm" and spec.mlp == "gelu" and spec.position == "learned" and spec.bias:
        if spec.is_moe:
            raise IsoflopError("MoE export needs a Llama-family model (rmsnorm/swiglu/rope/no bias); GPT-2 has no MoE")
        if spec.n_kv_heads != spec.n_heads or spec.head_dim * spec.n_heads != spec.d_model:
            raise IsoflopError(
                "GPT-2 export needs n_kv_heads = n_heads and head_dim = d_model / n_heads; drop those fields"
            )
        return "gpt2"
    if spec.norm == "rmsnorm" and spec.mlp == "swiglu" and spec.position == "rope" and not spec.bias:
        if spec.is_moe:
            return _moe_architecture(spec)
        return "llama"
    raise IsoflopError(
        f"no Hugging Face architecture matches norm={spec.norm}, mlp={spec.mlp}, position={spec.position}, "
        f"bias={spec.bias}; export supports the GPT-2 family (layernorm/gelu/learned/bias) and the Llama family "
        "(rmsnorm/swiglu/rope/no bias)"
    )


def _moe_architecture(spec: ModelSpec) -> str:
    """``mixtral`` (softmax router, no shared experts) or ``glm4_moe`` (DeepSeek-V3's sigmoid router, shared experts
    allowed); both route every token (no capacity dropping), as the Hugging Face classes do."""
    supported = (
        "export supports the softmax router without shared experts (Mixtral) and the sigmoid router "
        "(DeepSeek-V3 style, Glm4Moe), both dropless"
    )
    if spec.capacity_factor is not None:
        raise IsoflopError(f"cannot export capacity_factor={spec.capacity_factor} (token dropping); {supported}")
    if spec.router == "sigmoid":
        return "glm4_moe"
    if spec.n_shared_experts:
        raise IsoflopError(
            f"cannot export the softmax router with n_shared_experts={spec.n_shared_experts}; {supported}"
        )
    return "mixtral"


def hf_config(spec: ModelSpec, dtype: str = "float32", eos_id: int = 0) -> dict[str, Any]:
    """The ``config.json`` mapping for ``spec`` (keys of ``GPT2Config``, ``LlamaConfig``, ``MixtralConfig``
    or ``Glm4MoeConfig``);
    ``eos_id`` is the end-of-document token, also used as BOS (GPT-2 style)."""
    arch = hf_architecture(spec)
    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": spec.d_model,
            "n_layer": spec.n_layers,
            "n_head": spec.n_heads,
            "n_inner": spec.d_ff,
            "vocab_size": spec.vocab_size,
            "n_positions": spec.max_seq_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": spec.norm_eps,
            "tie_word_embeddings": spec.tie_embeddings,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "use_cache": True,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
            "torch_dtype": dtype,
        }
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "intermediate_size": spec.d_ff,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
    }
    if spec.head_dim is not None:  # only when set: Hugging Face derives hidden_size / heads otherwise
        config["head_dim"] = spec.head_dim
    if arch == "glm4_moe":
        del config["mlp_bias"]
        config.update(
            architectures=["Glm4MoeForCausalLM"],
            model_type="glm4_moe",
            n_routed_experts=spec.n_experts,
            num_experts_per_tok=spec.top_k,
            n_shared_experts=spec.n_shared_experts,
            moe_intermediate_size=spec.d_ff,
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=1.0,
            first_k_dense_replace=0,
            partial_rotary_factor=1.0,
            use_qk_norm=False,
            num_nextn_predict_layers=0,
            output_router_logits=False,
        )
    if arch == "mixtral":
        del config["attention_bias"], config["mlp_bias"]
        config.update(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            num_local_experts=spec.n_experts,
            num_experts_per_tok=spec.top_k,
            sliding_window=None,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
    return config


def _interleaved_to_half_split(weight: Tensor, n_heads: int) -> Tensor:
    """Reorder each head's output rows from ``(0, 1, 2, 3, ...)`` pairs to ``(0, 2, ..., 1, 3, ...)``."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _llama_attention(state: dict[str, Tensor], spec: ModelSpec, i: int) -> dict[str, Tensor]:
    """Layer ``i``'s attention and norms under Hugging Face's Llama names (shared by Llama and Mixtral): the
    fused ``qkv`` split, and Q/K rows permuted into the half-split RoPE layout."""
    p, h = f"layers.{i}.", f"model.layers.{i}."
    wq, wk, wv = state[p + "attn.qkv.weight"].split([spec.q_dim, spec.kv_dim, spec.kv_dim], dim=0)
    return {
        h + "self_attn.q_proj.weight": _interleaved_to_half_split(wq, spec.n_heads),
        h + "self_attn.k_proj.weight": _interleaved_to_half_split(wk, spec.n_kv_heads),
        h + "self_attn.v_proj.weight": wv,
        h + "self_attn.o_proj.weight": state[p + "attn.out.weight"],
        h + "input_layernorm.weight": state[p + "attn_norm.weight"],
        h + "post_attention_layernorm.weight": state[p + "mlp_norm.weight"],
    }


def _mixtral_moe(state: dict[str, Tensor], spec: ModelSpec, i: int) -> dict[str, Tensor]:
    """Layer ``i``'s router and experts under the released Mixtral names: expert ``e``'s fused ``gate_up`` rows
    split into ``w1`` (gate) and ``w3`` (up), its ``down`` is ``w2``."""
    p, h = f"layers.{i}.mlp.", f"model.layers.{i}.block_sparse_moe."
    out = {h + "gate.weight": state[p + "router.weight"]}
    gate, up = state[p + "experts.gate_up"].split([spec.d_ff, spec.d_ff], dim=1)
    down = state[p + "experts.down"]
    for e in range(spec.n_experts):
        out[f"{h}experts.{e}.w1.weight"] = gate[e]
        out[f"{h}experts.{e}.w3.weight"] = up[e]
        out[f"{h}experts.{e}.w2.weight"] = down[e]
    return out


def _glm4_moe(state: dict[str, Tensor], spec: ModelSpec, i: int) -> dict[str, Tensor]:
    """Layer ``i``'s router (its selection bias is ``e_score_correction_bias``), routed experts and shared experts
    (one MLP of width ``n_shared_experts * d_ff``; an empty one when there are none) under Glm4Moe's names."""
    p, h = f"layers.{i}.mlp.", f"model.layers.{i}.mlp."
    out = {h + "gate.weight": state[p + "router.weight"], h + "gate.e_score_correction_bias": state[p + "expert_bias"]}
    gate, up = state[p + "experts.gate_up"].split([spec.d_ff, spec.d_ff], dim=1)
    down = state[p + "experts.down"]
    for e in range(spec.n_experts):
        out[f"{h}experts.{e}.gate_proj.weight"] = gate[e]
        out[f"{h}experts.{e}.up_proj.weight"] = up[e]
        out[f"{h}experts.{e}.down_proj.weight"] = down[e]
    width = spec.n_shared_experts * spec.d_ff
    if width:
        shared_gate, shared_up = state[p + "shared.gate_up.weight"].split([width, width], dim=0)
        shared_down = state[p + "shared.down.weight"]
    else:
        shared_gate = shared_up = down.new_zeros(0, spec.d_model)
        shared_down = down.new_zeros(spec.d_model, 0)
    out[h + "shared_experts.gate_proj.weight"] = shared_gate
    out[h + "shared_experts.up_proj.weight"] = shared_up
    out[h + "shared_experts.down_proj.weight"] = shared_down
    return out


def hf_state_dict(state: dict[str, Tensor], spec: ModelSpec) -> dict[str, Tensor]:
    """Rename (and split/transpose) an isoflop state dict into Hugging Face tensor names."""
    arch = hf_architecture(spec)
    out: dict[str, Tensor] = {}
    for i in range(spec.n_layers):
        p = f"layers.{i}."
        if arch == "gpt2":
            h = f"transformer.h.{i}."
            for ours, theirs, transpose in [
                ("attn.qkv", "attn.c_attn", True),
                ("attn.out", "attn.c_proj", True),
                ("mlp.up", "mlp.c_fc", True),
                ("mlp.down", "mlp.c_proj", True),
                ("attn_norm", "ln_1", False),
                ("mlp_norm", "ln_2", False),
            ]:
                weight = state[p + ours + ".weight"]
                out[h + theirs + ".weight"] = weight.t() if transpose else weight
                out[h + theirs + ".bias"] = state[p + ours + ".bias"]
            continue
        out.update(_llama_attention(state, spec, i))
        if arch == "mixtral":
            out.update(_mixtral_moe(state, spec, i))
        elif arch == "glm4_moe":
            out.update(_glm4_moe(state, spec, i))
        else:
            h = f"model.layers.{i}."
            gate, up = state[p + "mlp.gate_up.weight"].split([spec.d_ff, spec.d_ff], dim=0)
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
            out[h + "mlp.down_proj.weight"] = state[p + "mlp.down.weight"]
    if arch == "gpt2":
        out["transformer.wte.weight"] = state["embed.weight"]
        out["transformer.wpe.weight"] = state["pos_embed.weight"]
        out["transformer.ln_f.weight"] = state["norm.weight"]
        out["transformer.ln_f.bias"] = state["norm.bias"]
    else:
        out["model.embed_tokens.weight"] = state["embed.weight"]
        out["model.norm.weight"] = state["norm.weight"]
    if not spec.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().contiguous() for k, v in out.items()}


def export_hf(
    model: torch.nn.Module,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    tokenizer: Tokenizer | None = None,
    eos_id: int | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (and the tokenizer's files when
    ``tokenizer`` is given, with ``eos_id`` its end-of-document token); returns ``out_dir``.

    ``model`` is an ``isoflop.train.model.Transformer`` (unwrapped: not DDP/FSDP/compiled wrappers;
    for FSDP2 gather a full state dict first and pass a module holding it). ``dtype`` casts the
    exported weights (default: as stored)."""
    from safetensors.torch import save

    spec: ModelSpec = model.spec
    tensors = hf_state_dict(model.state_dict(), spec)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    stored = next(iter(tensors.values())).dtype
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    payload = save({k: v.cpu() for k, v in tensors.items()}, metadata={"format": "pt"})
    atomic_write_bytes(target / "model.safetensors", payload)
    atomic_write_json(target / "config.json", hf_config(spec, str(stored).removeprefix("torch."), eos_id or 0))
    if tokenizer is not None:
        export_tokenizer(tokenizer, target, spec.max_seq_len, eos_id)
    return target


def export_tokenizer(tokenizer: Tokenizer, out_dir: Path, max_len: int, eos_id: int | None) -> None:
    """``tokenizer.json`` and the ``tokenizer_config.json`` with which ``transformers.AutoTokenizer`` builds a
    ``PreTrainedTokenizerFast`` around it (end-of-document token as EOS and BOS, as in GPT-2)."""
    atomic_write_text(out_dir / "tokenizer.json", tokenizer.to_str())
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    if eos_id is not None:
        eos = tokenizer.id_to_token(eos_id)
        config.update(eos_token=eos, bos_token=eos)
    atomic_write_json(out_dir / "tokenizer_config.json", config)
