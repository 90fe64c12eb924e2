"""Communication of data-parallel training across sites: DDP, PowerSGD and DiLoCo (torch-free).

Bytes are the payload one worker hands to the collective per optimizer step (what ``isoflop.train.lowcomm``
counts); a ring all-reduce of ``S`` bytes among ``K`` members sends ``2 (K - 1) / K x S`` per member
(Patarasuk & Yuan 2009), an all-gather of ``S`` per member sends ``(K - 1) x S``.

* DDP: every gradient, ``4 P`` bytes (fp32), or ``2 P`` with torch's fp16/bf16 compression hooks.
* PowerSGD (Vogels et al. 2019, Alg. 1; torch's ``powerSGD_hook``): a gradient viewed as an ``n x m`` matrix
  with rank ``r = min(n, m, rank)`` is sent as ``P`` (``n r``) and ``Q`` (``m r``) when
  ``2 (n + m) r < n m`` (the hook's ``min_compression_rate`` 2); other tensors are sent whole; the first
  ``start_iter`` steps are plain all-reduces.
* DiLoCo (Douillard et al. 2023, Alg. 1): the pseudo-gradient of each fragment once every ``H`` steps, in fp32
  (``4 n``), bf16 (``2 n``) or int4 (per block of 64, padded: 32 packed bytes + one fp32 scale; all-gathered);
  Streaming DiLoCo (Douillard et al. 2025) syncs fragment ``j`` of ``F`` at steps ``t = (j + 1) H / F mod H``.

Cross-site time: the workers of a site reduce inside the site first, so each ring step crosses the inter-site
link once per site: ``t = 2 (K - 1) / K x S / B_site`` (``B_site`` the site's link in bytes/s; intra-site
time is the plan's own step time). DiLoCo pays its sync once per ``H`` steps and is not overlapped here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from isoflop.errors import IsoflopError
from isoflop.perf.optimizer_state import ParamShape

INT4_BLOCK = 64
DILOCO_H_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMM_BUDGET = 0.05  # the planner picks the smallest H whose cross-site time is at most 5% of the step time
PAYLOAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def ddp_bytes(shapes: list[ParamShape], dtype: str = "fp32") -> int:
    """Gradient bytes all-reduced per step by DDP (``fp16``/``bf16``: torch's compression hooks)."""
    return PAYLOAD_BYTES[dtype] * sum(p.numel for p in shapes)


def check_powersgd_rank(shapes: list[ParamShape], rank: int) -> None:
    """A rank above a weight matrix's smaller side cannot be used (the hook would silently lower it)."""
    for p in shapes:
        if len(p.shape) >= 2 and rank > min(p.shape[0], p.numel // p.shape[0]):
            side = min(p.shape[0], p.numel // p.shape[0])
            raise IsoflopError(
                f"sync.powersgd_rank={rank} exceeds the smaller side ({side}) of the {p.shape[0]} x "
                f"{p.numel // p.shape[0]} matrix {p.name}; use a rank <= {side}"
            )


def powersgd_step_bytes(shapes: list[ParamShape], rank: int) -> int:
    """Bytes of one compressed PowerSGD step: P and Q of the compressed matrices, the rest whole (fp32)."""
    total = 0
    for p in shapes:
        n = p.shape[0]
        m = p.numel // n
        r = min(n, m, rank)
        total += 4 * ((n + m) * r if 2 * (n + m) * r < n * m else n * m)
    return total


def powersgd_run_bytes(shapes: list[ParamShape], rank: int, start_iter: int, steps: int) -> int:
    """Bytes of ``steps`` steps: plain all-reduce while the hook's iteration count (from 0) is below ``start_iter``."""
    plain = min(steps, start_iter)
    return plain * ddp_bytes(shapes) + (steps - plain) * powersgd_step_bytes(shapes, rank)


def fragment_index(i: int, n_tensors: int, fragments: int) -> int:
    """Fragment of the ``i``-th parameter tensor: contiguous runs of tensors in model order."""
    return i * fragments // n_tensors


def sync_bytes(numel: int, dtype: str) -> int:
    """Bytes one worker sends for a pseudo-gradient of ``numel`` elements."""
    if dtype == "int4":
        return (INT4_BLOCK // 2 + 4) * -(-numel // INT4_BLOCK)
    return PAYLOAD_BYTES[dtype] * numel


def fragment_syncs(steps: int, inner_steps: int, fragments: int, j: int) -> int:
    """How many times fragment ``j`` is synchronised in steps 1..``steps``."""
    offset = (j + 1) * inner_steps // fragments
    return 0 if steps < offset else (steps - offset) // inner_steps + 1


def diloco_run_bytes(shapes: list[ParamShape], inner_steps: int, fragments: int, dtype: str, steps: int) -> int:
    """Bytes one DiLoCo worker sends over ``steps`` inner steps."""
    sizes = [0] * fragments
    for i, p in enumerate(shapes):
        sizes[fragment_index(i, len(shapes), fragments)] += p.numel
    return sum(
        fragment_syncs(steps, inner_steps, fragments, j) * sync_bytes(size, dtype) for j, size in enumerate(sizes)
    )


# -- the planner's choice ------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncChoice:
    """Cross-site synchronisation for a planned run: DDP against DiLoCo with the chosen ``H``."""

    sites: int
    inter_site_gbit_s: float
    params: int
    steps: int
    step_time_s: float  # the plan's step time inside one site
    ddp_bytes_per_step: float
    ddp_comm_s: float
    ddp_step_time_s: float
    choice: str  # "ddp" or "diloco"
    inner_steps: int
    diloco_bytes_per_step: float
    diloco_comm_s: float  # per step, the sync amortised over H
    diloco_step_time_s: float
    powersgd_rank: int
    powersgd_bytes_per_step: float | None  # reported beside the choice, never chosen (its compute is not priced)
    powersgd_step_time_s: float | None
    ddp_days: float
    chosen_days: float
    saved_days: float
    saved_fraction: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_site_seconds(payload_bytes: float, sites: int, inter_site_gbit_s: float) -> float:
    """Ring all-reduce of ``payload_bytes`` among ``sites`` over links of ``inter_site_gbit_s`` Gbit/s."""
    return 2.0 * (sites - 1) / sites * payload_bytes / (inter_site_gbit_s * 1e9 / 8.0)


def choose_sync(
    params: int,
    step_time_s: float,
    steps: int,
    sites: int,
    inter_site_gbit_s: float,
    outer_dtype: str = "fp32",
    shapes: list[ParamShape] | None = None,
    powersgd_rank: int = 4,
) -> SyncChoice:
    """DDP across sites, or DiLoCo with the smallest ``H`` whose amortised sync is within ``COMM_BUDGET`` of the
    step time (H = 1 is plain DDP: chosen when the network is fast enough). With the model's ``shapes``, PowerSGD
    at ``powersgd_rank`` is priced too (communication only: its compression compute and quality cost are not
    modelled, so it is reported, not chosen)."""
    if sites < 2:
        raise IsoflopError(f"--sites {sites}: cross-site planning needs at least 2 sites")
    if not (inter_site_gbit_s > 0 and math.isfinite(inter_site_gbit_s)):
        raise IsoflopError(f"--inter-site-gbps {inter_site_gbit_s} must be a positive number of Gbit/s")
    ddp_payload = 4.0 * params
    ddp_comm = cross_site_seconds(ddp_payload, sites, inter_site_gbit_s)
    sync_comm = cross_site_seconds(sync_bytes(params, outer_dtype), sites, inter_site_gbit_s)
    h = next((h for h in DILOCO_H_CHOICES if sync_comm / h <= COMM_BUDGET * step_time_s), DILOCO_H_CHOICES[-1])
    ddp_time = step_time_s + ddp_comm
    if h == 1:
        choice, chosen_time, comm, payload = "ddp", ddp_time, ddp_comm, ddp_payload
        reason = f"the cross-site all-reduce ({ddp_comm:.3g} s) is within {COMM_BUDGET:.0%} of the step; DDP"
    else:
        choice, comm, payload = "diloco", sync_comm / h, sync_bytes(params, outer_dtype) / h
        chosen_time = step_time_s + comm
        reason = (
            f"a cross-site all-reduce takes {ddp_comm:.3g} s per step against a {step_time_s:.3g} s step; "
            f"DiLoCo with H={h} amortises its {sync_comm:.3g} s sync to {comm:.3g} s per step"
        )
    psgd_bytes = psgd_time = None
    if shapes is not None:
        psgd_bytes = float(powersgd_step_bytes(shapes, powersgd_rank))
        psgd_time = step_time_s + cross_site_seconds(psgd_bytes, sites, inter_site_gbit_s)
    ddp_days = steps * ddp_time / 86400.0
    chosen_days = steps * chosen_time / 86400.0
    return SyncChoice(
        sites=sites,
        inter_site_gbit_s=inter_site_gbit_s,
        params=params,
        steps=steps,
        step_time_s=step_time_s,
        ddp_bytes_per_step=ddp_payload,
        ddp_comm_s=ddp_comm,
        ddp_step_time_s=ddp_time,
        choice=choice,
        inner_steps=h,
        diloco_bytes_per_step=payload,
        diloco_comm_s=comm,
        diloco_step_time_s=chosen_time,
        powersgd_rank=powersgd_rank,
        powersgd_bytes_per_step=psgd_bytes,
        powersgd_step_time_s=psgd_time,
        ddp_days=ddp_days,
        chosen_days=chosen_days,
        saved_days=ddp_days - chosen_days,
        saved_fraction=1.0 - chosen_days / ddp_days,
        reason=reason,
    )
