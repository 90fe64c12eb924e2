"""Tensor and pipeline parallelism on CPU/gloo against the performance model (``isoflop.perf``).

Prints JSON (``--json``; a short table otherwise) with, side by side:

* ``tp_comm``: collectives per transformer layer in one forward + backward of a TP2 + sequence-parallel block
  stack, counted on the real run (a ``TorchDispatchMode`` over the functional collectives, the ops
  ``CommDebugMode`` counts), against the model's ``n_tp = 4`` all-reduce-equivalents of ``T h`` elements per
  layer and microbatch (``isoflop/perf/steptime.py``; with sequence parallelism each all-reduce is one
  all-gather plus one reduce-scatter, Korthikanti et al. 2022, Sec. 4.2.2).
* ``step_time``: median step time of the tiny model trained by ``isoflop train`` under 1 process, TP2, PP2 1F1B
  and PP2 GPipe (2 gloo processes), with the pipeline bubble the model assumes, ``(p - 1) / (v m)``.

Run: ``python benchmarks/layout_parity.py --json`` (about a minute on 2 idle cores).
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
BATCH, SEQ = 4, 32


def _comm_worker() -> None:
    """Under torchrun (2 ranks): count the collectives of one forward + backward of TP2 models of 2 and 4 layers."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import loss_parallel
    from torch.utils._python_dispatch import TorchDispatchMode

    from isoflop.spec.model import ModelSpec
    from isoflop.train.model import build_model
    from isoflop.train.parallel.tensor import apply_tensor_parallel

    ops = {
        "all_gather_into_tensor": "all_gather",
        "reduce_scatter_tensor": "reduce_scatter",
        "all_reduce": "all_reduce",
    }

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = dict.fromkeys(ops.values(), 0)
            self.bytes = dict.fromkeys(ops.values(), 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._overloadpacket.__name__
            if name in ops:
                kind, t = ops[name], args[0]
                size = t.numel() * t.element_size() * (2 if kind == "all_gather" else 1)  # full-tensor bytes
                self.n[kind] += 1
                self.bytes[kind] += size
            return func(*args, **(kwargs or {}))

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, SPEC["vocab_size"], (BATCH, SEQ), generator=g)
    counts = {}
    for layers in (2, 4):
        model = apply_tensor_parallel(build_model(ModelSpec(**{**SPEC, "n_layers": layers}), seed=0), mesh)
        with Count() as c, loss_parallel():
            model(x, x).backward()
        counts[layers] = c
    if dist.get_rank() == 0:
        per_layer = {k: (counts[4].n[k] - counts[2].n[k]) / 2 for k in ops.values()}
        bytes_layer = {k: (counts[4].bytes[k] - counts[2].bytes[k]) / 2 for k in ops.values()}
        th = BATCH * SEQ * SPEC["d_model"] * 4  # fp32
        predicted = 4 * th  # n_tp all-reduces of T h elements = 4 all-gathers + 4 reduce-scatters of T h
        print(
            json.dumps(
                {
                    "collectives_per_layer": per_layer,
                    "predicted_all_reduce_equivalents_per_layer": 4,
                    "measured_bytes_per_layer": bytes_layer,
                    "predicted_bytes_per_layer": {
                        "all_gather": predicted,
                        "reduce_scatter": predicted,
                        "all_reduce": 0,
                    },
                    "ratio_measured_to_predicted": {
                        k: bytes_layer[k] / predicted for k in ("all_gather", "reduce_scatter")
                    },
                }
            )
        )
    dist.destroy_process_group()


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ISOFLOP_CACHE": str(cache)}


def _train(root: Path, cache: Path, name: str, nproc: int, sets: list[str]) -> dict:
    cfg = {
        "model": SPEC,
        "data": {"source": "stdlib", "vocab_size": 512, "max_bytes": 400_000},
        "train": {
            "seq_len": SEQ,
            "global_batch": 8,
            "micro_batch": 2,
            "max_steps": 12,
            "eval_every": 0,
            "ckpt_every": 0,
            "log_every": 12,
        },
        "optim": {"lr": 0.01, "warmup_steps": 2},
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    args = ["train", str(path), "--out", str(root / name), "--nproc-per-node", str(nproc)]
    for s in sets:
        args += ["--set", s]
    subprocess.run(
        [sys.executable, "-m", "isoflop", *args], cwd=ROOT, env=_env(cache), check=True, capture_output=True, text=True
    )
    return json.loads((root / name / "summary.json").read_text(encoding="utf-8"))


def run() -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "cache"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                __file__,
                "--worker",
            ],
            cwd=ROOT,
            env=_env(cache),
            check=True,
            capture_output=True,
            text=True,
        )
        out["tp_comm"] = json.loads(proc.stdout.strip().splitlines()[-1])
        runs = {
            "1 process": (1, []),
            "tp2": (2, ["parallel.tp=2"]),
            "pp2 1f1b": (2, ["parallel.pp=2", "parallel.pp_schedule=1f1b"]),
            "pp2 gpipe": (2, ["parallel.pp=2", "parallel.pp_schedule=gpipe"]),
        }
        times = {}
        for name, (nproc, sets) in runs.items():
            s = _train(root, cache, name.replace(" ", "_"), nproc, sets)
            times[name] = {"step_time_s": s["step_time_s"], "final_train_loss": s["final_train_loss"]}
        base = times["1 process"]["step_time_s"]
        for t in times.values():
            t["speedup_vs_1_process"] = base / t["step_time_s"]
        m = 8 // 2  # microbatches per step
        out["step_time"] = times
        out["pp_bubble_predicted"] = (2 - 1) / (1 * m)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _comm_worker()
        return
    result = run()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, t in result["step_time"].items():
        print(f"{name:10s} step {t['step_time_s'] * 1e3:8.1f} ms  x{t['speedup_vs_1_process']:.2f}")
    print("tp comm per layer:", result["tp_comm"]["ratio_measured_to_predicted"])


if __name__ == "__main__":
    main()
