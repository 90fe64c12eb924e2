"""Measured CPU matmul peak (FLOP/s) per dtype, the denominator of MFU on CPU.

A CPU has no catalog peak worth trusting (turbo, AVX-512 down-clocking, VM throttling), so the peak is
measured: the best of several timed square matmuls (1024 and 2048), ``2 n^3`` FLOPs each (the
accounting's convention, ``isoflop.spec.accounting``), with PyTorch's current thread count. The result is
cached in ``~/.cache/isoflop/cpu_peak.json`` (``$ISOFLOP_CACHE`` overrides the folder), keyed by CPU model,
the matmul-relevant ISA flags (AVX2/FMA, AVX-512 and its BF16/FP16/VNNI extensions, AMX: two CPUs with the
same model name can differ), thread count, torch version and dtype, so the trainer's metrics and the
benchmark share one number.

Load: on a machine shared with other jobs the measurement is a lower bound of the true peak. A measurement
taken while the 1-minute load average exceeds half the cores is recorded as ``busy`` and measured again by
the next call that finds the machine quiet; a new measurement never lowers the cached peak (the maximum is
kept). ``mfu`` re-measures when the achieved rate exceeds the peak and reports no MFU (None, with the reason)
rather than a value above 1.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from isoflop.atomic import atomic_write_json
from isoflop.env import cache_dir
from isoflop.errors import IsoflopError

# isoflop's dtype names (``isoflop.hardware.DTYPES``) of the dtypes a CPU matmul runs in.
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise IsoflopError(f"unknown dtype {dtype!r} for the CPU peak; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def measure_matmul_flops(
    dtype: torch.dtype | str, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 6, budget_s: float = 1.5
) -> float:
    """Best FLOP/s over square ``n x n`` matmuls in ``dtype`` (``2 n^3`` FLOPs each), over ``sizes`` and
    up to ``repeats`` timed runs per size (fewer once ``budget_s`` is spent on a size, at least 2)."""
    dt = _dtype(dtype)
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dt)
        b = torch.randn(n, n, generator=gen).to(dt)
        out = torch.empty(n, n, dtype=dt)
        torch.mm(a, b, out=out)  # warm-up: page in the buffers, pick the kernel
        spent = 0.0
        for i in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - start
            best, spent = max(best, 2.0 * n**3 / elapsed), spent + elapsed
            if i >= 1 and spent > budget_s:
                break
    return best


_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_fp16")


def _isa() -> str:
    """The matmul-relevant ISA flags of this CPU (``/proc/cpuinfo``), e.g. ``avx2+fma+avx512f+avx512_bf16``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                present = set(line.split(":", 1)[1].split())
                return "+".join(f for f in _ISA_FLAGS if f in present) or "none"
    except OSError:
        pass
    return platform.machine()


def machine_busy() -> bool:
    """True when the 1-minute load average exceeds half the cores (other jobs would slow a measurement)."""
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:
        return False


def _cache_key(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return f"v3|{_cpu_model()}|{_isa()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{name}"


def measured_peak_flops(dtype: torch.dtype | str = "fp32", refresh: bool = False) -> float:
    """The CPU's matmul peak in FLOP/s for ``dtype``: cached per machine/ISA/threads/torch; measured again when
    ``refresh`` or when the cached value was taken on a busy machine and this one is quiet (the max is kept)."""
    dt = _dtype(dtype)
    key = _cache_key(dt)
    path = cache_dir() / "cpu_peak.json"
    table: dict[str, dict[str, float | bool]] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            table = {
                k: {"flops": float(v["flops"]), "busy": bool(v.get("busy", False))}
                for k, v in loaded.items()
                if isinstance(v, dict)
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            table = {}  # a corrupt cache is re-measured, never trusted
    cached = table.get(key)
    busy = machine_busy()
    if cached is not None and cached["flops"] > 0 and not refresh and not (cached["busy"] and not busy):
        return float(cached["flops"])
    flops = measure_matmul_flops(dt)
    if cached is not None and cached["flops"] > flops:
        flops, busy = float(cached["flops"]), bool(cached["busy"] and busy)
    table[key] = {"flops": flops, "busy": busy}
    atomic_write_json(path, table)
    return flops


def mfu(achieved_flops_per_s: float, dtype: torch.dtype | str = "fp32") -> tuple[float | None, float, str]:
    """(MFU, peak FLOP/s, note) for a CPU run that achieved ``achieved_flops_per_s``. An MFU above 1 means the
    peak was measured too low (under load): it is measured again, and if still below, no MFU is reported."""
    peak = measured_peak_flops(dtype)
    if achieved_flops_per_s > peak:
        peak = measured_peak_flops(dtype, refresh=True)
    if achieved_flops_per_s > peak:
        return None, peak, "the measured CPU peak is below the achieved rate (measured under load); MFU not reported"
    return achieved_flops_per_s / peak, peak, ""
