"""``estimate``: memory, step time, throughput, MFU and HFU of one layout (and ``evaluate`` for many).

MFU = model FLOPs per second / (GPUs x dense peak of the dtype) (Chowdhery et al. 2022, App. B), with model
FLOPs from ``isoflop.spec.accounting`` (full ``s x s`` attention square, the Megatron/PaLM convention);
HFU adds the FLOPs of recomputation (Korthikanti et al. 2022, Sec. 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from isoflop.hardware import GPU
from isoflop.perf.comm import CommBytes, comm_bytes
from isoflop.perf.constants import PerfConstants, load_constants
from isoflop.perf.layout import RECOMPUTE, Layout, LayoutArrays, peak_dtype, validate
from isoflop.perf.memory import GIB, MEMORY_KEYS, memory_bytes
from isoflop.perf.sac import recomputed_flops_per_token
from isoflop.perf.steptime import STEP_KEYS, step_time
from isoflop.perf.workload import Workload
from isoflop.spec.accounting import FlopCount, count_flops, recompute_flops_per_token
from isoflop.spec.model import ModelSpec


@dataclass(frozen=True)
class Estimate:
    """The model's prediction for one layout. Memory in GiB per GPU; times in seconds per optimizer step."""

    layout: Layout
    fits: bool
    memory: dict[str, float]
    step_time_s: float
    tokens_per_s: float
    tflops_per_gpu: float
    mfu: float
    hfu: float
    breakdown: dict[str, float]
    n_gpus: int
    global_batch: int
    seq_len: int
    gpu: str
    gpu_memory_gib: float
    microbatches: int
    overflow: str | None = None
    step_time_s_ci90: tuple[float, float] = (0.0, 0.0)
    comm_bytes: CommBytes | None = None  # message bytes per GPU per step by group (``isoflop.perf.comm``)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mfu_ci90(self) -> tuple[float, float]:
        """The MFU band matching ``step_time_s_ci90`` (a slower step is a lower MFU)."""
        lo, hi = self.step_time_s_ci90
        return (self.mfu * self.step_time_s / hi, self.mfu * self.step_time_s / lo)

    @property
    def headroom_gib(self) -> float:
        return self.gpu_memory_gib - self.memory["total_gib"]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``isoflop estimate --json`` (and of each ``isoflop layout --json`` entry)."""
        return {
            **{k: v for k, v in self.layout.to_dict().items()},
            "gpu": self.gpu,
            "n_gpus": self.n_gpus,
            "global_batch": self.global_batch,
            "seq_len": self.seq_len,
            "microbatches": self.microbatches,
            "fits": self.fits,
            "overflow": self.overflow,
            "gpu_memory_gib": self.gpu_memory_gib,
            "headroom_gib": self.headroom_gib,
            "memory": dict(self.memory),
            "step_time_s": self.step_time_s,
            "step_time_s_ci90": list(self.step_time_s_ci90),
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s / self.n_gpus,
            "tflops_per_gpu": self.tflops_per_gpu,
            "mfu": self.mfu,
            "mfu_ci90": list(self.mfu_ci90),
            "hfu": self.hfu,
            "breakdown": dict(self.breakdown),
            **({"comm_bytes": self.comm_bytes.to_dict()} if self.comm_bytes is not None else {}),
            **self.extra,
        }


def _recompute_flops(spec: ModelSpec, flops: FlopCount, policy: str) -> float:
    """Recomputed FLOPs per token; ``op`` (torchtitan's op-level SAC) redoes the even matmuls of each block
    (``isoflop.perf.sac``), not the attention core."""
    if policy == "op":
        return recomputed_flops_per_token(spec)
    return recompute_flops_per_token(flops, policy)  # type: ignore[arg-type]


def evaluate(w: Workload, la: LayoutArrays, constants: PerfConstants) -> dict[str, np.ndarray]:
    """Memory (GiB), step-time breakdown, throughput and utilisation for every layout in ``la``."""
    mem = memory_bytes(w, la, constants)
    times = step_time(w, la, constants)
    flops = count_flops(w.spec, w.seq_len)
    tokens, n_gpus = w.tokens, w.n_gpus
    model_flops = tokens * flops.training
    extra = np.array([_recompute_flops(w.spec, flops, p) for p in RECOMPUTE])[la.recompute] * tokens
    step = times["step_time_s"]
    peak = w.gpu.peak_flops(peak_dtype(w.dtype)) * n_gpus
    out = {k: v / GIB for k, v in mem.items()}
    out.update(times)
    out["fits"] = out["total_gib"] <= w.gpu.memory_gib
    out["tokens_per_s"] = tokens / step
    out["tflops_per_gpu"] = model_flops / step / n_gpus / 1e12
    out["mfu"] = model_flops / step / peak
    out["hfu"] = (model_flops + extra) / step / peak
    return out


def overflow_reason(memory: dict[str, float], capacity: float) -> str | None:
    """``None`` when it fits, else which part is the largest share of the overflow."""
    total = memory["total_gib"]
    if total <= capacity:
        return None
    parts = {k: v for k, v in memory.items() if k != "total_gib"}
    worst = max(parts, key=parts.get)  # type: ignore[arg-type]
    return (
        f"needs {total:.1f} GiB of {capacity:.0f} GiB ({total - capacity:.1f} GiB over); "
        f"largest part: {worst.removesuffix('_gib')} {parts[worst]:.1f} GiB"
    )


def build_estimate(
    row: dict[str, np.ndarray], i: int, layout: Layout, w: Workload, constants: PerfConstants
) -> Estimate:
    """One row of ``evaluate`` as an ``Estimate``; the 90% band is the cross-validated residual spread
    (``ci90_log_lo``/``ci90_log_hi`` in constants.yaml, from benchmarks/validate_published.py)."""
    memory = {k: float(row[k][i]) for k in MEMORY_KEYS}
    breakdown = {k: float(row[k][i]) for k in STEP_KEYS}
    return Estimate(
        layout=layout,
        fits=bool(row["fits"][i]),
        memory=memory,
        step_time_s=float(row["step_time_s"][i]),
        step_time_s_ci90=(
            float(row["step_time_s"][i]) * math.exp(constants.ci90_log_lo),
            float(row["step_time_s"][i]) * math.exp(constants.ci90_log_hi),
        ),
        tokens_per_s=float(row["tokens_per_s"][i]),
        tflops_per_gpu=float(row["tflops_per_gpu"][i]),
        mfu=float(row["mfu"][i]),
        hfu=float(row["hfu"][i]),
        breakdown=breakdown,
        n_gpus=w.n_gpus,
        global_batch=w.global_batch,
        seq_len=w.seq_len,
        gpu=w.gpu.name,
        gpu_memory_gib=w.gpu.memory_gib,
        microbatches=w.global_batch // (layout.dp * layout.micro_batch),
        overflow=overflow_reason(memory, w.gpu.memory_gib),
    )


def estimate(
    spec: ModelSpec,
    gpu: GPU,
    n_gpus: int,
    layout: Layout,
    global_batch: int,
    seq_len: int,
    constants: PerfConstants | None = None,
) -> Estimate:
    """Predict memory per GPU, step time and utilisation of ``layout``; bad layouts raise ``IsoflopError``."""
    validate(layout, spec, n_gpus, global_batch, seq_len)
    gpu.peak_flops(peak_dtype(layout.dtype))  # an unsupported dtype is an error, never a fallback
    const = constants or load_constants(gpu.name)
    la = LayoutArrays.from_layouts([layout])
    w = Workload(spec, gpu, n_gpus, global_batch, seq_len, layout.dtype, layout.optimizer)
    est = build_estimate(evaluate(w, la, const), 0, layout, w, const)
    return replace(est, comm_bytes=comm_bytes(spec, layout, global_batch, seq_len, const))
