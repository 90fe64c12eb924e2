"""Training-step throughput on CPU: isoflop's Transformer + AdamW vs Hugging Face LlamaForCausalLM.

Both sides run a full step (forward, loss, backward, AdamW step, zero_grad) on the same shape, batch
and precision, in one process, interleaved (the order alternates every repeat), and the median step
time of each side gives tokens/s. ``ratio = tokens/s(isoflop) / tokens/s(transformers)``.

Each side uses its stock setup: isoflop's ``build_optimizer`` (fused AdamW, weight-decay groups) and
``model(idx, targets)``; transformers' ``LlamaForCausalLM`` with its default SDPA attention,
``model(input_ids, labels=...)`` and ``torch.optim.AdamW(model.parameters())`` with PyTorch's default
implementation. The allocator setting (``isoflop.train.cpu.tune_allocator``) is process-wide, so both
sides get it (``--no-tune-allocator`` turns it off for both).

MFU = model FLOPs of the step (``isoflop.spec.accounting.flops_per_step``: 6N-style matmul FLOPs with
the full s x s attention square) / step time / measured CPU matmul peak of the dtype
(``isoflop.train.cpu_peak.measured_peak_flops``). A peak below the fastest step's rate (measured under load)
is measured again; if it is still below, MFU is null with ``mfu_note`` (never above 1).

Shapes (Llama family):
  d512: d_model 512, 8 layers, 8 heads, d_ff 1376, vocab 4096, untied, seq 256, batch 8;
  ladder-largest: the largest model (most parameters) of the default ladder's grid, built here by the
  ladder's own grid design (``isoflop.ladder.grid.design_grid`` on the ``quick`` preset, the held-out run
  excluded), with that ladder's seq_len and batch (``batch_seqs``). The spec used is printed and is in the JSON.

Each repeat times a block of consecutive steps of one side, as many as make the block last
``--min-block-s`` (0.5 s; one step for the larger shape, tens for the ladder's tiny model).

Run: ``python benchmarks/train_throughput.py`` (``--repeats``, ``--repeats-bf16``, ``--shapes``, ``--dtypes``).
Each case also reports ``paired_ratio_median`` (median of the per-repeat ratios) and ``best_step_ratio``
(ratio of the fastest steps), two checks that are less sensitive to other jobs on a shared machine. The last line
of output is one JSON object with ``ratio`` (the minimum over shapes and dtypes) and the per-case results.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from isoflop.spec import ModelSpec  # noqa: E402
from isoflop.spec.accounting import flops_per_step  # noqa: E402
from isoflop.train.cpu import tune_allocator  # noqa: E402
from isoflop.train.cpu_peak import machine_busy, measured_peak_flops  # noqa: E402
from isoflop.train.cpu_peak import mfu as cpu_mfu  # noqa: E402
from isoflop.train.export import hf_config, hf_state_dict  # noqa: E402
from isoflop.train.model import build_model  # noqa: E402
from isoflop.train.optim import build_optimizer  # noqa: E402

DEFAULT_LADDER = "quick"


def ladder_largest(preset: str = DEFAULT_LADDER) -> tuple[ModelSpec, int]:
    """The largest model of ``preset``'s grid (as the ladder designs it) and the ladder's batch in sequences;
    the spec's ``max_seq_len`` is the ladder's ``seq_len``."""
    from isoflop.ladder.grid import design_grid
    from isoflop.ladder.presets import get_ladder_preset

    design = get_ladder_preset(preset)
    largest = max(design_grid(design), key=lambda p: (p.n_params, p.n_params_non_embedding)).spec
    return largest.model_copy(update={"name": f"{preset}-ladder-largest"}), design.batch_seqs


SHAPES = {
    "d512": lambda: (
        ModelSpec(name="d512", d_model=512, n_layers=8, n_heads=8, d_ff=1376, vocab_size=4096, max_seq_len=256),
        8,
    ),
    "ladder-largest": ladder_largest,
}
LR, BETAS, WD = 1e-4, (0.9, 0.95), 0.1


def _sides(spec: ModelSpec):
    """Our model + optimizer and the transformers model (same weights) + optimizer."""
    import transformers

    ours = build_model(spec, seed=0).train()
    config = transformers.AutoConfig.for_model(**hf_config(spec))
    hf = transformers.LlamaForCausalLM(config).train()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours.state_dict(), spec), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if spec.tie_embeddings else set()):
        raise RuntimeError(f"weights do not match transformers' model: missing {missing}, unexpected {unexpected}")
    if spec.tie_embeddings:
        hf.tie_weights()
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return (ours, build_optimizer(ours, lr=LR, weight_decay=WD, betas=BETAS)), (
        hf,
        torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=WD, betas=BETAS),
    )


def _step_ours(model, opt, x, y, autocast: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _step_hf(model, opt, x, y, autocast: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=x, labels=y).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def run_case(name: str, dtype: str, repeats: int, warmup: int, min_block_s: float = 0.5) -> dict:
    """Time both sides on one shape and dtype; medians, MFU and the ratio."""
    spec, batch = SHAPES[name]()
    seq = spec.max_seq_len
    (ours, opt_ours), (hf, opt_hf) = _sides(spec)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.vocab_size, (batch, seq + 1), generator=gen)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    autocast = dtype == "bf16"
    sides = {
        "isoflop": lambda: _step_ours(ours, opt_ours, x, y, autocast),
        "transformers": lambda: _step_hf(hf, opt_hf, x, x, autocast),
    }  # HF shifts labels itself
    for _ in range(warmup):
        for step in sides.values():
            step()
    # Steps per timed block: enough for a block to last about ``min_block_s`` (tiny models step in
    # milliseconds); a repeat's time is its block's time per step.
    single = []
    for step in sides.values():
        start = time.perf_counter()
        step()
        single.append(time.perf_counter() - start)
    inner = max(1, math.ceil(min_block_s / max(single)))
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(inner):
                sides[key]()
            times[key].append((time.perf_counter() - start) / inner)
    step_flops = flops_per_step(spec, batch, seq).model
    best = min(min(ts) for ts in times.values())
    _, peak, mfu_note = cpu_mfu(step_flops / best, dtype)  # re-measures a peak below the fastest step's rate
    result: dict = {
        "shape": name,
        "dtype": dtype,
        "batch": batch,
        "seq_len": seq,
        "steps_per_repeat": inner,
        "spec": spec.model_dump(),
        "peak_tflops": peak / 1e12,
        "peak_busy_machine": machine_busy(),
    }
    if mfu_note:
        result["mfu_note"] = mfu_note
    for key, ts in times.items():
        med = statistics.median(ts)
        result[key] = {
            "step_s": med,
            "tokens_per_s": batch * seq / med,
            "mfu": step_flops / med / peak if step_flops / med <= peak else None,
            "step_s_all": [round(t, 4) for t in ts],
        }
    result["ratio"] = result["isoflop"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    # Robustness check on a shared machine: the median of per-repeat ratios (each pair ran back to back).
    result["paired_ratio_median"] = statistics.median(h / o for o, h in zip(times["isoflop"], times["transformers"]))
    result["best_step_ratio"] = min(times["transformers"]) / min(times["isoflop"])
    return result


def _fmt_mfu(mfu: float | None) -> str:
    return "n/a" if mfu is None else f"{mfu:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="d512,ladder-largest")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--repeats-bf16", type=int, default=None, help="repeats for bf16 (default: --repeats)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-block-s", type=float, default=0.5, help="time steps in blocks of at least this long")
    parser.add_argument("--no-tune-allocator", action="store_true")
    args = parser.parse_args()
    if not args.no_tune_allocator:
        tune_allocator()
    torch.manual_seed(0)
    results = []
    for name in args.shapes.split(","):
        if name not in SHAPES:
            parser.error(f"unknown shape {name!r}; use {', '.join(SHAPES)}")
        spec, batch = SHAPES[name]()
        print(f"{name}: {spec.model_dump_json()} batch {batch} seq {spec.max_seq_len}", flush=True)
        for dtype in args.dtypes.split(","):
            repeats = args.repeats_bf16 if dtype == "bf16" and args.repeats_bf16 else args.repeats
            res = run_case(name, dtype, repeats, args.warmup, args.min_block_s)
            results.append(res)
            print(
                f"{name:15s} {dtype:5s} isoflop {res['isoflop']['tokens_per_s']:8.0f} tok/s "
                f"(MFU {_fmt_mfu(res['isoflop']['mfu'])})  transformers {res['transformers']['tokens_per_s']:8.0f} "
                f"tok/s (MFU {_fmt_mfu(res['transformers']['mfu'])})  ratio {res['ratio']:.3f}"
                + (f"  [{res['mfu_note']}]" if res.get("mfu_note") else ""),
                flush=True,
            )
    summary = {
        "ratio": min(r["ratio"] for r in results),
        "ratios": {f"{r['shape']}/{r['dtype']}": round(r["ratio"], 4) for r in results},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tune_allocator": not args.no_tune_allocator,
        "peak_tflops": {d: measured_peak_flops(d) / 1e12 for d in args.dtypes.split(",")},
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
