"""Memory of one fine-tuning step (full, LoRA, DoRA, QLoRA) for a Hugging Face causal LM, torch-free.

* Trainable parameters. LoRA (Hu et al. 2021, Eq. 3) adds ``B A`` with ``A: r x in`` and ``B: out x r`` to each
  target linear layer: ``r (in + out)`` parameters. DoRA (Liu et al. 2024, Eq. 5) adds a magnitude vector of
  ``out`` entries. A full fine-tune trains every parameter.
* States. Trainable parameters, their gradients and AdamW's two moments are fp32 (4 + 4 + 8 bytes, as peft
  keeps adapters in fp32); the frozen base holds no gradient and no optimizer state. The peak is the larger of
  the loss (all activations, no gradient yet) and the optimizer step (gradients and one temporary of their size).
* Quantised base (Dettmers et al. 2023, QLoRA, Sec. 3): every linear layer of the blocks is stored in 4-bit
  NF4 (0.5 byte per weight) with one absmax per block of 64 weights, fp32 (4/64 byte per weight) or, with
  double quantisation, 8-bit (1/64) plus one fp32 second-level constant per 256 blocks. LLM.int8 (Dettmers et
  al. 2022) stores 1 byte per weight plus one fp32 scale per output row. Embeddings, norms and the output head
  stay in the base dtype.
* Activations (Korthikanti et al. 2022, Sec. 4, counted per tensor autograd saves in Hugging Face's Llama
  block with SDPA attention). A frozen linear layer saves no input (its weight gets no gradient); a LoRA
  layer saves its input for ``A`` (with dropout, the dropped copy and its 1-byte mask) and the ``r`` outputs of
  ``A`` for ``B``; DoRA also keeps the base output
  and the adapter output (``2 out``). Per layer: RMSNorm's input and fp32 ``1/rms`` (its normalised output too
  when its weight trains), RoPE'd Q, K, V, the attention output (which is also ``o_proj``'s input) and the
  log-sum-exp per head, and SwiGLU's gate, SiLU output and up projection (their product too when
  ``down_proj`` trains). The first layer's input needs no gradient unless the embeddings train, so its norm
  saves nothing. The loss keeps the log-softmax of the logits and, in its backward, two gradients of that size
  (the trainer keeps only the loss, not the logits).
  Gradient checkpointing (Chen et al. 2016) keeps each layer's input and rebuilds one layer at a time; the
  rebuilt layer's backward adds two SwiGLU hidden gradients and two residual ones (a LoRA ``down_proj`` has freed
  its saved input by then; a full fine-tune writes that layer's weight gradients while its activations live).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from isoflop.errors import IsoflopError
from isoflop.spec.accounting import count_params
from isoflop.spec.model import ModelSpec

GIB = 2.0**30
Method = Literal["full", "lora", "dora", "qlora"]
Quant = Literal["none", "nf4", "int8"]
METHODS: tuple[str, ...] = ("full", "lora", "dora", "qlora")
_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
NF4_BLOCK = 64
DQ_BLOCK = 256

# peft's default targets (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) per family.
DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}


def family(spec: ModelSpec) -> str:
    """``llama`` (RMSNorm/SwiGLU/RoPE: Llama, Mistral, Qwen2) or ``gpt2`` (LayerNorm/GELU/learned positions)."""
    return "llama" if spec.mlp == "swiglu" else "gpt2"


def linear_shapes(spec: ModelSpec) -> dict[str, list[tuple[int, int]]]:
    """Per block, each linear layer's ``(in, out)`` by module name (GPT-2's ``c_proj`` names two layers)."""
    d, q, kv, ff = spec.d_model, spec.q_dim, spec.kv_dim, spec.d_ff
    if family(spec) == "llama":
        return {
            "q_proj": [(d, q)],
            "k_proj": [(d, kv)],
            "v_proj": [(d, kv)],
            "o_proj": [(q, d)],
            "gate_proj": [(d, ff)],
            "up_proj": [(d, ff)],
            "down_proj": [(ff, d)],
        }
    return {"c_attn": [(d, 3 * d)], "c_proj": [(d, d), (ff, d)], "c_fc": [(d, ff)]}


def check_targets(spec: ModelSpec, targets: tuple[str, ...]) -> tuple[str, ...]:
    shapes = linear_shapes(spec)
    unknown = [t for t in targets if t not in shapes]
    if unknown or not targets:
        raise IsoflopError(
            f"target modules {', '.join(unknown) or '(none)'} do not exist in this {family(spec)} model; "
            f"choose from {', '.join(shapes)}"
        )
    return tuple(dict.fromkeys(targets))


@dataclass(frozen=True)
class FinetuneSetup:
    """What is trained and how: the inputs of the memory model."""

    method: Method
    rank: int = 8
    targets: tuple[str, ...] = ()
    dropout: float = 0.0
    dtype: str = "fp32"  # the frozen base and the activations
    quant: Quant = "none"  # qlora implies nf4
    double_quant: bool = True
    micro_batch: int = 1
    seq_len: int = 512
    grad_checkpointing: bool = False

    @property
    def adapter(self) -> bool:
        return self.method != "full"

    @property
    def quantisation(self) -> str:
        return "nf4" if self.method == "qlora" and self.quant == "none" else self.quant


@dataclass(frozen=True)
class FinetuneMemory:
    """Predicted peak bytes of one step, by part (GiB), and the parameter counts behind them."""

    total_params: int
    trainable_params: int
    quantised_params: int
    base_weights_gib: float
    trainable_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    total_gib: float


def trainable_params(spec: ModelSpec, setup: FinetuneSetup) -> int:
    """LoRA/DoRA adapter parameters over all blocks, or every parameter for a full fine-tune."""
    if setup.method == "full":
        return count_params(spec).total
    if setup.rank <= 0:
        raise IsoflopError(f"LoRA rank must be positive, got {setup.rank}; pass --rank 8 (or any r >= 1)")
    shapes = linear_shapes(spec)
    per_layer = 0
    for name in check_targets(spec, setup.targets):
        for fan_in, fan_out in shapes[name]:
            per_layer += setup.rank * (fan_in + fan_out) + (fan_out if setup.method == "dora" else 0)
    return per_layer * spec.n_layers


def quantised_bytes(n: int, rows: int, quant: str, double_quant: bool) -> float:
    """Bytes of ``n`` weights in ``rows`` output rows, stored as NF4 (with its absmax constants) or int8."""
    if quant == "nf4":
        blocks = -(-n // NF4_BLOCK)
        constants = blocks * 1.0 + 4.0 * -(-blocks // DQ_BLOCK) if double_quant else 4.0 * blocks
        return n / 2.0 + constants
    if quant == "int8":
        return n + 4.0 * rows
    return 0.0


def _layer_params(spec: ModelSpec) -> int:
    return sum(i * o for shapes in linear_shapes(spec).values() for i, o in shapes) + 2 * spec.d_model


def _activation_bytes(spec: ModelSpec, setup: FinetuneSetup) -> float:
    """Peak activation bytes of one micro-batch (Llama family), as described in the module docstring."""
    if family(spec) != "llama":
        raise IsoflopError("the fine-tuning activation model covers the Llama family (Llama, Mistral, Qwen2) only")
    act = _BYTES[setup.dtype]  # QLoRA computes in the dtype too (bnb_4bit_compute_dtype)
    d, q, kv, ff, V = spec.d_model, spec.q_dim, spec.kv_dim, spec.d_ff, spec.vocab_size
    tokens = setup.micro_batch * setup.seq_len
    full = setup.method == "full"
    targets = set(setup.targets) if not full else set(linear_shapes(spec))
    shapes = linear_shapes(spec)

    def adapters(names: set[str]) -> float:  # elements per token a LoRA/DoRA target keeps beyond its input
        if full:
            return 0.0
        out = 0.0
        for name in names & targets:
            fan_out = shapes[name][0][1]
            out += setup.rank + (2 * fan_out if setup.method == "dora" else 0)
            if setup.dropout > 0:  # dropout's output feeds A; its boolean mask is 1 byte per element
                out += (ff if name == "down_proj" else d) * (1.0 + 1.0 / act)
        return out

    def norm(input_grad: bool) -> float:
        return (d + 1 if input_grad else 0) + (d if full else 0)

    qkv_in = d if targets & {"q_proj", "k_proj", "v_proj"} else 0
    mlp_in = d if targets & {"gate_proj", "up_proj"} else 0
    attn = q + 2 * kv + q + spec.n_heads  # Q, K, V after RoPE, output (= o_proj input), log-sum-exp
    mlp = 3 * ff + (ff if "down_proj" in targets else 0)
    rest = qkv_in + adapters({"q_proj", "k_proj", "v_proj", "o_proj"}) + attn + mlp_in
    rest += adapters({"gate_proj", "up_proj", "down_proj"}) + mlp
    inner = rest + norm(True)  # the norm after attention always sees a gradient-carrying input
    middle = norm(True) + inner
    first = norm(full) + inner
    rope = 2 * spec.head_dim * setup.seq_len  # cos and sin, shared by the batch
    head = norm(True) + (d if full else 0)
    loss = 3 * V * tokens
    if setup.grad_checkpointing:
        kept = spec.n_layers * d * tokens
        # the rebuilt layer's backward: SwiGLU's two hidden gradients appear once a LoRA down_proj has released
        # its saved input (a full fine-tune also writes this layer's weight gradients)
        freed = ff if "down_proj" in targets and not full else 0
        rebuild = (middle + 2 * ff + 2 * d - freed) * tokens
        layer_grads = 4.0 * _layer_params(spec) if full else 0.0
        return act * (kept + rope + max(loss + head * tokens, rebuild)) + layer_grads
    layers = (first + (spec.n_layers - 1) * middle) * tokens
    lse_fp32 = (4.0 - act) * spec.n_heads * tokens * spec.n_layers
    return act * (layers + head * tokens + rope + loss) + lse_fp32


def finetune_memory(spec: ModelSpec, setup: FinetuneSetup) -> FinetuneMemory:
    """Peak memory of one fine-tuning step on one device (Adam, no sharding)."""
    if setup.method not in METHODS:
        raise IsoflopError(f"unknown fine-tuning method {setup.method!r}; use one of {', '.join(METHODS)}")
    if setup.dtype not in _BYTES:
        raise IsoflopError(f"unknown dtype {setup.dtype!r}; use one of {', '.join(_BYTES)}")
    total = count_params(spec).total
    trainable = trainable_params(spec, setup)
    quant = setup.quantisation
    if setup.method == "full" and quant != "none":
        raise IsoflopError("a full fine-tune cannot train quantised weights; use --method qlora or lora")
    base_bytes = _BYTES[setup.dtype]
    quantised, weights = 0, 0.0
    if quant != "none":
        for shapes in linear_shapes(spec).values():
            for fan_in, fan_out in shapes:
                quantised += fan_in * fan_out * spec.n_layers
                weights += quantised_bytes(fan_in * fan_out, fan_out, quant, setup.double_quant) * spec.n_layers
    if setup.method == "full":
        weights = 0.0  # the trained weights are counted as trainable, in fp32
        frozen = 0
    else:
        frozen = total - quantised
    weights += frozen * base_bytes
    trainable_b, grads, optim = 4.0 * trainable, 4.0 * trainable, 8.0 * trainable
    acts = _activation_bytes(spec, setup)
    # The activations peak at the loss, before any gradient exists; the gradients peak in the optimizer step,
    # beside one temporary of their size (foreach AdamW's square root of the second moment).
    tot = weights + trainable_b + optim + max(acts, 2 * grads)
    return FinetuneMemory(
        total_params=total,
        trainable_params=trainable,
        quantised_params=quantised,
        base_weights_gib=weights / GIB,
        trainable_gib=trainable_b / GIB,
        gradients_gib=grads / GIB,
        optimizer_gib=optim / GIB,
        activations_gib=acts / GIB,
        total_gib=tot / GIB,
    )
