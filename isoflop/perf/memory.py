"""Memory per GPU for one training step, vectorised over candidate layouts (numpy arrays).

* Model states (Rajbhandari et al. 2020, ZeRO, Sec. 3.1 and 5): mixed-precision Adam holds 2 bytes of
  weights, 2 of gradients and K = 12 of fp32 master weights, momentum and variance per parameter; ZeRO-1
  shards the K bytes over the data-parallel group, ZeRO-2 also the gradients, ZeRO-3 also the weights.
  SGD-momentum keeps 4 (+4 master), Adafactor a factored second moment (Shazeer & Stern 2018, Sec. 3:
  rows + columns per matrix), 8-bit Adam 2 bytes plus block statistics (Dettmers et al. 2022); for dense models
  these two come from the exact per-tensor count of ``isoflop.perf.optimizer_state`` (checked against the real
  optimizers), averaged per parameter.
* Activations per layer (Korthikanti et al. 2022, Sec. 4, Eq. 1-2): ``s b h (34 + 5 a s / h)`` for GPT with
  dropout and unfused attention. isoflop assumes FlashAttention (no ``s^2`` term) and no dropout, and
  counts the tensors autograd saves in a Llama/GPT block: 4 replicated ``h`` vectors per token (both norm
  inputs, the QKV and MLP inputs; divided by ``t`` with sequence parallelism, the QKV and MLP inputs not when
  the framework saves them all-gathered, ``sp_saves_gathered_input``), and per tensor-parallel shard Q, K, V,
  the attention output (one tensor: the kernel's output is the output projection's input), the log-sum-exp
  and the MLP's hidden tensors (GELU 2 ``d_ff``; SwiGLU 4 ``d_ff``): for GPT shapes Korthikanti's 34 less
  their two ``s b h`` dropout masks, 32 ``s b h``, plus the log-sum-exp. Selective recomputation drops the
  attention core's log-sum-exp (the output stays as the projection's input); full recomputation keeps only
  each layer's input, ``2 s b h`` (Korthikanti Eq. 6), plus one layer's full set during its backward (alive
  after the loss buffers are freed, so the peak takes the larger).
  Context parallelism divides the tokens by ``cp``.
* Pipeline parallelism (Narayanan et al. 2021, Sec. 2.2; Korthikanti et al. 2022, Sec. 4.2.3): with 1F1B
  the first stage keeps ``min(p, m)`` microbatches in flight; interleaving multiplies that by
  ``1 + (p - 1) / (p v)``, the last stage one microbatch, ``((v - 1) p + 1) / v`` interleaved. The last stage
  holds the logits; the model reports the larger stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isoflop.perf.constants import PerfConstants
from isoflop.perf.layout import LayoutArrays, stage_layers
from isoflop.perf.optimizer_state import ADAM8BIT_BLOCK, optimizer_state_bytes, param_shapes
from isoflop.perf.sac import saved_and_recomputed
from isoflop.perf.workload import Workload
from isoflop.spec.accounting import _attention_params, _mlp_params, _norm_params
from isoflop.spec.model import ModelSpec

GIB = 2.0**30
MEMORY_KEYS = (
    "weights_gib",
    "gradients_gib",
    "optimizer_gib",
    "activations_gib",
    "logits_gib",
    "comm_buffers_gib",
    "overhead_gib",
    "total_gib",
)


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter and per activation element for a dtype + optimizer recipe."""

    weight: float
    grad: float
    optimizer: float  # master copy + optimizer states
    act: float
    optimizer_rw: float  # bytes the optimizer step reads + writes per parameter (for its HBM time)
    resid: float = 2.0  # bytes per element of the residual stream (norm inputs): fp32 under autocast
    weight_copy: float = 0.0  # bytes per matmul weight of the low-precision casts autocast saves for backward


def precision(spec: ModelSpec, dtype: str, optimizer: str, const: PerfConstants) -> Precision:
    """The bytes of a mixed-precision (bf16/fp16/fp8), autocast (amp) or fp32 recipe with ``optimizer``."""
    mixed = dtype not in ("fp32", "amp")
    master = 4.0 if mixed else 0.0
    if optimizer in ("adafactor", "adam8bit") and not spec.is_moe:
        # the exact per-tensor state of the trainer's optimizers (isoflop.perf.optimizer_state), per parameter
        states = optimizer_state_bytes(param_shapes(spec), optimizer) / sum(p.numel for p in param_shapes(spec))
    else:
        states = {
            "adamw": 8.0,
            "sgd": 4.0,
            "adafactor": 4.0 * (1.0 / spec.d_model + 1.0 / max(spec.d_ff, spec.d_model)),
            "adam8bit": 2.0 + 8.0 / ADAM8BIT_BLOCK,
        }[optimizer]
    weight = 2.0 if mixed else 4.0
    if dtype == "fp8":
        weight += const.fp8_weight_copy_bytes
    grad = const.grad_bytes_mixed if mixed else 4.0
    # the step reads grad, master/weights and states, writes them back, and (mixed) re-casts the weights
    rw = grad + 2.0 * (master + states) + (2.0 * 4.0 if not mixed else 2.0)
    if dtype == "amp":  # torch.autocast: fp32 weights/grads/states, bf16 matmuls, fp32 residual stream
        return Precision(4.0, 4.0, states, const.act_bytes, rw, resid=4.0, weight_copy=2.0)
    act = const.act_bytes if mixed else 4.0
    return Precision(weight, grad, master + states, act, rw, resid=act)


@dataclass(frozen=True)
class StageParams:
    """Parameters per GPU (after tensor/pipeline/expert sharding, before ZeRO) on the first and last stage."""

    dense_first: np.ndarray
    dense_last: np.ndarray
    expert: np.ndarray  # expert parameters per GPU (same on every stage)
    layer_dense: np.ndarray  # one layer's dense parameters per GPU
    layer_expert: np.ndarray


def stage_params(spec: ModelSpec, la: LayoutArrays) -> StageParams:
    """Split the exact parameter count (``isoflop.spec.accounting``) over tp, pp and ep."""
    tp, pp, ep = la.tp.astype(float), la.pp.astype(float), la.ep.astype(float)
    d, V = spec.d_model, spec.vocab_size
    one_mlp = _mlp_params(spec)
    norms = 2 * _norm_params(spec)
    router = d * spec.n_experts if spec.is_moe else 0
    dense_mlp = (spec.n_shared_experts * one_mlp) if spec.is_moe else one_mlp
    layer_dense = (_attention_params(spec) + dense_mlp) / tp + norms + router
    layer_expert = (spec.n_experts * one_mlp) / (tp * ep) if spec.is_moe else np.zeros_like(tp)
    layers = stage_layers(spec.n_layers, pp).astype(float)  # the fullest stage
    embedding = V * d + (spec.max_seq_len * d if spec.position == "learned" else 0)
    final_norm = _norm_params(spec)
    single = pp == 1
    head_first = np.where(single, final_norm + (0 if spec.tie_embeddings else V * d) / tp, 0.0)
    dense_first = layers * layer_dense + embedding / tp + head_first
    dense_last = np.where(single, dense_first, layers * layer_dense + V * d / tp + final_norm)
    return StageParams(dense_first, dense_last, layers * layer_expert, layer_dense, layer_expert)


def layer_activation_bytes(
    spec: ModelSpec,
    la: LayoutArrays,
    seq_len: int,
    act: float,
    resid: float | None = None,
    gathered_input: float = 0.0,
) -> dict[str, np.ndarray]:
    """Bytes autograd keeps for one layer and one microbatch, by recompute policy (``none``,
    ``selective``, ``full`` = kept input only, ``op``) on one GPU. ``resid``: bytes per residual-stream element
    (the two norm inputs; default ``act``). ``gathered_input`` = 1: sequence parallelism saves the all-gathered
    QKV and MLP inputs (torch's ``parallelize_module``), 0: their sequence shards (Megatron-LM)."""
    resid = act if resid is None else resid
    tp = la.tp.astype(float)
    tokens = la.micro_batch * seq_len / la.cp
    h, q, hd = spec.d_model, spec.q_dim, spec.head_dim
    kv_local = np.maximum(spec.n_kv_heads / tp, 1.0) * hd
    rep_div = np.where(la.sequence_parallel, tp, 1.0)
    stat_bytes = (4.0 if spec.norm == "rmsnorm" else 8.0) * 2  # fp32 rstd (and mean) of the two norms
    inputs_div = np.where(la.sequence_parallel & (gathered_input > 0), 1.0, rep_div)
    replicated = (2 * h * resid + stat_bytes) / rep_div + 2 * h * act / inputs_div  # norm inputs + QKV/MLP inputs
    attn_in = (q / tp + 2 * kv_local) * act  # Q, K, V (saved by the attention kernel)
    # the attention output is saved once: the kernel's output is the output projection's input (Korthikanti
    # et al. 2022, Sec. 4.1, count it once, as "linear projection: 2sbh"); the kernel adds its fp32 log-sum-exp
    core_out = (spec.n_heads / tp) * 4.0
    proj_in = (q / tp) * act
    hidden = (4 if spec.gated else 2) * spec.d_ff / tp * act
    if spec.is_moe:
        mlp = spec.top_k * (h * act + hidden) + spec.n_shared_experts * hidden + spec.n_experts * 8.0
    else:
        mlp = hidden
    none = tokens * (replicated + attn_in + core_out + proj_in + mlp)
    selective = none - tokens * core_out
    full = tokens * h * resid / rep_div
    # op-level SAC (torchtitan, isoflop.perf.sac): the layer input, the attention output and the odd matmuls'
    # outputs are saved; the rest (norms, RoPE, the activation function, the even matmuls) is recomputed
    if spec.is_moe:
        op = full + tokens * (core_out + proj_in + 0.5 * (attn_in + proj_in + mlp))
    else:
        width = {"h": h, "q": q / tp, "kv": kv_local, "f": spec.d_ff / tp}
        attention = (q / tp) * act + (spec.n_heads / tp) * 4.0  # the attention kernel's output + fp32 log-sum-exp
        op = full + tokens * (attention + act * sum(width[out] for out, _ in saved_and_recomputed(spec)[0]))
    return {"none": none, "selective": selective, "full": full, "op": op}


def memory_bytes(w: Workload, la: LayoutArrays, const: PerfConstants) -> dict[str, np.ndarray]:
    """Peak bytes per GPU, by part, for the fuller of the first and the last pipeline stage."""
    first, last = memory_bytes_by_stage(w, la, const)
    first_larger = first["total_gib"] >= last["total_gib"]
    return {key: np.where(first_larger, first[key], last[key]) for key in MEMORY_KEYS}


def memory_bytes_by_stage(
    w: Workload, la: LayoutArrays, const: PerfConstants
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Peak bytes per GPU, by part (``MEMORY_KEYS``, in bytes), on the first and on the last pipeline stage."""
    spec, global_batch, seq_len, dtype, optimizer = w.spec, w.global_batch, w.seq_len, w.dtype, w.optimizer
    prec = precision(spec, dtype, optimizer, const)
    sp = stage_params(spec, la)
    shard = (la.dp * la.cp / la.replicate).astype(float)
    shard_e = np.maximum(shard / la.ep, 1.0)
    zero = la.zero

    # ZeRO stage k shards the weights (k >= 3), gradients (>= 2) and optimizer states (>= 1)
    dense_div = {k: np.where(zero >= k, shard, 1.0) for k in (1, 2, 3)}
    expert_part = {k: sp.expert / np.where(zero >= k, shard_e, 1.0) for k in (1, 2, 3)}

    def states(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = prec.weight * (dense / dense_div[3] + expert_part[3])
        g = prec.grad * (dense / dense_div[2] + expert_part[2])
        o = prec.optimizer * (dense / dense_div[1] + expert_part[1])
        return w, g, np.where(la.offload, 0.0, o)

    m = global_batch // (la.dp * la.micro_batch)
    pp, v = la.pp.astype(float), la.interleave.astype(float)
    layers = stage_layers(spec.n_layers, pp).astype(float)  # the fullest stage
    per_layer = layer_activation_bytes(spec, la, seq_len, prec.act, prec.resid, const.sp_saves_gathered_input)
    kept = np.select(
        [la.recompute == 0, la.recompute == 1, la.recompute == 3],
        [per_layer["none"], per_layer["selective"], per_layer["op"]],
        per_layer["full"],
    )
    # full recompute: the layer being recomputed in the backward, plus its MLP's hidden-gradient buffers
    hidden_grad = la.micro_batch * seq_len / la.cp * (2 if spec.gated else 1) * spec.d_ff / la.tp * prec.act
    live = np.where(la.recompute == 2, per_layer["none"] + hidden_grad, 0.0)
    inflight = np.minimum(pp, m) * np.where(la.interleave > 1, 1.0 + (pp - 1) / (pp * v), 1.0)
    act_first = layers * kept * inflight
    # the last rank's warm-up runs (v - 1) p chunks of L / (p v) layers before its first backward (Megatron-LM's
    # interleaved schedule, torch's Interleaved1F1B), so it keeps (v - 1) p + 1 chunks: one microbatch when v = 1
    act_last = layers * kept * ((v - 1.0) * np.minimum(pp, m) + 1.0) / v
    tokens = la.micro_batch * seq_len / la.cp
    rep_div = np.where(la.sequence_parallel, la.tp, 1)
    head_in = (
        spec.d_model * (prec.resid + prec.act) + (4.0 if spec.norm == "rmsnorm" else 8.0)
    ) / rep_div  # final norm + head inputs
    logits = tokens * (spec.vocab_size / la.tp * const.logits_mem_bytes_per_logit + head_in)
    logits_first = np.where(la.pp == 1, logits, 0.0)

    # autocast keeps a bf16 cast of every matmul weight (and bias) for the backward; ZeRO-3 casts per layer
    norms_layer = 2 * _norm_params(spec)
    matmul_layers = layers * (sp.layer_dense - norms_layer + sp.layer_expert)
    head_w = spec.vocab_size * spec.d_model / la.tp
    keep = np.where(zero >= 3, 0.0, prec.weight_copy)
    copies = keep * (matmul_layers + np.where(la.pp == 1, head_w, 0.0))
    copies_last = keep * (matmul_layers + head_w)
    unsharded_layer = sp.layer_dense + sp.layer_expert
    fsdp = const.fsdp_prefetch_layers * unsharded_layer * prec.weight + unsharded_layer * prec.grad
    # FSDP keeps the root unit (embedding, final norm, head) unsharded from its forward to its backward
    # (FSDP1 _post_forward_reshard and FSDP2 fully_shard _lazy_init skip the root's reshard after forward)
    root = sp.dense_first - layers * sp.layer_dense - layers * sp.layer_expert
    fsdp = fsdp + np.where(la.pp == 1, root * prec.weight, 0.0)
    ddp = np.where(la.dp * la.cp > 1, 2 * const.ddp_bucket_mib * 2**20, 0.0)
    p2p = np.where(la.pp > 1, 2 * tokens * spec.d_model * prec.act, 0.0)
    comm = np.where(zero >= 3, fsdp, ddp) + p2p

    parts = []
    for dense, act, lg, cast in (
        (sp.dense_first, act_first, logits_first, copies),
        (sp.dense_last, act_last, logits, copies_last),
    ):
        w, g, o = states(dense)
        act = act + np.maximum(0.0, live - lg)  # the recomputed layer lives after the loss buffers are freed
        act = act + cast
        tensors = w + g + o + act + lg + comm
        overhead = const.fixed_overhead_gib * GIB + const.allocator_fraction * tensors
        parts.append((w, g, o, act, lg, comm, overhead, tensors + overhead))
    n = len(la)
    first, last = ({key: np.broadcast_to(v, (n,)) for key, v in zip(MEMORY_KEYS, p)} for p in parts)
    return first, last
