"""Step-time model: bubble, utilisation bookkeeping, shape-dependent efficiency, communication (the
published-run validation is tests/test_perf_published.py)."""

from __future__ import annotations

import pytest

from isoflop.hardware import get_gpu
from isoflop.perf import Layout, estimate, load_constants
from isoflop.spec import get_model_preset
from isoflop.spec.accounting import flops_per_step

A100 = get_gpu("a100-80gb")
H100 = get_gpu("h100-sxm")


def test_bubble_is_p_minus_1_over_v_m() -> None:
    """Narayanan et al. 2021, Sec. 2.2: bubble = (p - 1) / (v m) of the ideal pipeline time."""
    spec = get_model_preset("gpt3-175b")
    for pp, v, batch in ((12, 1, 96), (12, 2, 96), (8, 4, 32)):
        est = estimate(spec, A100, 8 * pp, Layout(tp=8, pp=pp, interleave=v, recompute="full"), batch, 2048)
        b = est.breakdown
        ideal = b["compute_s"] + b["comm_tp_s"] + b["comm_cp_s"] + b["comm_ep_s"] + b["comm_pp_s"]
        assert b["bubble_s"] / ideal == pytest.approx((pp - 1) / (v * est.microbatches), rel=1e-12)


def test_outputs_are_consistent() -> None:
    spec, n, batch, seq = get_model_preset("llama3-8b"), 8, 32, 8192
    est = estimate(spec, H100, n, Layout(dp=8, zero=3, micro_batch=1, recompute="full"), batch, seq)
    parts = ("compute_s", "exposed_comm_s", "bubble_s", "optimizer_s", "overhead_s")
    assert sum(est.breakdown[k] for k in parts) == pytest.approx(est.step_time_s)
    assert est.tokens_per_s == pytest.approx(batch * seq / est.step_time_s)
    model = flops_per_step(spec, batch, seq).model
    assert est.tflops_per_gpu * 1e12 == pytest.approx(model / est.step_time_s / n)
    assert est.mfu == pytest.approx(est.tflops_per_gpu * 1e12 / H100.peak_flops("bf16"))
    hardware = flops_per_step(spec, batch, seq, recompute="full").hardware
    assert est.hfu == pytest.approx(hardware / est.step_time_s / n / H100.peak_flops("bf16"))


def test_narayanan_flops_formula_matches_accounting() -> None:
    """Narayanan's F = 96 B s l h^2 (1 + s/6h + V/16lh) is 4 forward passes; our hardware FLOPs with full
    recompute count the same matmuls exactly (plus nothing else), so they agree to the bias terms."""
    spec = get_model_preset("gpt3-175b").replace(vocab_size=51200)
    B, s, h, l, V = 1536, 2048, spec.d_model, spec.n_layers, spec.vocab_size
    F = 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))
    ours = flops_per_step(spec, B, s, recompute="full").hardware
    assert ours == pytest.approx(F, rel=0.01)


def test_small_gemms_run_below_peak() -> None:
    c = load_constants("h100-sxm")
    tiny = get_model_preset("gpt2")
    big = get_model_preset("llama2-13b")
    small_mfu = estimate(tiny, H100, 1, Layout(micro_batch=1), 1, 1024, c).mfu
    big_mfu = estimate(big, H100, 1, Layout(micro_batch=1), 1, 4096, c).mfu
    assert small_mfu < 0.5 * big_mfu
    assert big_mfu < c.gemm_eff_max


def test_tensor_parallel_across_nodes_costs_more() -> None:
    spec = get_model_preset("llama2-70b")
    inside = estimate(spec, H100, 16, Layout(tp=8, dp=2, zero=1, recompute="full"), 16, 4096)
    across = estimate(spec, H100, 16, Layout(tp=16, dp=1, recompute="full"), 16, 4096)
    per_mb_in = inside.breakdown["comm_tp_s"] / inside.microbatches
    per_mb_out = across.breakdown["comm_tp_s"] / across.microbatches
    assert per_mb_out > 1.3 * per_mb_in  # hierarchical: every GPU of a node drives its own NIC


def test_offload_slows_the_optimizer_step() -> None:
    spec = get_model_preset("llama2-7b")
    on = estimate(spec, H100, 8, Layout(dp=8, zero=1), 8, 4096)
    off = estimate(spec, H100, 8, Layout(dp=8, zero=1, offload=True), 8, 4096)
    assert off.breakdown["optimizer_s"] > 10 * on.breakdown["optimizer_s"]
