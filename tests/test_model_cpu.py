"""CPU helpers: the measured matmul peak (cached, corrupt cache re-measured) and the allocator tuning."""

from __future__ import annotations

import json

import pytest
import torch

from isoflop.errors import IsoflopError
from isoflop.train import cpu_peak
from isoflop.train.cpu import tune_allocator


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path))
    calls: list[torch.dtype] = []

    def fake(dtype, **_):
        calls.append(dtype)
        return 1.5e11

    monkeypatch.setattr(cpu_peak, "measure_matmul_flops", fake)
    assert cpu_peak.measured_peak_flops("fp32") == 1.5e11
    assert cpu_peak.measured_peak_flops(torch.float32) == 1.5e11
    assert calls == [torch.float32]
    table = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert list(table.values()) == [1.5e11] and "float32" in next(iter(table))
    (tmp_path / "cpu_peak.json").write_text("{not json")
    assert cpu_peak.measured_peak_flops("fp32") == 1.5e11 and len(calls) == 2
    with pytest.raises(IsoflopError, match="unknown dtype"):
        cpu_peak.measured_peak_flops("int3")


def test_matmul_measurement_matches_a_timed_matmul() -> None:
    """``2 n^3`` FLOPs over the best time: a plausible CPU rate (1 MFLOP/s .. 100 TFLOP/s)."""
    flops = cpu_peak.measure_matmul_flops("fp32", sizes=(64, 128), repeats=3)
    assert 1e6 < flops < 1e14


def test_tune_allocator_is_safe_to_call() -> None:
    assert tune_allocator() in (True, False)
    x = torch.randn(1 << 22)  # 16 MiB: served from the heap after tuning
    assert torch.isfinite(x.sum())
