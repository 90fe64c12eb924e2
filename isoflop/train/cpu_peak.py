"""Measured CPU matmul peak (FLOP/s) per dtype, the denominator of MFU on CPU.

A CPU has no catalog peak worth trusting (turbo, AVX-512 down-clocking, VM throttling), so the peak is
measured: the best of several timed square matmuls (1024 and 2048), ``2 n^3`` FLOPs each (the
accounting's convention, ``isoflop.spec.accounting``), with PyTorch's current thread count. On a
machine shared with other jobs the measurement is a lower bound of the true peak (``refresh=True``
measures again). The result is cached
in ``~/.cache/isoflop/cpu_peak.json`` (``$ISOFLOP_CACHE`` overrides the folder), keyed by CPU model,
thread count, torch version and dtype, so the trainer's metrics and the benchmark share one number.
"""

from __future__ import annotations

import json
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


def measured_peak_flops(dtype: torch.dtype | str = "fp32", refresh: bool = False) -> float:
    """The CPU's matmul peak in FLOP/s for ``dtype``: cached, measured once per machine/threads/torch."""
    dt = _dtype(dtype)
    dtype_name = str(dt).removeprefix("torch.")
    key = f"v2|{_cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype_name}"
    path = cache_dir() / "cpu_peak.json"
    table: dict[str, float] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            table = {k: float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (OSError, ValueError, TypeError):
            table = {}  # a corrupt cache is re-measured, never trusted
    if not refresh and table.get(key, 0.0) > 0:
        return table[key]
    table[key] = measure_matmul_flops(dt)
    atomic_write_json(path, table)
    return table[key]
