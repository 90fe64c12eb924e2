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
    assert [v["flops"] for v in table.values()] == [1.5e11] and "float32" in next(iter(table))
    (tmp_path / "cpu_peak.json").write_text("{not json")
    assert cpu_peak.measured_peak_flops("fp32") == 1.5e11 and len(calls) == 2
    with pytest.raises(IsoflopError, match="unknown dtype"):
        cpu_peak.measured_peak_flops("int3")


def test_peak_key_isa_busy_remeasure_and_mfu_never_above_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path))
    values = iter([1e11, 3e11, 2e11, 2e11, 5e11])
    monkeypatch.setattr(cpu_peak, "measure_matmul_flops", lambda dtype, **_: next(values))
    monkeypatch.setattr(cpu_peak, "machine_busy", lambda: True)
    assert cpu_peak.measured_peak_flops("fp32") == 1e11  # measured under load: recorded as busy
    assert cpu_peak.measured_peak_flops("fp32") == 1e11  # still busy: reused
    monkeypatch.setattr(cpu_peak, "machine_busy", lambda: False)
    assert cpu_peak.measured_peak_flops("fp32") == 3e11  # quiet now: measured again
    assert cpu_peak.measured_peak_flops("fp32", refresh=True) == 3e11  # a lower new value never wins
    # An achieved rate 1.9x the peak: measured again (2e11, the max stays 3e11), still above -> no MFU.
    value, peak, why = cpu_peak.mfu(1.9 * 3e11, "fp32")
    assert value is None and peak == 3e11 and "under load" in why
    assert cpu_peak.mfu(1.5e11, "fp32")[0] == 0.5
    # A CPU with other ISA flags (e.g. avx512_bf16) under the same model name is another key.
    monkeypatch.setattr(cpu_peak, "_isa", lambda: "avx2+fma+avx512f+avx512_bf16")
    assert cpu_peak.measured_peak_flops("fp32") == 5e11
    keys = list(json.loads((tmp_path / "cpu_peak.json").read_text()))
    assert len(keys) == 2 and any("avx512_bf16" in k for k in keys)


def test_matmul_measurement_matches_a_timed_matmul() -> None:
    """``2 n^3`` FLOPs over the best time: a plausible CPU rate (1 MFLOP/s .. 100 TFLOP/s)."""
    flops = cpu_peak.measure_matmul_flops("fp32", sizes=(64, 128), repeats=3)
    assert 1e6 < flops < 1e14


def test_tune_allocator_is_safe_to_call() -> None:
    assert tune_allocator() in (True, False)
    x = torch.randn(1 << 22)  # 16 MiB: served from the heap after tuning
    assert torch.isfinite(x.sum())
