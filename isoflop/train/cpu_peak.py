"""Measured CPU matmul peak (FLOP/s) per dtype, the denominator of MFU on CPU.

A CPU has no catalog peak worth trusting (turbo, AVX-512 down-clocking, VM throttling), so the peak is
measured: the best of several timed square matmuls, ``2 n^3`` FLOPs each (the accounting's
convention, ``isoflop.spec.accounting``), with PyTorch's current thread count. The result is cached
in ``~/.cache/isoflop/cpu_peak.json`` (``$ISOFLOP_CACHE`` overrides the folder), keyed by CPU model,
thread count, torch version and dtype, so the trainer's metrics and the benchmark share one number.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from isoflop.atomic import atomic_write_json
from isoflop.errors import IsoflopError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("ISOFLOP_CACHE") or Path.home() / ".cache" / "isoflop")


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


def measure_matmul_flops(dtype: torch.dtype | str, n: int = 1024, repeats: int = 12, warmup: int = 3) -> float:
    """Best-of-``repeats`` FLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype`` (``2 n^3`` FLOPs)."""
    dt = _dtype(dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dt)
    b = torch.randn(n, n, generator=gen).to(dt)
    out = torch.empty(n, n, dtype=dt)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def measured_peak_flops(dtype: torch.dtype | str = "fp32", refresh: bool = False) -> float:
    """The CPU's matmul peak in FLOP/s for ``dtype``: cached, measured once per machine/threads/torch."""
    dt = _dtype(dtype)
    key = f"{_cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{str(dt).removeprefix('torch.')}"
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
