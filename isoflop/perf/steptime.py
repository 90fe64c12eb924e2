"""Step time of one optimizer step, vectorised over candidate layouts (numpy arrays).

Model (all times per GPU; the slowest pipeline stage, i.e. the one holding the logits, sets the pace):

* GEMMs: ``2 M N K`` FLOPs at ``peak * eff`` with ``eff = gemm_eff_max * d / (d + gemm_half_dim)``,
  ``d = min(M, N, K)``, never faster than streaming the operands from HBM (roofline, Williams et al. 2009).
  Backward = two GEMMs of the same size per forward GEMM (Kaplan et al. 2020, Sec. 2.1).
* Attention: FlashAttention (Dao 2023) computes only the causal triangle, ``(s+1)/2`` keys per query;
  forward at ``flash_fwd_eff``, backward ``flash_bwd_flop_ratio`` x the FLOPs at ``flash_bwd_eff``, both
  scaled by ``s / (s + flash_half_seq)``. Frameworks without it (``flash_attention: 0``) run batched GEMMs
  over the full square and stream the materialised scores through HBM (``_attention``).
* Memory-bound operations (norms, residual adds, RoPE, activation function, cross-entropy, optimizer step):
  bytes moved / (HBM bandwidth * ``hbm_eff``).
* Communication (ring collectives, Thakur et al. 2005: all-reduce moves ``2 (g-1)/g`` of the message per GPU,
  all-gather / reduce-scatter ``(g-1)/g``); a group spanning nodes is hierarchical: an intra-node phase on
  NVLink, then ``1/k`` of the data per GPU over its own NIC (``k`` group members per node). Overlap:
  tensor parallel (2 all-reduces forward + 2 backward per layer, Shoeybi et al. 2019; the same volume as
  all-gather + reduce-scatter under sequence parallelism, Korthikanti et al. 2022) is exposed
  x ``(1 - tp_overlap)``; data-parallel gradient reduction hides behind the last microbatch's backward
  (``dp_overlap``); ZeRO-3/FSDP gathers and reduce-scatters every microbatch behind its compute
  (``fsdp_overlap``); ring attention (context parallel) hides behind the attention kernel; expert-parallel
  all-to-all (4 per MoE layer, ``isoflop.perf.moe``) hides behind ``ep_overlap`` of the layer's compute;
  pipeline point-to-point sends are exposed.
* Pipeline bubble (Narayanan et al. 2021, Sec. 2.2): ``(p - 1) / (v m)`` of the ideal ``m`` microbatch times,
  the tick being the slowest stage's (``_slowest_stage``: uneven layer counts, the head on the last stage).
* Small models are launch-bound: a microbatch never takes less than its kernel count x ``kernel_launch_s``
  (eager PyTorch); the excess is reported as overhead, with the fixed ``step_overhead_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isoflop.hardware import GPU
from isoflop.perf.constants import PerfConstants
from isoflop.perf.layout import LayoutArrays, peak_dtype
from isoflop.perf.memory import Precision, precision, stage_params
from isoflop.perf.moe import exposed_expert_comm_s
from isoflop.perf.sac import saved_and_recomputed
from isoflop.perf.workload import Workload
from isoflop.spec.model import ModelSpec

STEP_KEYS = (
    "compute_s",
    "gemm_s",
    "attention_s",
    "memory_bound_s",
    "recompute_s",
    "exposed_comm_s",
    "comm_tp_s",
    "comm_cp_s",
    "comm_ep_s",
    "comm_pp_s",
    "comm_dp_s",
    "bubble_s",
    "optimizer_s",
    "overhead_s",
)


def _gemm(M, N, K, count, peak: float, act: float, gpu: GPU, c: PerfConstants) -> np.ndarray:
    """Seconds for ``count`` GEMMs of (M x K)(K x N)."""
    d = np.minimum(np.minimum(M, N), K)
    eff = c.gemm_eff_max * d / (d + c.gemm_half_dim)
    compute = 2.0 * M * N * K / (peak * eff)
    stream = act * (M * K + K * N + M * N) / (gpu.hbm_gbps * 1e9 * c.hbm_eff)
    return count * np.maximum(compute, stream)


def _attention(
    spec: ModelSpec,
    la: LayoutArrays,
    T,
    seq_len: int,
    tp,
    peak: float,
    attn_peak: float,
    act: float,
    gpu: GPU,
    c: PerfConstants,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward seconds of one layer's attention core for one microbatch.

    ``flash_attention`` = 1: FlashAttention-2 (Dao 2023), the causal triangle only, at ``flash_*_eff``.
    0: the unfused kernels of Megatron-LM 2021 (Shoeybi et al. 2019): Q K^T and A V as batched GEMMs over the
    full ``s x s`` square, the scores materialised in HBM (``attn_score_bytes`` read+written per score
    element over forward and backward: scale-mask-softmax, dropout and their gradients).
    """
    q, hd = spec.q_dim, spec.head_dim
    seq_eff = seq_len / (seq_len + c.flash_half_seq)
    a_flops = 4.0 * T * (seq_len + 1) / 2.0 * q / tp
    flash_fwd = a_flops / (attn_peak * c.flash_fwd_eff * seq_eff)
    flash_bwd = c.flash_bwd_flop_ratio * a_flops / (attn_peak * c.flash_bwd_eff * seq_eff)
    if c.flash_attention >= 1.0:
        return flash_fwd, flash_bwd
    local = np.maximum(spec.n_heads / tp, 1.0) * T / seq_len  # (sequence, head) pairs per GPU
    s = float(seq_len)
    gemms = _gemm(s, s, hd, local, peak, act, gpu, c) + _gemm(s, hd, s, local, peak, act, gpu, c)
    scores = local * s * s * c.attn_score_bytes / (gpu.hbm_gbps * 1e9 * c.hbm_eff)
    fwd_share = 13.0 / 30.0  # of the score traffic: softmax + dropout forward (13 B of ~30 B per element)
    return gemms + fwd_share * scores, 2.0 * gemms + (1.0 - fwd_share) * scores


def _collective(nbytes, group, local, factor: float, gpu: GPU, c: PerfConstants) -> np.ndarray:
    """Ring collective over ``group`` GPUs with ``local`` of them per node (factor 2 all-reduce, 1 AG/RS/a2a)."""
    group = np.asarray(group, dtype=float)
    local = np.clip(np.asarray(local, dtype=float), 1.0, group)
    intra = gpu.intra_node_gbps * 1e9 * c.intra_node_eff
    inter = gpu.inter_node_gbps * 1e9 * c.inter_node_eff
    nodes = group / local
    t_intra = (local - 1) / local * nbytes / intra
    t_inter = (nodes - 1) / np.maximum(nodes, 1.0) * nbytes / local / inter
    return np.where(group > 1, factor * (t_intra + t_inter), 0.0)


def _op_sac_gemms(spec: ModelSpec, T, tp, kv_local, g_fwd, gemm) -> np.ndarray:
    """Seconds of the matmuls torchtitan's op-level SAC recomputes (``isoflop.perf.sac``: the even matmuls of
    each block; half the block's matmuls for MoE)."""
    if spec.is_moe:
        return 0.5 * g_fwd
    width = {"h": float(spec.d_model), "q": spec.q_dim / tp, "kv": kv_local, "f": spec.d_ff / tp}
    return sum(gemm(T, width[out], width[inp]) for out, inp in saved_and_recomputed(spec)[1])


def _slowest_stage(n_layers: int, pp: np.ndarray, layer_t, head_t, rebalance: float) -> tuple[np.ndarray, np.ndarray]:
    """Layers on the slowest pipeline stage and whether it holds the head (1.0) or not (0.0).

    The last stage holds ``L_last`` layers plus the output head and loss; the other ``pp - 1`` stages share
    the rest as evenly as layers allow (Megatron-LM: equal stages, the head on the last; uneven counts
    as in BLOOM and Llama 3). ``rebalance`` > 0 lets the partitioner move up to 3 layers off the last
    stage when the head costs more than a layer (Llama 3 405B: 7 layers on the first and last of 16
    stages, 8 on the others; Dubey et al. 2024, Sec. 3.3.2). The slowest stage sets the pipeline's tick.
    """
    pp = np.asarray(pp, dtype=float)
    k = np.ceil(n_layers / pp)
    best_t = np.full(np.broadcast(pp, layer_t).shape, np.inf)
    best_layers = np.zeros_like(best_t)
    best_head = np.zeros_like(best_t)
    for j in range(4 if rebalance > 0 else 1):
        last = np.where(pp > 1, np.maximum(k - j, 0.0), float(n_layers))
        others = np.where(pp > 1, np.ceil((n_layers - last) / np.maximum(pp - 1.0, 1.0)), 0.0)
        t_last = last * layer_t + head_t
        t_others = others * layer_t
        t = np.maximum(t_last, t_others)
        better = t < best_t
        last_slowest = t_last >= t_others
        best_layers = np.where(better, np.where(last_slowest, last, others), best_layers)
        best_head = np.where(better, np.where(last_slowest, 1.0, 0.0), best_head)
        best_t = np.where(better, t, best_t)
    return best_layers, best_head


# Structural numbers of a transformer step (not tunable; the tunable ones are in constants.yaml):
FWD_BWD_GEMMS = 3.0  # forward + backward GEMM work per forward GEMM: backward = 2 GEMMs (Kaplan et al. 2020, 2.1)
BWD_GEMMS = 2.0  # of them the backward's (what DP gradient reduction can hide behind: 2/3 of a microbatch)
TP_COLLECTIVES = 4.0  # per layer: 2 all-reduces forward + 2 backward (Shoeybi et al. 2019, Fig. 4)
TP_COLLECTIVES_FULL_RECOMPUTE = 2.0  # the recomputed forward repeats its 2 (Korthikanti et al. 2022, Sec. 5)
CP_KV_PASSES = 3.0  # ring attention sends K/V once forward and K/V + their gradients backward (Liu et al. 2023)
PP_SENDS = 2.0  # per microbatch and virtual stage: activation forward, gradient backward (Narayanan et al. 2021)


@dataclass(frozen=True)
class _Step:
    """What every term of one ``step_time`` call shares: the workload, rates, and per-layout arrays."""

    spec: ModelSpec
    gpu: GPU
    la: LayoutArrays
    c: PerfConstants
    prec: Precision
    seq_len: int
    peak: float
    attn_peak: float
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    v: np.ndarray
    m: np.ndarray
    T: np.ndarray  # tokens per GPU per microbatch
    kv_local: np.ndarray
    rep_div: np.ndarray  # sequence parallelism divides the replicated activations by tp
    hbm: float  # achievable HBM bandwidth, bytes/s

    def gemm(self, M, N, K, n=1.0) -> np.ndarray:
        return _gemm(M, N, K, n, self.peak, self.prec.act, self.gpu, self.c)


def _layer_gemms(s: _Step) -> np.ndarray:
    """Forward seconds of one layer's GEMMs for one microbatch (QKV, output projection, MLP or experts)."""
    spec, tp, T, h, q, f = s.spec, s.tp, s.T, s.spec.d_model, s.spec.q_dim, s.spec.d_ff
    mats = 2.0 if spec.gated else 1.0
    g_fwd = s.gemm(T, q / tp + 2 * s.kv_local, h) + s.gemm(T, h, q / tp)
    if spec.is_moe:
        local_experts = spec.n_experts / s.ep
        Te = T * s.ep * spec.top_k / spec.n_experts
        g_fwd = g_fwd + s.gemm(Te, mats * f / tp, h, local_experts) + s.gemm(Te, h, f / tp, local_experts)
        g_fwd = g_fwd + s.gemm(T, spec.n_experts, h)
        if spec.n_shared_experts:
            n = spec.n_shared_experts
            g_fwd = g_fwd + s.gemm(T, mats * f / tp, h, n) + s.gemm(T, h, f / tp, n)
        return g_fwd
    return g_fwd + s.gemm(T, mats * f / tp, h) + s.gemm(T, h, f / tp)


def _layer_memory_bound(s: _Step) -> np.ndarray:
    """Forward seconds of one layer's memory-bound kernels for one microbatch: elements read + written by the
    fused norms and residual adds (10 h), RoPE (2 (q + kv)) and the activation function (3 f gated, 2 f),
    times ``elementwise_passes``."""
    spec, tp = s.spec, s.tp
    h, q, f = spec.d_model, spec.q_dim, spec.d_ff
    elems = (
        10.0 * h / s.rep_div
        + 2.0 * (q / tp + s.kv_local)
        + (3.0 if spec.gated else 2.0) * f / tp * ((spec.top_k + spec.n_shared_experts) if spec.is_moe else 1.0)
    )
    if spec.is_moe:
        elems = elems + 4.0 * spec.top_k * h
    return s.T * elems * s.prec.act * s.c.elementwise_passes / s.hbm


def _layer_comm(s: _Step, g_fwd, a_fwd, a_bwd, mb_fwd) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exposed seconds of one layer's tensor-, context- and expert-parallel communication, one microbatch."""
    spec, gpu, c, la, G = s.spec, s.gpu, s.c, s.la, s.gpu.gpus_per_node
    tp, cp, T, h, act = s.tp, s.cp, s.T, spec.d_model, s.prec.act
    n_tp = TP_COLLECTIVES + np.where(la.recompute == 2, TP_COLLECTIVES_FULL_RECOMPUTE, 0.0)
    comm_tp = n_tp * _collective(T * h * act, tp, np.minimum(tp, G), 2.0, gpu, c) * (1.0 - c.tp_overlap)
    cp_bytes = T * 2 * s.kv_local * act * (cp - 1)
    cp_link = (
        np.where(tp * cp <= G, gpu.intra_node_gbps * c.intra_node_eff, gpu.inter_node_gbps * c.inter_node_eff) * 1e9
    )
    cp_time = np.where(cp > 1, CP_KV_PASSES * cp_bytes / cp_link, 0.0)
    comm_cp = np.maximum(0.0, cp_time - c.cp_overlap * (a_fwd + a_bwd))
    if spec.is_moe:
        ep_local = np.clip(G // la.tp, 1, la.ep)
        layer_compute = (FWD_BWD_GEMMS * g_fwd + a_fwd + a_bwd + FWD_BWD_GEMMS * mb_fwd) / c.framework_eff
        comm_ep = exposed_expert_comm_s(T * spec.top_k * h * act, s.ep, ep_local, layer_compute, gpu, c)
    else:
        comm_ep = np.zeros_like(tp)
    return comm_tp, comm_cp, comm_ep


def _recompute(s: _Step, g_fwd, a_fwd, mb_fwd) -> np.ndarray:
    """Seconds one layer spends recomputing in the backward: ``full`` its forward, ``selective`` the attention
    core (Korthikanti et al. 2022, Sec. 5), ``op`` torchtitan's even matmuls and the elementwise ops."""
    op = _op_sac_gemms(s.spec, s.T, s.tp, s.kv_local, g_fwd, s.gemm) + mb_fwd
    rc = s.la.recompute
    return np.select([rc == 2, rc == 1, rc == 3], [g_fwd + a_fwd + mb_fwd, a_fwd, op], 0.0)


def _head(s: _Step) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of the output head's GEMMs (forward + 2 backward) and of the loss's memory traffic."""
    vocab = s.spec.vocab_size / s.tp
    return s.gemm(s.T, vocab, s.spec.d_model, FWD_BWD_GEMMS), s.T * vocab * s.c.loss_bytes_per_logit / s.hbm


def _p2p(s: _Step) -> np.ndarray:
    """Exposed seconds of one microbatch's pipeline sends (activations forward, gradients backward)."""
    gpu, c = s.gpu, s.c
    inter = s.tp * s.cp * s.dp >= gpu.gpus_per_node
    link = np.where(inter, gpu.inter_node_gbps * c.inter_node_eff, gpu.intra_node_gbps * c.intra_node_eff) * 1e9
    sends = PP_SENDS * s.v * s.T * s.spec.d_model * s.prec.act / s.rep_div / link
    return np.where(s.la.pp > 1, sends, 0.0) * (1.0 - c.pp_overlap)


def _data_parallel(s: _Step, params, t_mb) -> np.ndarray:
    """Exposed seconds of the data-parallel traffic: DDP all-reduce or ZeRO-1/2 reduce-scatter + all-gather
    behind the last microbatch's backward; ZeRO-3/FSDP gathers and reduce-scatters every microbatch, and HSDP
    all-reduces the shards across replicas."""
    la, gpu, c, prec = s.la, s.gpu, s.c, s.prec
    group = s.dp * s.cp
    dp_local = np.clip(gpu.gpus_per_node // (la.tp * la.cp), 1, la.dp * la.cp)
    shard_group = group / la.replicate
    ar = _collective(params * prec.grad, group, dp_local, 2.0, gpu, c)
    rs_ag = _collective(params * prec.grad, group, dp_local, 1.0, gpu, c) + _collective(
        params * prec.weight, group, dp_local, 1.0, gpu, c
    )
    fsdp_mb = 2.0 * _collective(params * prec.weight, shard_group, dp_local, 1.0, gpu, c) + _collective(
        params * prec.grad, shard_group, dp_local, 1.0, gpu, c
    )
    hsdp = _collective(params * prec.grad / shard_group, la.replicate, 1.0, 2.0, gpu, c)
    bwd_mb = t_mb * BWD_GEMMS / FWD_BWD_GEMMS
    return np.select(
        [la.zero == 0, la.zero <= 2],
        [np.maximum(0.0, ar - c.dp_overlap * bwd_mb), np.maximum(0.0, rs_ag - c.dp_overlap * bwd_mb)],
        s.m * np.maximum(0.0, fsdp_mb - c.fsdp_overlap * t_mb) + hsdp,
    )


def _optimizer(s: _Step, params) -> np.ndarray:
    """Seconds of the optimizer step on this GPU's share of the states (HBM-bound), or on the CPU when
    offloaded (ZeRO-Offload, Ren et al. 2021: CPU Adam plus the PCIe round trip)."""
    la, c, prec = s.la, s.c, s.prec
    group = s.dp * s.cp
    opt_params = params / np.where(la.zero >= 1, group / np.where(la.zero >= 3, la.replicate, 1.0), 1.0)
    on_gpu = opt_params * prec.optimizer_rw / s.hbm
    offloaded = opt_params / c.cpu_adam_params_per_s + opt_params * (prec.grad + prec.weight) / (c.pcie_gbps * 1e9)
    return np.where(la.offload, offloaded, on_gpu)


def step_time(w: Workload, la: LayoutArrays, c: PerfConstants) -> dict[str, np.ndarray]:
    """Seconds per optimizer step, as an additive breakdown (``STEP_KEYS``) plus ``step_time_s``."""
    spec, gpu, global_batch, seq_len, dtype, optimizer = w.spec, w.gpu, w.global_batch, w.seq_len, w.dtype, w.optimizer
    peak = gpu.peak_flops(peak_dtype(dtype))
    tp, pp, cp, dp, ep = (x.astype(float) for x in (la.tp, la.pp, la.cp, la.dp, la.ep))
    s = _Step(
        spec=spec,
        gpu=gpu,
        la=la,
        c=c,
        prec=precision(spec, dtype, optimizer, c),
        seq_len=seq_len,
        peak=peak,
        attn_peak=gpu.peak_flops("bf16") if dtype == "fp8" else peak,
        tp=tp,
        pp=pp,
        cp=cp,
        dp=dp,
        ep=ep,
        v=la.interleave.astype(float),
        m=(global_batch // (la.dp * la.micro_batch)).astype(float),
        T=la.micro_batch * seq_len / cp,
        kv_local=np.maximum(spec.n_kv_heads / tp, 1.0) * spec.head_dim,
        rep_div=np.where(la.sequence_parallel, tp, 1.0),
        hbm=gpu.hbm_gbps * 1e9 * c.hbm_eff,
    )
    # one layer, one microbatch
    g_fwd = _layer_gemms(s)
    a_fwd, a_bwd = _attention(spec, la, s.T, seq_len, tp, peak, s.attn_peak, s.prec.act, gpu, c)
    mb_fwd = _layer_memory_bound(s)
    comm_tp, comm_cp, comm_ep = _layer_comm(s, g_fwd, a_fwd, a_bwd, mb_fwd)
    recompute = _recompute(s, g_fwd, a_fwd, mb_fwd)
    head_g, head_m = _head(s)
    # a framework's efficiency (< 1: host scheduling, unfused kernels) stretches every microbatch's compute
    slow = 1.0 / c.framework_eff
    g_fwd, a_fwd, a_bwd, mb_fwd, recompute = (x * slow for x in (g_fwd, a_fwd, a_bwd, mb_fwd, recompute))
    # the slowest pipeline stage, one microbatch
    layer_t = FWD_BWD_GEMMS * g_fwd + a_fwd + a_bwd + FWD_BWD_GEMMS * mb_fwd + recompute + comm_tp + comm_cp + comm_ep
    layers, head = _slowest_stage(spec.n_layers, la.pp, layer_t, head_g + head_m, c.pipeline_rebalance)
    stage_gemm = layers * FWD_BWD_GEMMS * g_fwd + head * head_g
    stage_attn = layers * (a_fwd + a_bwd)
    stage_mb = layers * FWD_BWD_GEMMS * mb_fwd + head * head_m
    stage_rc = layers * recompute
    stage_comm = layers * (comm_tp + comm_cp + comm_ep)
    p2p = _p2p(s)
    t_mb = stage_gemm + stage_attn + stage_mb + stage_rc + stage_comm + p2p
    # small models are launch-bound: the host cannot issue kernels faster than kernel_launch_s each
    launch = (layers * c.kernels_per_layer + c.kernels_head) * c.kernel_launch_s
    launch_excess = np.maximum(0.0, launch - t_mb)
    bubble = (pp - 1.0) / s.v * t_mb
    # the step: data parallel and the optimizer on the stage with the most parameters
    sp = stage_params(spec, la)
    params = np.maximum(sp.dense_first, sp.dense_last) + sp.expert
    m = s.m
    out = {
        "gemm_s": m * stage_gemm,
        "attention_s": m * stage_attn,
        "memory_bound_s": m * stage_mb,
        "recompute_s": m * stage_rc,
        "comm_tp_s": m * layers * comm_tp,
        "comm_cp_s": m * layers * comm_cp,
        "comm_ep_s": m * layers * comm_ep,
        "comm_pp_s": m * p2p,
        "comm_dp_s": _data_parallel(s, params, t_mb),
        "bubble_s": bubble,
        "optimizer_s": _optimizer(s, params),
        "overhead_s": c.step_overhead_s + m * launch_excess,
    }
    out["compute_s"] = out["gemm_s"] + out["attention_s"] + out["memory_bound_s"] + out["recompute_s"]
    out["exposed_comm_s"] = out["comm_tp_s"] + out["comm_cp_s"] + out["comm_ep_s"] + out["comm_pp_s"] + out["comm_dp_s"]
    out["step_time_s"] = out["compute_s"] + out["exposed_comm_s"] + bubble + out["optimizer_s"] + out["overhead_s"]
    return {k: np.broadcast_to(np.asarray(val, dtype=float), (len(la),)) for k, val in out.items()}
