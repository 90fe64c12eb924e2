"""Expert-parallel communication (torch-free): the all-to-all that dispatches tokens to their experts and
combines the results, 2 per MoE layer forward and 2 backward (Lepikhin et al. 2021, GShard; Fedus et al. 2022).

An all-to-all is not a ring collective: each GPU keeps ``1 / ep`` of its message, sends ``(l - 1) / ep`` to the
``l - 1`` peers of its node over NVLink and ``(ep - l) / ep`` to the GPUs of other nodes over its own NIC
(``l`` = EP members per node). Nothing is aggregated on the way, so unlike a hierarchical all-reduce the
cross-node part does not shrink with the GPUs per node (the two links run concurrently: the slower sets the time).
``ep_overlap`` (constants.yaml) is the share of the layer's compute the all-to-all can hide behind: 0 for
dispatchers that wait on it (Megatron-Core's alltoall dispatcher up to v0.13), 1 for schedules that overlap it
with another microbatch's compute (DeepSeek-V3's DualPipe, DeepSeek-AI 2024, Sec. 3.2.1).
"""

from __future__ import annotations

import numpy as np

from isoflop.hardware import GPU
from isoflop.perf.constants import PerfConstants

A2A_PER_LAYER = 4.0  # dispatch + combine, forward and backward


def all_to_all_s(nbytes, ep, ep_local, gpu: GPU, c: PerfConstants) -> np.ndarray:
    """Seconds of one all-to-all of ``nbytes`` per GPU over ``ep`` GPUs, ``ep_local`` of them per node."""
    ep = np.asarray(ep, dtype=float)
    local = np.clip(np.asarray(ep_local, dtype=float), 1.0, ep)
    intra = (local - 1.0) / ep * nbytes / (gpu.intra_node_gbps * 1e9 * c.intra_node_eff)
    inter = (ep - local) / ep * nbytes / (gpu.inter_node_gbps * 1e9 * c.inter_node_eff)
    return np.where(ep > 1, np.maximum(intra, inter), 0.0)


def exposed_expert_comm_s(nbytes, ep, ep_local, layer_compute_s, gpu: GPU, c: PerfConstants) -> np.ndarray:
    """Exposed seconds of one MoE layer's 4 all-to-alls for one microbatch, ``ep_overlap`` of
    ``layer_compute_s`` hiding them."""
    a2a = A2A_PER_LAYER * all_to_all_s(nbytes, ep, ep_local, gpu, c)
    return np.maximum(0.0, a2a - c.ep_overlap * np.asarray(layer_compute_s, dtype=float))
