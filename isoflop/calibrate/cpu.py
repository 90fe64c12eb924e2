"""A hardware entry for the local CPU, so CPU runs (the quickstart's) can be estimated and calibrated.

The CPU is treated as a one-"GPU" node: ``peak_tflops.fp32`` is the measured matmul peak
(``isoflop.train.cpu_peak.measured_peak_flops``, at the thread count the runs used), ``memory_gib`` the
machine's RAM, ``hbm_gbps`` a measured large-array copy bandwidth (read + write bytes / s). A single
process never communicates, so the link bandwidths are set to the memory bandwidth (they are unused);
``tdp_watts`` is a nominal 15 W per core (used only for energy figures) and the price 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from isoflop import env, structured
from isoflop.atomic import atomic_write_text
from isoflop.errors import IsoflopError

DEFAULT_HARDWARE_FILE = Path("~/.config/isoflop/hardware.yaml")
CPU_NAME = "cpu-local"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def copy_bandwidth_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes moved per second (read + write) copying a large float32 array, in GB/s."""
    import numpy as np

    src = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def cpu_entry(threads: int = 1) -> dict[str, Any]:
    """Measure this CPU and return its hardware-catalog entry (fields of ``isoflop.hardware.GPU``)."""
    import torch

    from isoflop.train.cpu_peak import measured_peak_flops

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = measured_peak_flops("fp32")
    finally:
        torch.set_num_threads(previous)
    bw = copy_bandwidth_gbps()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "display": f"local CPU ({threads} thread(s), measured)",
        "vendor": "cpu",
        "peak_tflops": {"fp32": round(peak / 1e12, 6)},
        "memory_gib": round(_ram_gib(), 2),
        "hbm_gbps": round(bw, 2),
        "intra_node_gbps": round(bw, 2),
        "inter_node_gbps": round(bw, 2),
        "gpus_per_node": 1,
        "tdp_watts": 15.0 * cores,
        "price_per_hour_usd": 0.0,
    }


def write_hardware_entry(entry: dict[str, Any], path: str | Path | None = None, name: str = CPU_NAME) -> Path:
    """Add or replace ``name`` in a user hardware file (the ``--hardware`` / ``$ISOFLOP_HARDWARE`` layout)."""
    target = Path(path).expanduser() if path else env.path(env.HARDWARE, DEFAULT_HARDWARE_FILE)
    data: dict[str, Any] = {"gpus": {}}
    if target.is_file():
        data = structured.read(target, "hardware file", "fix or move it", "yaml") or {"gpus": {}}
        if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
            raise IsoflopError(f"hardware file {target} must map 'gpus:' to entries; fix or move it")
    data["gpus"][name] = entry
    return atomic_write_text(target, yaml.safe_dump(data, sort_keys=False))
