"""``comm_bytes`` (isoflop.perf.comm) against closed forms: Korthikanti et al. 2022 (tensor/sequence parallel),
Narayanan et al. 2021 (pipeline point-to-point), Rajbhandari et al. 2020 (ZeRO data parallel); the measured
counterpart on the real trainer is benchmarks/layout_parity.py."""

from __future__ import annotations

import pytest

from isoflop.hardware import get_gpu
from isoflop.perf import Layout, estimate, load_constants
from isoflop.perf.comm import CommBytes, comm_bytes, rank_comm_bytes
from isoflop.spec import ModelSpec
from isoflop.spec.accounting import count_params

H100 = get_gpu("h100-sxm")
CONST = load_constants("h100-sxm")
# GPT-3 175B shapes (Korthikanti et al. 2022, Table 3), shortened to 8 layers
GPT = ModelSpec(
    d_model=12288,
    n_layers=8,
    n_heads=96,
    d_ff=4 * 12288,
    vocab_size=51200,
    max_seq_len=2048,
    norm="layernorm",
    mlp="gelu",
    position="learned",
    tie_embeddings=False,
    bias=True,
)
S, H = 2048, 12288


def test_tensor_parallel_volume_is_four_reductions_per_layer() -> None:
    """Per layer and microbatch 2 forward + 2 backward all-reduces of s b h (Shoeybi 2019 Sec. 3); sequence
    parallelism turns each into one all-gather and one reduce-scatter of the same s b h (Korthikanti Sec. 4.2.2);
    the embedding and head add one each; full recomputation adds the 2 forward ones again."""
    b, m, bf16 = 2, 4, 2.0
    sbh = S * b * H * bf16
    loss = m * 3 * S * b * 4.0  # max, target logit, sum-exp: fp32 per token (vocabulary-parallel cross-entropy)
    lay = Layout(tp=8, micro_batch=b)
    plain = comm_bytes(GPT, lay, m * b, S, CONST).tp
    assert plain.all_reduce == pytest.approx(m * (4 * GPT.n_layers + 2) * sbh + loss, rel=1e-12)
    assert plain.all_gather == plain.reduce_scatter == 0.0
    sp = comm_bytes(GPT, lay.replace(sequence_parallel=True), m * b, S, CONST).tp
    assert sp.all_gather == sp.reduce_scatter == pytest.approx(m * (4 * GPT.n_layers + 2) * sbh, rel=1e-12)
    norms = (2 * GPT.n_layers + 1) * 2 * H * bf16  # LayerNorm weight + bias gradients, once per step
    assert sp.all_reduce == pytest.approx(loss + norms, rel=1e-12)
    full = comm_bytes(GPT, lay.replace(sequence_parallel=True, recompute="full"), m * b, S, CONST).tp
    assert full.all_gather == pytest.approx(m * (6 * GPT.n_layers + 2) * sbh, rel=1e-12)


def test_pipeline_sends_one_activation_per_microbatch_and_boundary() -> None:
    """Each stage boundary carries s b h (/ t under SP) forward and its gradient back, per microbatch."""
    b, m = 1, 8
    sbh = S * b * H * 2.0
    lay = Layout(pp=4, micro_batch=b)
    ends = rank_comm_bytes(GPT, lay, m * b, S, CONST, 0).pp
    middle = rank_comm_bytes(GPT, lay, m * b, S, CONST, 1).pp
    assert ends.send == ends.recv == m * sbh
    assert middle.send == middle.recv == 2 * m * sbh
    sp = rank_comm_bytes(GPT, lay.replace(tp=2, sequence_parallel=True), m * b, S, CONST, 3).pp
    assert sp.send == m * sbh / 2
    # interleaved, p = 2, v = 2: rank 0 holds virtual stages 0 (one boundary) and 2 (two)
    inter = rank_comm_bytes(GPT, Layout(pp=2, interleave=2, micro_batch=b), m * b, S, CONST, 0).pp
    assert inter.send == 3 * m * sbh


def test_data_parallel_volume_follows_zero_stage() -> None:
    """ZeRO-0 all-reduces the bf16 gradients once per step; ZeRO-3 (FSDP2) reduce-scatters them once and
    all-gathers the weights forward and backward of every microbatch (Rajbhandari et al. 2020, Sec. 5)."""
    psi = count_params(GPT).total
    b, m, dp = 1, 4, 8
    ddp = comm_bytes(GPT, Layout(dp=dp, micro_batch=b), m * b * dp, S, CONST).dp
    assert ddp.all_reduce == pytest.approx(2.0 * psi, rel=1e-12) and ddp.all_gather == 0.0
    z3 = comm_bytes(GPT, Layout(dp=dp, zero=3, micro_batch=b), m * b * dp, S, CONST).dp
    assert z3.reduce_scatter == pytest.approx(2.0 * psi, rel=1e-12)
    assert z3.all_gather == pytest.approx(2 * m * 2.0 * psi, rel=1e-12)
    z2 = comm_bytes(GPT, Layout(dp=dp, zero=2, micro_batch=b), m * b * dp, S, CONST).dp
    assert z2.all_gather == pytest.approx(m * 2.0 * psi, rel=1e-12)
    # under a pipeline the weights stay gathered between backwards: m + 1 gathers a step (ZeRO-3)
    piped = [rank_comm_bytes(GPT, Layout(pp=2, dp=4, zero=3), 4 * m, S, CONST, r).dp for r in (0, 1)]
    assert sum(p.all_gather for p in piped) == pytest.approx((m + 1) * 2.0 * psi, rel=1e-12)
    # pipeline ranks split the parameters; together they hold the whole model once
    ranks = [rank_comm_bytes(GPT, Layout(pp=2, dp=4), 8, S, CONST, r).dp.all_reduce for r in (0, 1)]
    assert sum(ranks) == pytest.approx(2.0 * psi, rel=1e-12)


def test_estimate_json_carries_comm_bytes_per_group() -> None:
    est = estimate(GPT, H100, 16, Layout(tp=2, pp=2, dp=4, sequence_parallel=True, zero=1), 32, S)
    assert isinstance(est.comm_bytes, CommBytes)
    out = est.to_dict()["comm_bytes"]
    assert set(out) == {"tp", "pp", "dp", "cp", "ep"}
    assert out["tp"]["total"] == out["tp"]["all_gather"] + out["tp"]["reduce_scatter"] + out["tp"]["all_reduce"]
    assert out["cp"]["total"] == out["ep"]["total"] == 0.0 and out["pp"]["send"] > 0 and out["dp"]["total"] > 0
