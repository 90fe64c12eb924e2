"""Memory model: ZeRO closed forms, Korthikanti's activation forms, pipeline in-flight microbatches,
and the fake-tensor ground truth (a real PyTorch step measured by MemTracker)."""

from __future__ import annotations

import numpy as np
import pytest
from _benchmarks import load_benchmark

from isoflop.hardware import get_gpu
from isoflop.perf import Layout, estimate, load_constants
from isoflop.perf.layout import LayoutArrays
from isoflop.perf.memory import layer_activation_bytes
from isoflop.spec import ModelSpec, count_params, get_model_preset

GIB = 2.0**30
H100 = get_gpu("h100-sxm")


def _states(est) -> float:
    m = est.memory
    return (m["weights_gib"] + m["gradients_gib"] + m["optimizer_gib"]) * GIB


@pytest.mark.parametrize(
    "zero, per_param",
    [(0, lambda n: 16.0), (1, lambda n: 4 + 12 / n), (2, lambda n: 2 + 14 / n), (3, lambda n: 16 / n)],
)
def test_zero_stages_match_rajbhandari_closed_forms(zero, per_param) -> None:
    """ZeRO paper Sec. 5.1 / Fig. 1: (2 + 2 + K) psi with K = 12, sharded over N_d by stage."""
    spec = get_model_preset("llama2-7b")
    psi = count_params(spec).total
    n = 64
    est = estimate(spec, H100, n, Layout(dp=n, zero=zero), n, 2048)
    assert _states(est) == pytest.approx(per_param(n) * psi, rel=1e-12)
    # the paper's own example: psi = 7.5B, N_d = 64 -> 120 / 31.4 / 16.6 / 1.9 GB
    paper = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}[zero]
    assert per_param(n) * 7.5e9 / 1e9 == pytest.approx(paper, rel=0.02)


def test_tensor_and_pipeline_parallel_split_the_weights() -> None:
    spec = get_model_preset("llama3-70b")
    one = estimate(spec, H100, 1, Layout(), 1, 4096).memory["weights_gib"]
    tp8 = estimate(spec, H100, 8, Layout(tp=8), 1, 4096).memory["weights_gib"]
    assert tp8 * 8 == pytest.approx(one, rel=2e-4)  # only the norms are replicated
    pp4 = estimate(spec, H100, 4, Layout(pp=4), 4, 4096).memory["weights_gib"]
    layer = (count_params(spec).per_layer * 20 + spec.vocab_size * spec.d_model) * 2 / GIB  # first/last stage
    assert pp4 == pytest.approx(layer, rel=1e-3)


def _arrays(**knobs) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**knobs)])


def test_activations_follow_korthikanti_forms() -> None:
    """Korthikanti et al. 2022: 34 s b h per layer for GPT shapes less their two s b h dropout masks (none
    here; FlashAttention's fp32 log-sum-exp is added and the 5 a s / h term vanishes); sequence parallel
    divides everything by t; full recomputation keeps 2 s b h."""
    h, s, b = 12288, 2048, 1
    gpt = ModelSpec(
        d_model=h,
        n_layers=96,
        n_heads=96,
        d_ff=4 * h,
        vocab_size=51200,
        norm="layernorm",
        mlp="gelu",
        position="learned",
        tie_embeddings=True,
        bias=True,
    )
    none = layer_activation_bytes(gpt, _arrays(micro_batch=b), s, 2.0)
    lse, stats = s * b * gpt.n_heads * 4.0, s * b * 2 * 8.0  # fp32 log-sum-exp; fp32 mean and rstd of 2 norms
    assert none["none"][0] == pytest.approx(32 * s * b * h + lse + stats, rel=1e-12)
    assert none["full"][0] == 2 * s * b * h
    sp = layer_activation_bytes(gpt, _arrays(tp=8, sequence_parallel=True), s, 2.0)
    assert sp["none"][0] == pytest.approx(none["none"][0] / 8, rel=1e-12)
    assert sp["full"][0] == 2 * s * b * h / 8
    # tensor parallel without SP: the 4 h-vectors and norm statistics stay replicated (Korthikanti's "10" term)
    tp = layer_activation_bytes(gpt, _arrays(tp=8), s, 2.0)
    replicated = s * b * (4 * h * 2 + 16)
    assert tp["none"][0] == pytest.approx(replicated + (none["none"][0] - replicated) / 8, rel=1e-12)
    assert none["selective"][0] < none["none"][0]


def test_pipeline_first_stage_holds_p_microbatches() -> None:
    """1F1B: the first stage keeps min(p, m) microbatches of L/p layers; interleaving adds (p-1)/(p v)."""
    spec = get_model_preset("llama2-13b")
    base = estimate(spec, H100, 1, Layout(), 64, 4096).memory["activations_gib"]
    pp4 = estimate(spec, H100, 4, Layout(pp=4), 64, 4096)
    assert pp4.memory["activations_gib"] == pytest.approx(base, rel=1e-12)
    few = estimate(spec, H100, 4, Layout(pp=4), 2, 4096).memory["activations_gib"]  # m = 2 < p
    assert few == pytest.approx(base * 2 / 4, rel=1e-12)
    inter = estimate(spec, H100, 4, Layout(pp=4, interleave=2), 64, 4096).memory["activations_gib"]
    assert inter == pytest.approx(base * (1 + 3 / 8), rel=1e-12)


def test_offload_and_optimizers() -> None:
    spec = get_model_preset("llama2-7b")
    psi = count_params(spec).total
    off = estimate(spec, H100, 8, Layout(dp=8, zero=1, offload=True), 8, 2048)
    assert off.memory["optimizer_gib"] == 0.0
    sgd = estimate(spec, H100, 1, Layout(optimizer="sgd"), 1, 2048)
    assert sgd.memory["optimizer_gib"] * GIB == pytest.approx(8 * psi)  # fp32 master + momentum
    adam8 = estimate(spec, H100, 1, Layout(optimizer="adam8bit"), 1, 2048)
    assert adam8.memory["optimizer_gib"] < sgd.memory["optimizer_gib"]
    fp32 = estimate(spec, H100, 1, Layout(dtype="fp32"), 1, 2048)
    assert _states(fp32) == pytest.approx(16 * psi)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 2, 6, 8])
def test_fake_tensor_ground_truth(case: int) -> None:
    """A real PyTorch step under FakeTensorMode + MemTracker: model states exact, peak within 5%."""
    pytest.importorskip("torch")
    gt = load_benchmark("memory_ground_truth")
    row = gt.run_case(*gt.CASES[case])
    assert row["model_states_exact"], row
    assert abs(row["total_error"]) < 0.05, row
    assert np.isfinite(row["activation_error"])


def test_amp_recipe_keeps_fp32_states_and_bf16_weight_casts() -> None:
    """torch.autocast over fp32 weights: 4 + 4 + 8 bytes of states; bf16 casts of the matmul weights are saved."""
    spec = get_model_preset("llama2-7b")
    psi = count_params(spec).total
    amp = estimate(spec, H100, 1, Layout(dtype="amp"), 1, 2048)
    bf16 = estimate(spec, H100, 1, Layout(dtype="bf16"), 1, 2048)
    assert amp.memory["weights_gib"] * GIB == 4 * psi and amp.memory["optimizer_gib"] * GIB == 8 * psi
    casts = (
        psi - spec.vocab_size * spec.d_model - (2 * spec.n_layers + 1) * spec.d_model
    ) * 2  # not the lookup table or norms
    residual = spec.n_layers * 2048 * 2 * spec.d_model * 2  # two fp32 norm inputs instead of bf16 per layer
    extra = (amp.memory["activations_gib"] - bf16.memory["activations_gib"]) * GIB
    assert extra == pytest.approx(casts + residual, rel=1e-9)
    assert amp.mfu == pytest.approx(bf16.mfu, rel=0.05)  # same bf16 peak


def test_context_expert_hsdp_and_fp8() -> None:
    llama = get_model_preset("llama3-8b")
    one = estimate(llama, H100, 8, Layout(dp=8, zero=3), 8, 8192).memory
    cp4 = estimate(llama, H100, 8, Layout(dp=2, cp=4, zero=3), 2, 8192).memory
    assert cp4["activations_gib"] == pytest.approx(one["activations_gib"] / 4, rel=1e-12)
    assert cp4["weights_gib"] == pytest.approx(one["weights_gib"], rel=1e-12)  # ZeRO shards over dp x cp
    hsdp = estimate(llama, H100, 16, Layout(dp=16, zero=3, replicate=2), 16, 8192).memory
    full = estimate(llama, H100, 16, Layout(dp=16, zero=3), 16, 8192).memory
    assert hsdp["optimizer_gib"] == pytest.approx(2 * full["optimizer_gib"], rel=1e-12)
    fp8 = estimate(llama, H100, 1, Layout(dtype="fp8"), 1, 8192).memory
    bf16 = estimate(llama, H100, 1, Layout(), 1, 8192).memory
    assert fp8["weights_gib"] == pytest.approx(bf16["weights_gib"] * 1.5, rel=1e-12)  # + 1 byte fp8 copy
    moe = get_model_preset("mixtral-8x7b")
    ep1 = estimate(moe, H100, 8, Layout(dp=8), 8, 4096).memory["weights_gib"]
    ep8 = estimate(moe, H100, 8, Layout(dp=8, ep=8), 8, 4096).memory["weights_gib"]
    p = count_params(moe)
    experts = p.mlp * 2 / GIB
    assert ep1 - ep8 == pytest.approx(experts * 7 / 8, rel=1e-9)


def test_interleaved_last_stage_keeps_its_warmup_chunks() -> None:
    """Interleaved 1F1B: the last rank warms up with (v - 1) p chunks of L / (p v) layers, so it keeps
    ((v - 1) p + 1) / v microbatches of its L / p layers (one without interleaving); measured on the trainer by
    benchmarks/layout_parity.py."""
    from isoflop.perf.memory import memory_bytes_by_stage
    from isoflop.perf.workload import Workload

    spec = get_model_preset("llama2-7b")
    const = load_constants("h100-sxm")
    acts = {}
    for v in (1, 2, 4):
        la = _arrays(pp=4, interleave=v)
        first, last = memory_bytes_by_stage(Workload(spec, H100, 128, 64, 4096), la, const)
        acts[v] = (first["activations_gib"][0], last["activations_gib"][0])
    one_mb = acts[1][1]
    assert acts[1][0] == pytest.approx(4 * one_mb, rel=1e-12)  # min(p, m) = 4 on the first stage
    assert acts[2][1] == pytest.approx(one_mb * (1 * 4 + 1) / 2, rel=1e-12)
    assert acts[4][1] == pytest.approx(one_mb * (3 * 4 + 1) / 4, rel=1e-12)
    assert acts[2][0] == pytest.approx(4 * one_mb * (1 + 3 / 8), rel=1e-12)
