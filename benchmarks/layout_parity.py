"""Tensor, pipeline and data parallelism on CPU/gloo against the performance model (``isoflop.perf``).

Each layout trains the tiny model of ``SPEC`` (fp32, AdamW) with the trainer's own code
(``isoflop.train.parallel.ParallelModel`` for tp/pp, FSDP2 through ``isoflop.train.distributed.wrap_model`` for
data parallelism) under ``torchrun`` with gloo: one warm-up step, then measured steps. Per rank it prints,
beside the model's prediction for the same layout and knobs (``isoflop estimate --framework torchtitan``;
``memory_bytes_by_stage`` for the rank's pipeline stage, ``rank_comm_bytes`` for its collectives):

* ``memory``: weights, gradients and optimizer states (the bytes of this rank's local shards: parameters,
  ``.grad`` when the optimizer steps, AdamW's moments; its scalar ``step`` counters are left out), and the peak
  activation bytes the transformer blocks save for backward (unique storages packed by
  ``saved_tensors_hooks`` inside ``model.layers``, parameters excluded, live until autograd frees them).
* ``comm``: collective message bytes per step (the full buffer each collective reduces or gathers, the
  bytes each send/recv moves), by group (tp, pp, dp) and kind, counted by a ``TorchDispatchMode`` over the
  functional and c10d collective ops (the ops ``CommDebugMode`` counts; DTensor is let to desugar first, as
  ``CommDebugMode`` does), against ``rank_comm_bytes`` (the busiest rank's is ``estimate --json``'s
  ``comm_bytes``). The reductions after the backward (the gradient norm: one fp32 per parameter tensor) and
  scalar ones (the loss average) are counted apart (``step_tail_bytes``, ``scalar_bytes``).
* ``bubble``: for pipeline layouts, the time each rank waits in the schedule's point-to-point receives over its
  busy time (``measured``), the same from a replay of the recorded schedule with the measured chunk times
  (``replayed``, ``replay``), against Narayanan et al. (2021)'s ``(p - 1) / (v m)``.

Run: ``python benchmarks/layout_parity.py --json`` (a few minutes on 2 loaded cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = {
    "name": "parity",
    "d_model": 64,
    "n_layers": 4,
    "n_heads": 4,
    "d_ff": 128,
    "vocab_size": 512,
    "max_seq_len": 64,
    "tie_embeddings": False,
}
SEQ, GLOBAL_BATCH, MICRO_BATCH = 32, 8, 2
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations")
# name -> (processes, the trainer's parallel section)
LAYOUTS: dict[str, tuple[int, dict]] = {
    "tp2": (2, {"tp": 2}),
    "pp2-1f1b": (2, {"pp": 2, "pp_schedule": "1f1b"}),
    "pp2-interleaved": (2, {"pp": 2, "interleave": 2}),
    "dp2-fsdp": (2, {"strategy": "fsdp"}),
    "tp2xdp2-fsdp": (4, {"tp": 2, "strategy": "fsdp"}),
    "tp2xpp2": (4, {"tp": 2, "pp": 2}),
    "pp2xdp2-fsdp": (4, {"pp": 2, "strategy": "fsdp"}),
}
MEASURED_STEPS = 5
FRAMEWORK = "torchtitan"  # torch's parallelize_module saves the all-gathered sequence-parallel inputs


# ----------------------------------------------------------------------------------------------------------------
# worker (under torchrun)
# ----------------------------------------------------------------------------------------------------------------
def _worker(names: list[str]) -> None:
    import time
    import weakref

    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import schedules
    from torch.distributed.pipelining import stage as stage_module
    from torch.utils._python_dispatch import TorchDispatchMode

    from isoflop.train.config import TrainConfig
    from isoflop.train.distributed import init_distributed, no_grad_sync, wrap_model
    from isoflop.train.model import build_model
    from isoflop.train.optim import build_named_optimizer
    from isoflop.train.parallel.apply import ParallelModel

    def local(t: torch.Tensor) -> torch.Tensor:
        return t._local_tensor if hasattr(t, "_local_tensor") else t

    def nbytes(t: torch.Tensor) -> int:
        t = local(t)
        return t.numel() * t.element_size()

    kinds = {
        "all_gather_into_tensor": "all_gather",
        "_allgather_base_": "all_gather",
        "allgather_": "all_gather",
        "reduce_scatter_tensor": "reduce_scatter",
        "_reduce_scatter_base_": "reduce_scatter",
        "reduce_scatter_": "reduce_scatter",
        "all_reduce": "all_reduce",
        "allreduce_": "all_reduce",
        "send": "send",
        "recv_": "recv",
        "all_to_all_single": "all_to_all",
        "alltoall_base_": "all_to_all",
    }

    class CommCounter(TorchDispatchMode):
        """Message bytes per (group, kind); reductions of scalars and those after the backward apart."""

        def __init__(self) -> None:
            super().__init__()
            self.bytes: dict[tuple[str, str, bool], int] = {}  # (group name, kind, functional) -> bytes
            self.scalar_bytes = 0
            self.tail = False  # after the backward pass: the gradient norm and the optimizer step
            self.tail_bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(t is not torch.Tensor and t.__name__ == "DTensor" for t in types):
                return NotImplemented  # let DTensor desugar into collectives first (as CommDebugMode does)
            kind = kinds.get(func._overloadpacket.__name__) if func.namespace in ("c10d", "_c10d_functional") else None
            if kind is not None:
                self._count(func, kind, args)
            return func(*args, **(kwargs or {}))

        def _count(self, func, kind: str, args) -> None:
            if func.namespace == "_c10d_functional":
                group = args[-1]
                size = nbytes(args[0]) * (args[1] if kind == "all_gather" else 1)  # full-buffer bytes
            else:
                pg = next(a for a in args if isinstance(a, torch.ScriptObject))
                group = dist.ProcessGroup.unbox(pg).group_name
                first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
                tensors = first if isinstance(first, (list, tuple)) else [first]
                size = sum(nbytes(t) for t in tensors)
                if kind == "reduce_scatter":  # the full input, not the output shard
                    inputs = args[1] if isinstance(args[1], torch.Tensor) else args[1][0]
                    size = sum(nbytes(t) for t in ([inputs] if isinstance(inputs, torch.Tensor) else inputs))
            if size <= 8:
                self.scalar_bytes += size
                return
            if self.tail:
                self.tail_bytes += size
                return
            key = (group, kind, func.namespace == "_c10d_functional")
            self.bytes[key] = self.bytes.get(key, 0) + size

    class SavedActivations:
        """Peak bytes of unique storages saved for backward inside the blocks (parameters excluded)."""

        def __init__(self, blocks: list[torch.nn.Module]) -> None:
            self.depth, self.live, self.peak, self.params = 0, {}, 0, set()
            for block in blocks:
                block.register_forward_pre_hook(self._enter)
                block.register_forward_hook(self._leave)

        def _enter(self, module, args) -> None:
            self.depth += 1
            self.params = {local(p).untyped_storage().data_ptr() for p in module.parameters()}

        def _leave(self, module, args, out) -> None:
            self.depth -= 1

        def pack(self, t: torch.Tensor) -> torch.Tensor:
            if self.depth:
                st = local(t).untyped_storage()
                ptr = st.data_ptr()
                if ptr not in self.params and ptr not in self.live and st.nbytes():
                    self.live[ptr] = st.nbytes()
                    weakref.finalize(st, self.live.pop, ptr, None)
                    self.peak = max(self.peak, sum(self.live.values()))
            return t

        def context(self):
            return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    waited = [0.0]
    original_wait = schedules._wait_batch_p2p

    def timed_wait(work):
        t0 = time.perf_counter()
        out = original_wait(work)
        waited[0] += time.perf_counter() - t0
        return out

    schedules._wait_batch_p2p = timed_wait
    ops: list[tuple[int, str, int, float]] = []  # (stage index, F/B, microbatch, seconds) in execution order
    base = stage_module._PipelineStageBase

    def timed_chunk(method, kind: str):
        def run(self, chunk, *args, **kwargs):
            t0 = time.perf_counter()
            out = method(self, chunk, *args, **kwargs)
            ops.append((self.stage_index, kind, chunk, time.perf_counter() - t0))
            return out

        return run

    base.forward_one_chunk = timed_chunk(base.forward_one_chunk, "F")
    base.backward_one_chunk = timed_chunk(base.backward_one_chunk, "B")

    env = init_distributed("cpu")
    results = []
    for name in names:
        counter = CommCounter()
        cfg = TrainConfig(
            model=SPEC,
            train={
                "seq_len": SEQ,
                "global_batch": GLOBAL_BATCH,
                "micro_batch": MICRO_BATCH,
                "max_steps": 2,
                "dtype": "fp32",
                "device": "cpu",
            },
            parallel=LAYOUTS[name][1],
        )
        gen = torch.Generator().manual_seed(env.rank)
        groups: dict[str, str] = {}
        if cfg.parallel.tp > 1 or cfg.parallel.pp > 1:
            pm = ParallelModel(cfg, env, "fp32")
            module, micro, accum = pm.module, pm.micro_batch, pm.accum
            for dim in ("tp", "pp"):
                groups[getattr(pm.groups, dim).get_group().group_name] = dim
            if pm.groups.dp is not None:
                groups[pm.groups.dp.get_group().group_name] = "dp"
            layers = module.layers
            blocks = list(layers.values()) if isinstance(layers, torch.nn.ModuleDict) else list(layers)
            coords = {"pp_rank": pm.pp_rank, "tp": pm.layout.tp, "pp": pm.layout.pp, "dp": pm.layout.dp}
            clip = pm._grad_norm_and_clip

            def tail_clip(value: float) -> float:
                counter.tail = True
                return clip(value)

            pm._grad_norm_and_clip = tail_clip
            step = lambda opt, sampler: pm.step(opt, sampler)  # noqa: E731
        else:
            model = build_model(cfg.model, "cpu", seed=cfg.train.seed)
            module = wrap_model(model, "fsdp", env, 1, cfg.parallel.fsdp_reshard())
            micro, accum = cfg.micro_batch_for(env.world)
            blocks = list(model.layers)
            coords = {"pp_rank": 0, "tp": 1, "pp": 1, "dp": env.world}

            def step(opt, sampler, module=module, accum=accum):
                for i in range(accum):
                    x, y = sampler.next_batch()
                    with no_grad_sync(module, i == accum - 1):
                        (module(x, y) / accum).backward()
                counter.tail = True
                torch.nn.utils.clip_grad_norm_(list(module.parameters()), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

        class Sampler:
            def next_batch(self):
                x = torch.randint(0, SPEC["vocab_size"], (micro, SEQ), generator=gen)
                return x, x

        opt = build_named_optimizer(module, cfg.optim)
        grads = [0]
        opt.register_step_pre_hook(
            lambda o, a, k: grads.__setitem__(
                0, sum(nbytes(p.grad) for g in o.param_groups for p in g["params"] if p.grad is not None)
            )
        )
        step(opt, Sampler())  # warm-up: optimizer states, pipeline shapes
        acts = SavedActivations(blocks)
        counter.__init__()
        times, waits, durations = [], [], {}
        for i in range(MEASURED_STEPS):
            dist.barrier()
            waited[0] = 0.0
            ops.clear()
            t0 = time.perf_counter()
            if i == 0:
                with counter, acts.context():
                    step(opt, Sampler())
            else:
                step(opt, Sampler())
            times.append(time.perf_counter() - t0)
            waits.append(waited[0])
            for st, kind, _, sec in ops:
                durations.setdefault(f"{st}{kind}", []).append(sec)
        params = {p for p in module.parameters()}
        states = [t for s in opt.state.values() for k, t in s.items() if k != "step" and torch.is_tensor(t)]
        comm: dict[str, dict[str, int]] = {}
        for (group, kind, functional), size in counter.bytes.items():
            # a group this rank's mesh slices do not name: DTensor collectives are tensor parallel, FSDP2's dp
            dim = groups.get(group) or ("tp" if functional else "pp" if kind in ("send", "recv") else "dp")
            comm.setdefault(dim, {})[kind] = comm.get(dim, {}).get(kind, 0) + size
        results.append(
            {
                "layout": name,
                "rank": env.rank,
                **coords,
                "microbatches": accum,
                "weights": sum(nbytes(p) for p in params),
                "gradients": grads[0],
                "optimizer": sum(nbytes(t) for t in states),
                "activations": acts.peak,
                "comm": comm,
                "scalar_bytes": counter.scalar_bytes,
                "tail_bytes": counter.tail_bytes,
                "wait_s": sorted(waits)[len(waits) // 2],
                "step_s": sorted(times)[len(times) // 2],
                "schedule": [[st, kind, mb] for st, kind, mb, _ in ops],  # the last step's order
                "op_s": {k: min(v) for k, v in durations.items()},  # fastest per stage and kind: the least disturbed
            }
        )
        del module, opt
        dist.barrier()
    gathered = [None] * env.world
    dist.all_gather_object(gathered, results)
    if env.rank == 0:
        print("RESULT " + json.dumps([r for rs in gathered for r in rs]))
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# the model's side and the tables
# ----------------------------------------------------------------------------------------------------------------
def _measure(nproc: int, names: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ISOFLOP_CACHE": tmp}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        proc = subprocess.run(
            [*cmd, __file__, "--worker", ",".join(names)], cwd=ROOT, env=env, capture_output=True, text=True
        )
    if proc.returncode:
        raise SystemExit(f"error: the {nproc}-process run failed:\n{proc.stderr[-3000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _layout(rec: dict):
    from isoflop.perf import Layout

    par = LAYOUTS[rec["layout"]][1]
    zero = 3 if par.get("strategy") == "fsdp" else 0
    return Layout(
        tp=rec["tp"],
        pp=rec["pp"],
        dp=rec["dp"],
        zero=zero,
        sequence_parallel=rec["tp"] > 1,
        micro_batch=MICRO_BATCH,
        interleave=par.get("interleave", 1),
        dtype="fp32",
        optimizer="adamw",
    )


def predict(rec: dict) -> dict:
    """The model's bytes for the rank of ``rec``: memory of its pipeline stage, message bytes of its collectives."""
    from isoflop.hardware import get_gpu
    from isoflop.perf import LayoutArrays, load_constants
    from isoflop.perf.comm import rank_comm_bytes
    from isoflop.perf.memory import memory_bytes_by_stage
    from isoflop.perf.workload import Workload
    from isoflop.spec import ModelSpec

    spec, lay, gpu = ModelSpec(**SPEC), _layout(rec), get_gpu("h100-sxm")
    const = load_constants(gpu.name, FRAMEWORK)
    work = Workload(spec, gpu, lay.dp * lay.tp * lay.pp * lay.cp, GLOBAL_BATCH, SEQ, lay.dtype, lay.optimizer)
    stages = memory_bytes_by_stage(work, LayoutArrays.from_layouts([lay]), const)
    mem = stages[0 if rec["pp_rank"] == 0 else 1]
    comm = rank_comm_bytes(spec, lay, GLOBAL_BATCH, SEQ, const, rec["pp_rank"])
    return {
        "memory": {k: float(mem[f"{k}_gib"][0]) for k in MEMORY_PARTS},
        "comm": {g: {k: v for k, v in c.items() if v and k != "total"} for g, c in comm.to_dict().items()},
        "bubble": (lay.pp - 1) / (lay.interleave * rec["microbatches"]) if lay.pp > 1 else None,
    }


def compare(measured: list[dict]) -> list[dict]:
    rows = []
    for rec in measured:
        pred = predict(rec)
        mem = {
            k: {"measured": rec[k], "model": pred["memory"][k], "ratio": rec[k] / pred["memory"][k]}
            for k in MEMORY_PARTS
        }
        comm = {}
        for group in sorted(set(rec["comm"]) | set(pred["comm"])):
            got, want = rec["comm"].get(group, {}), pred["comm"].get(group, {})
            for kind in sorted(set(got) | set(want)):
                a, b = got.get(kind, 0), want.get(kind, 0.0)
                comm[f"{group}.{kind}"] = {"measured": a, "model": b, "ratio": a / b if b else None}
        row = {
            "layout": rec["layout"],
            "rank": rec["rank"],
            "pp_rank": rec["pp_rank"],
            "memory": mem,
            "comm": comm,
            "step_tail_bytes": rec["tail_bytes"],
            "scalar_bytes": rec["scalar_bytes"],
        }
        if pred["bubble"] is not None:
            busy = rec["step_s"] - rec["wait_s"]
            row["bubble"] = {"measured": rec["wait_s"] / busy, "model": pred["bubble"]}
        rows.append(row)
    for layout in {r["layout"] for r in measured if r["pp"] > 1}:
        replayed = replay([r for r in measured if r["layout"] == layout])
        for row in rows:
            if row["layout"] == layout:
                row["bubble"]["replayed"] = replayed[row["pp_rank"]]
    return rows


def replay(records: list[dict]) -> dict[int, float]:
    """Idle over busy time per pipeline rank when the ranks run the schedule's recorded order of forward (F) and
    backward (B) chunks with their measured durations (each stage's fastest chunk: the least disturbed by other
    jobs), F of stage s after F of s - 1, B of s after B of s + 1 (after F of the last stage): the schedule's
    bubble with the real, unequal stage times, without the waits a loaded machine adds."""
    first = {}
    for r in records:
        first.setdefault(r["pp_rank"], r)
    queues = {pr: [tuple(op) for op in r["schedule"]] for pr, r in first.items()}
    dur = {k: v for r in first.values() for k, v in r["op_s"].items()}
    last = max(st for q in queues.values() for st, _, _ in q)
    done: dict[tuple, float] = {}
    clock = dict.fromkeys(queues, 0.0)
    busy = dict.fromkeys(queues, 0.0)
    while any(queues.values()):
        progressed = False
        for pr, queue in queues.items():
            while queue:
                st, kind, mb = queue[0]
                dep = (st - 1, "F", mb) if kind == "F" else (st + 1, "B", mb) if st < last else (st, "F", mb)
                if (kind == "F" and st == 0) or dep in done:
                    start = max(clock[pr], done.get(dep, 0.0))
                    clock[pr] = done[(st, kind, mb)] = start + dur[f"{st}{kind}"]
                    busy[pr] += dur[f"{st}{kind}"]
                    queue.pop(0)
                    progressed = True
                else:
                    break
        if not progressed:
            raise SystemExit("error: the recorded pipeline schedule does not replay; its dependencies form a cycle")
    span = max(clock.values())
    return {pr: (span - b) / b for pr, b in busy.items()}


def _summary(rows: list[dict]) -> dict:
    """The largest |measured / model - 1| per memory part and over all collectives, and the bubbles."""
    worst = {k: max(abs(r["memory"][k]["ratio"] - 1) for r in rows) for k in MEMORY_PARTS}
    ratios = [c["ratio"] for r in rows for c in r["comm"].values()]
    return {
        "memory_max_abs_error": worst,
        "comm_max_abs_error": max(abs(x - 1) for x in ratios if x is not None),
        "comm_unpredicted_kinds": sum(x is None for x in ratios),
        "bubble": {f"{r['layout']} rank {r['rank']}": r["bubble"] for r in rows if "bubble" in r},
    }


def run() -> dict:
    measured: list[dict] = []
    for nproc in sorted({n for n, _ in LAYOUTS.values()}):
        measured += _measure(nproc, [k for k, (n, _) in LAYOUTS.items() if n == nproc])
    rows = compare(measured)
    return {
        "spec": SPEC,
        "seq_len": SEQ,
        "global_batch": GLOBAL_BATCH,
        "micro_batch": MICRO_BATCH,
        "framework": FRAMEWORK,
        "summary": _summary(rows),
        "ranks": rows,
    }


def _stages(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped by (layout, pipeline stage); the ranks of one stage measure the same."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layout"], r["pp_rank"]), []).append(r)
    order = sorted(groups, key=lambda key: (list(LAYOUTS).index(key[0]), key[1]))
    return [(f"{lay} stage {st}", groups[(lay, st)]) for lay, st in order]


def tables(result: dict) -> str:
    """The README's markdown tables (bytes per rank; ratio = measured / model)."""
    out = ["| layout, pipeline stage (ranks) | " + " | ".join(MEMORY_PARTS) + " |", "|---" * 5 + "|"]
    for name, rs in _stages(result["ranks"]):
        m = rs[0]["memory"]
        cells = [f"{m[k]['measured']:,} ({m[k]['ratio']:.4f})" for k in MEMORY_PARTS]
        out.append(f"| {name} ({','.join(str(r['rank']) for r in rs)}) | " + " | ".join(cells) + " |")
    kinds = sorted({k for r in result["ranks"] for k in r["comm"]})
    out += ["", "| layout, pipeline stage | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, rs in _stages(result["ranks"]):
        comm = rs[0]["comm"]
        cells = [
            f"{comm[k]['measured']:,} ({comm[k]['ratio']:.4f})" if k in comm and comm[k]["ratio"] else "-"
            for k in kinds
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| layout, rank | idle / busy: measured | replayed | model (p-1)/(v m) |",
        "|---" * 4 + "|",
    ]
    for r in sorted(result["ranks"], key=lambda r: (list(LAYOUTS).index(r["layout"]), r["rank"])):
        if "bubble" in r:
            b = r["bubble"]
            out.append(
                f"| {r['layout']} rank {r['rank']} | {b['measured']:.2f} | {b['replayed']:.2f} | {b['model']:.2f} |"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker.split(","))
        return
    result = run()
    print(json.dumps(result, indent=2) if args.json else tables(result))


if __name__ == "__main__":
    main()
