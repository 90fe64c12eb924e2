"""Layout search: enumerate every valid layout as numpy arrays, evaluate them all at once, keep the best.

Ranking: predicted tokens/s, ties (within 0.5%) broken by memory headroom. Knobs in ``fixed`` are held;
the rest range over divisors (``tp`` within a node, ``pp`` of the GPU count up to the layer count, with
uneven stages, ``cp`` the sequence,
``micro_batch`` the per-replica batch), ZeRO 0-3, the three recompute policies, sequence parallel on/off,
interleaving 1/2/3/4/6/8 (dividing the layers per stage) and optimizer offload on/off.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.hardware import GPU
from isoflop.perf.constants import PerfConstants, load_constants
from isoflop.perf.estimate import Estimate, build_estimate, evaluate
from isoflop.perf.layout import (
    KNOBS,
    OPTIMIZERS,
    PRECISIONS,
    RECOMPUTE,
    Layout,
    LayoutArrays,
    batch_ok,
    ep_ok,
    hsdp_ok,
    interleave_ok,
    peak_dtype,
    sp_ok,
    tp_ok,
    validate,
)
from isoflop.perf.workload import Workload
from isoflop.spec.model import ModelSpec

MAX_MICRO_BATCH = 64
INTERLEAVES = (1, 2, 3, 4, 6, 8)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _choices(w: Workload) -> dict[str, list[Any]]:
    spec, gpu, n_gpus, global_batch, seq_len = w.spec, w.gpu, w.n_gpus, w.global_batch, w.seq_len
    gpu_divs = _divisors(n_gpus)
    return {
        "tp": [t for t in gpu_divs if t <= gpu.gpus_per_node and tp_ok(t, spec.n_heads, spec.n_kv_heads)],
        "pp": [p for p in gpu_divs if p <= spec.n_layers],
        "cp": [c for c in gpu_divs if seq_len % c == 0 and (c == 1 or seq_len // c >= 512)],
        "ep": [e for e in gpu_divs if spec.n_experts % e == 0] if spec.is_moe else [1],
        "zero": [0, 1, 2, 3],
        "recompute": list(range(len(RECOMPUTE))),  # every policy, torchtitan's op-level SAC included
        "sequence_parallel": [False, True],
        "micro_batch": [b for b in _divisors(global_batch) if b <= MAX_MICRO_BATCH],
        "interleave": list(INTERLEAVES),
        "offload": [False, True],
        "replicate": sorted({1, *(r for r in gpu_divs if r > 1 and (n_gpus // r) % gpu.gpus_per_node == 0)}),
    }


def _encode_fixed(fixed: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fixed.items():
        if value is None:
            continue
        if key not in KNOBS and key not in ("dtype", "optimizer"):
            raise IsoflopError(f"cannot fix unknown layout knob {key!r}; use one of {', '.join(KNOBS)}")
        out[key] = RECOMPUTE.index(value) if key == "recompute" and isinstance(value, str) else value
    return out


def candidates(w: Workload, fixed: dict[str, Any] | None = None) -> LayoutArrays:
    """Every valid layout (as arrays) with the ``fixed`` knobs held; ``dp`` is derived from the others."""
    spec, n_gpus, global_batch = w.spec, w.n_gpus, w.global_batch
    fix = _encode_fixed(fixed or {})
    choices = _choices(w)
    for key, value in fix.items():
        if key in choices:
            choices[key] = [value]
    # stage 1: the degrees and the micro-batch (few combinations survive the divisibility rules)
    shape_keys = ("tp", "pp", "cp", "ep", "micro_batch", "replicate")
    grids = np.meshgrid(*(np.asarray(choices[k]) for k in shape_keys), indexing="ij")
    base = {k: g.ravel() for k, g in zip(shape_keys, grids)}
    denom = base["tp"] * base["pp"] * base["cp"]
    ok = n_gpus % denom == 0
    dp = np.where(ok, n_gpus // np.maximum(denom, 1), 0)
    if "dp" in fix:
        ok &= dp == fix["dp"]
    ok &= dp >= 1
    dpc = dp * base["cp"]
    ok &= batch_ok(global_batch, np.maximum(dp, 1), base["micro_batch"])
    ok &= ep_ok(base["ep"], dpc, spec.n_experts if spec.is_moe else 0)
    ok &= hsdp_ok(base["replicate"], 3, dpc)  # the rule with the most permissive ZeRO stage; stage 2 applies it
    keep = np.nonzero(ok)[0]
    base = {k: v[keep] for k, v in base.items()}
    base["dp"] = dp[keep]
    # stage 2: cross with the flags (ZeRO, recompute, SP, interleave, offload) and apply their rules
    flag_keys = ("zero", "recompute", "sequence_parallel", "interleave", "offload")
    fgrids = np.meshgrid(*(np.asarray(choices[k]) for k in flag_keys), indexing="ij")
    flags = {k: g.ravel() for k, g in zip(flag_keys, fgrids)}
    n_base, n_flags = keep.size, flags["zero"].size
    cols = {k: np.repeat(v, n_flags) for k, v in base.items()}
    cols.update({k: np.tile(v, n_base) for k, v in flags.items()})
    dpc = cols["dp"] * cols["cp"]
    ok = sp_ok(cols["sequence_parallel"], cols["tp"])
    ok &= interleave_ok(cols["interleave"], cols["pp"], spec.n_layers)
    ok &= hsdp_ok(cols["replicate"], cols["zero"], dpc)
    ok &= ~((cols["zero"] >= 1) & (dpc == 1) & ("zero" not in fix))  # sharding over one replica is a no-op
    ok &= ~(cols["offload"] & (cols["zero"] == 0) & ("offload" not in fix))
    idx = np.nonzero(ok)[0]
    return LayoutArrays(**{k: cols[k][idx] for k in KNOBS})


def _ranked(row: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    idx = np.nonzero(mask)[0]
    if idx.size == 0:
        return idx
    tps = row["tokens_per_s"][idx]
    bucket = np.floor(np.log(tps) / np.log1p(0.005))  # ties: within 0.5% of tokens/s
    headroom = -row["total_gib"][idx]
    order = np.lexsort((-headroom, -bucket))
    return idx[order]


def _reason(best: Estimate, est: Estimate, rank: int) -> str:
    b, e = best.breakdown, est.breakdown
    headroom = f"{est.headroom_gib:.1f} GiB free"
    if rank == 0:
        big = max(("bubble_s", "exposed_comm_s", "recompute_s", "memory_bound_s"), key=lambda k: e[k])
        return (
            f"fastest; largest overhead {big.removesuffix('_s')} {e[big] / est.step_time_s:.0%} of the step; {headroom}"
        )
    gap = est.tokens_per_s / best.tokens_per_s - 1.0
    keys = ("bubble_s", "exposed_comm_s", "recompute_s", "memory_bound_s", "gemm_s", "attention_s", "optimizer_s")
    worst = max(keys, key=lambda k: e[k] - b[k])
    diff = e[worst] - b[worst]
    if abs(gap) < 0.005:
        return f"ties #1 on speed, less headroom ({headroom})"
    return f"{gap:+.1%} tokens/s vs #1: {worst.removesuffix('_s')} +{diff:.3g} s/step; {headroom}"


def search_layouts(
    spec: ModelSpec,
    gpu: GPU,
    n_gpus: int,
    global_batch: int,
    seq_len: int,
    fixed: dict | None = None,
    top_k: int = 10,
    constants: PerfConstants | None = None,
) -> list[Estimate]:
    """The ``top_k`` fitting layouts, fastest first (each with ``extra['reason']``); ``[]`` when none fits."""
    fixed = dict(fixed or {})
    w = _workload(Workload(spec, gpu, n_gpus, global_batch, seq_len), fixed)
    dtype, optimizer = w.dtype, w.optimizer
    if dtype not in PRECISIONS:
        raise IsoflopError(f"dtype must be one of {', '.join(PRECISIONS)}, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise IsoflopError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    gpu.peak_flops(peak_dtype(dtype))
    const = constants or load_constants(gpu.name)
    la = candidates(w, fixed)
    if len(la) == 0:
        _explain_no_candidate(w, fixed)
    row = evaluate(w, la, const)
    order = _ranked(row, row["fits"])[:top_k]
    out: list[Estimate] = []
    for rank, i in enumerate(order):
        est = build_estimate(row, int(i), la.layout(int(i), dtype, optimizer), w, const)
        est.extra["rank"] = rank + 1
        est.extra["reason"] = _reason(out[0] if out else est, est, rank)
        out.append(est)
    return out


def _workload(w: Workload, fixed: dict[str, Any]) -> Workload:
    """``w`` with the dtype and optimizer popped from ``fixed`` (bf16 and AdamW unless fixed)."""
    return replace(w, dtype=fixed.pop("dtype", None) or "bf16", optimizer=fixed.pop("optimizer", None) or "adamw")


def _explain_no_candidate(w: Workload, fixed: dict[str, Any]) -> None:
    """No valid layout at all: validate the fixed knobs to name the broken constraint."""
    spec, n_gpus, global_batch, seq_len = w.spec, w.n_gpus, w.global_batch, w.seq_len
    lay = Layout(**{k: v for k, v in fixed.items() if k in Layout.field_names()})
    if "dp" not in fixed:
        denom = lay.tp * lay.pp * lay.cp
        if n_gpus % denom:
            raise IsoflopError(
                f"tp*pp*cp = {lay.tp}*{lay.pp}*{lay.cp} = {denom} does not divide the GPU count {n_gpus}; "
                "choose degrees whose product divides it"
            )
        lay = lay.replace(dp=n_gpus // denom)
    validate(lay, spec, n_gpus, global_batch, seq_len)
    raise IsoflopError(
        f"no valid layout for {n_gpus} GPUs, global batch {global_batch}, seq_len {seq_len} with "
        f"{fixed or 'no knobs'} fixed; "
        "choose a global batch divisible by the data-parallel degree, or fewer fixed knobs"
    )


def fit_hints(
    spec: ModelSpec,
    gpu: GPU,
    n_gpus: int,
    global_batch: int,
    seq_len: int,
    fixed: dict | None = None,
    constants: PerfConstants | None = None,
) -> list[str]:
    """What would make something fit when nothing does: relax fixed knobs, add GPUs, shorten the sequence."""
    fixed = dict(fixed or {})
    hints: list[str] = []
    const = constants or load_constants(gpu.name)
    w = Workload(spec, gpu, n_gpus, global_batch, seq_len)
    relax = [
        ("zero", 3, "ZeRO-3 (--zero 3)"),
        ("recompute", "full", "full recomputation (--recompute full)"),
        ("offload", True, "optimizer offload (--offload)"),
        ("micro_batch", 1, "micro-batch 1"),
    ]
    for key, value, text in relax:
        if key in fixed and fixed[key] != value:
            trial = {**fixed, key: value}
            if _fits_any(w, trial, const):
                hints.append(f"use {text} instead of {key}={fixed[key]}")
    if not hints:
        free = {k: v for k, v in fixed.items() if k in ("dtype", "optimizer")}
        if free != fixed and _fits_any(w, free, const):
            hints.append(
                "drop the fixed knobs (" + ", ".join(f"{k}={v}" for k, v in fixed.items() if k not in free) + ")"
            )
    for factor in (2, 4, 8, 16, 32):
        more = n_gpus * factor
        if _fits_any(replace(w, n_gpus=more), fixed, const):
            hints.append(f"use at least {more} GPUs ({factor}x) so ZeRO-3/pipeline sharding spreads the model states")
            break
    s = seq_len
    while s > 128:
        s //= 2
        if _fits_any(replace(w, seq_len=s), fixed, const):
            hints.append(f"shorten the sequence to {s} tokens (or keep it and add context parallelism with more GPUs)")
            break
    if not hints:
        hints.append(
            f"the model states alone exceed {gpu.memory_gib:.0f} GiB x {n_gpus} GPUs; use a GPU with more memory"
        )
    return hints


def _fits_any(w: Workload, fixed: dict[str, Any], const: PerfConstants) -> bool:
    """Whether any layout with ``fixed`` held fits in memory."""
    fixed = dict(fixed)
    w = _workload(w, fixed)
    try:
        la = candidates(w, fixed)
    except IsoflopError:
        return False
    if len(la) == 0:
        return False
    return bool(evaluate(w, la, const)["fits"].any())


__all__ = ["candidates", "fit_hints", "search_layouts"]
