"""Layout search: the vectorised search equals a brute force over scalar ``estimate`` calls."""

from __future__ import annotations

import itertools

import pytest

from isoflop.errors import IsoflopError
from isoflop.hardware import get_gpu
from isoflop.perf import Layout, estimate, fit_hints, search_layouts
from isoflop.spec import get_model_preset

H100 = get_gpu("h100-sxm")


def test_search_equals_brute_force_over_estimate() -> None:
    spec, n, batch, seq = get_model_preset("gpt3-1.3b"), 8, 16, 2048
    fixed = dict(cp=1, interleave=1, offload=False, replicate=1)
    brute = []
    for tp, pp, zero, rc, sp, mb in itertools.product(
        (1, 2, 4, 8), (1, 2, 4, 8), (0, 1, 2, 3), ("none", "selective", "full", "op"), (False, True), (1, 2, 4, 8, 16)
    ):
        if n % (tp * pp):
            continue
        layout = Layout(tp=tp, pp=pp, dp=n // (tp * pp), zero=zero, recompute=rc, sequence_parallel=sp, micro_batch=mb)
        if zero and layout.dp == 1:
            continue  # the search skips sharding over a single replica (identical to zero=0)
        try:
            est = estimate(spec, H100, n, layout, batch, seq)
        except IsoflopError:
            continue
        if est.fits:
            brute.append(est)
    found = search_layouts(spec, H100, n, batch, seq, fixed=fixed, top_k=10_000)
    assert len(found) == len(brute) > 50
    assert found[0].tokens_per_s == pytest.approx(max(e.tokens_per_s for e in brute), rel=1e-12)
    by_layout = {e.layout: e for e in brute}
    for est in found:
        ref = by_layout[est.layout]
        assert est.step_time_s == pytest.approx(ref.step_time_s, rel=1e-12)
        assert est.memory == pytest.approx(ref.memory, rel=1e-12)
    speeds = [e.tokens_per_s for e in found]
    assert all(a >= b * 0.995 for a, b in zip(speeds, speeds[1:]))  # best first (ties within 0.5%)


def test_fixed_knobs_are_held() -> None:
    found = search_layouts(
        get_model_preset("llama3-8b"), H100, 16, 64, 8192, fixed={"tp": 2, "recompute": "full"}, top_k=20
    )
    assert found and all(e.layout.tp == 2 and e.layout.recompute == "full" for e in found)


def test_llama3_70b_on_64_h100_answers_sensibly() -> None:
    """(Its speed is measured in benchmarks/layout_search_rate.py, not here.)"""
    found = search_layouts(get_model_preset("llama3-70b"), H100, 64, 512, 8192, top_k=5)
    best = found[0]
    assert best.fits and best.layout.tp <= 8 and 0.2 < best.mfu < 0.7
    assert "fastest" in best.extra["reason"]


def test_nothing_fits_gives_hints() -> None:
    spec = get_model_preset("llama3-405b")
    assert search_layouts(spec, H100, 8, 64, 8192) == []
    hints = fit_hints(spec, H100, 8, 64, 8192)
    assert any("GPUs" in h for h in hints)
    relaxed = fit_hints(
        get_model_preset("llama3-70b"), H100, 64, 512, 8192, fixed={"zero": 0, "recompute": "none", "tp": 1}
    )
    assert any("ZeRO-3" in h or "recomputation" in h or "drop" in h for h in relaxed)


def test_search_and_validate_agree_on_hsdp_and_uneven_stages() -> None:
    """One rule set: every (zero, replicate, pp, interleave) the search keeps passes ``validate``, and every
    combination ``validate`` accepts is in the search (replicate limited to node-aligned groups)."""
    from isoflop.perf.layout import validate
    from isoflop.perf.search import candidates
    from isoflop.perf.workload import Workload

    spec, n, batch, seq = get_model_preset("llama3-8b"), 32, 64, 4096
    fixed = dict(tp=1, cp=1, micro_batch=1, offload=False, sequence_parallel=False, recompute="none")
    la = candidates(Workload(spec, H100, n, batch, seq), fixed)
    found = {(int(la.zero[i]), int(la.replicate[i]), int(la.pp[i]), int(la.interleave[i])) for i in range(len(la))}
    for zero, replicate, pp, v in itertools.product((0, 1, 2, 3), (1, 2, 4), (1, 2, 4, 8, 16, 32), (1, 2, 3, 4)):
        layout = Layout(pp=pp, dp=n // pp, zero=zero, replicate=replicate, interleave=v)
        try:
            validate(layout, spec, n, batch, seq)
            ok = not (zero and layout.dp == 1)  # the search skips sharding over one replica (= zero 0)
        except IsoflopError:
            ok = False
        assert ((zero, replicate, pp, v) in found) == ok, (zero, replicate, pp, v)


def test_layout_knobs_are_listed_once() -> None:
    """``KNOBS`` is the ``Layout`` fields but dtype/optimizer, in order; the array form and its round trip follow
    it, and an enumeration member and its string are one layout (equal and hashed alike)."""
    from dataclasses import fields

    from isoflop.perf.layout import KNOBS, RECOMPUTE, LayoutArrays, Recompute

    assert tuple(f.name for f in fields(Layout) if f.name not in ("dtype", "optimizer")) == KNOBS
    assert tuple(f.name for f in fields(LayoutArrays)) == KNOBS
    assert RECOMPUTE == ("none", "selective", "full", "op")
    layouts = [Layout(tp=2, pp=2, dp=2, recompute=r, sequence_parallel=True, micro_batch=4) for r in Recompute]
    la = LayoutArrays.from_layouts(layouts)
    assert [la.layout(i, "bf16", "adamw") for i in range(len(la))] == layouts
    assert {Layout(recompute=Recompute.OP): 1}[Layout(recompute="op")] == 1
