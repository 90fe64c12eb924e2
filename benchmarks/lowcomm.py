"""The README's low-communication and low-memory numbers, side by side in one run (2 CPU gloo processes).

1. Optimizer memory: for the micro model and the ``tiny-llama`` preset, the state bytes of each optimizer
   (``optim.name``) measured after one step (``isoflop.train.optim.state_bytes``) against
   ``isoflop.perf.optimizer_state.optimizer_state_bytes``.
2. Communication and loss: the micro model trained by 2 processes under torchrun on the same tokens with DDP
   (torch's all-reduce hook), fp16 and PowerSGD (rank 2) compression, DiLoCo with H in {1, 8, 32, 128}
   (inner AdamW, outer Nesterov SGD lr 0.7 momentum 0.9, Douillard et al. 2023), Streaming DiLoCo (4 fragments,
   int4), and DiLoCo on non-IID shards (each worker its own half of the corpus). Per run: the collective bytes
   counted per step, the ``isoflop.perf.lowcomm`` prediction, their ratio, and the final validation loss.

Run: ``python benchmarks/lowcomm.py [--steps 256]``; the last line is one JSON object.
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
sys.path.insert(0, str(ROOT / "tests"))

from _train_common import micro_config  # noqa: I001  (the tests' micro model and corpus)

from isoflop.perf.lowcomm import ddp_bytes, diloco_run_bytes, powersgd_run_bytes
from isoflop.perf.optimizer_state import OPTIMIZER_NAMES, optimizer_state_bytes, param_shapes


def optimizer_memory() -> list[dict]:
    import torch

    from isoflop.spec.loader import load_spec, spec_from_dict
    from isoflop.train.config import OptimSection
    from isoflop.train.model import build_model
    from isoflop.train.optim import build_named_optimizer, state_bytes

    rows = []
    for label, spec in (
        ("micro", spec_from_dict(dict(micro_config()["model"]))),
        ("tiny-llama", load_spec("tiny-llama")),
    ):
        for name in OPTIMIZER_NAMES:
            model = build_model(spec, "cpu", seed=0)
            opt = build_named_optimizer(model, OptimSection(name=name, lr=1e-3, galore_rank=4))
            x = torch.randint(0, spec.vocab_size, (1, 16))
            model(x, x).backward()
            opt.step()
            measured = state_bytes(opt)
            predicted = optimizer_state_bytes(param_shapes(spec), name, galore_rank=4)
            params = sum(p.numel() for p in model.parameters())
            rows.append(
                {
                    "model": label,
                    "optimizer": name,
                    "params": params,
                    "measured_bytes": measured,
                    "predicted_bytes": predicted,
                    "bytes_per_param": measured / params,
                    "exact": measured == predicted,
                }
            )
    return rows


RUNS = {
    "ddp": ["parallel.strategy=ddp", "sync.comm_hook=allreduce"],
    "ddp-fp16": ["parallel.strategy=ddp", "sync.comm_hook=fp16"],
    "powersgd-r2": ["parallel.strategy=ddp", "sync.comm_hook=powersgd", "sync.powersgd_rank=2"],
    "diloco-H1": ["sync.mode=diloco", "sync.inner_steps=1"],
    "diloco-H8": ["sync.mode=diloco", "sync.inner_steps=8"],
    "diloco-H32": ["sync.mode=diloco", "sync.inner_steps=32"],
    "diloco-H128": ["sync.mode=diloco", "sync.inner_steps=128"],
    "streaming-H32-F4-int4": ["sync.mode=diloco", "sync.inner_steps=32", "sync.fragments=4", "sync.outer_dtype=int4"],
    "diloco-H32-non-iid": ["sync.mode=diloco", "sync.inner_steps=32", "sync.non_iid=true"],
}


def predicted_bytes(name: str, steps: int) -> int:
    shapes = param_shapes(
        __import__("isoflop.spec.loader", fromlist=["x"]).spec_from_dict(dict(micro_config()["model"]))
    )
    if name == "ddp":
        return steps * ddp_bytes(shapes)
    if name == "ddp-fp16":
        return steps * ddp_bytes(shapes, "fp16")
    if name == "powersgd-r2":
        return powersgd_run_bytes(shapes, 2, 2, steps)
    opts = dict(item.split("=", 1) for item in RUNS[name])
    return diloco_run_bytes(
        shapes,
        int(opts["sync.inner_steps"]),
        int(opts.get("sync.fragments", 1)),
        opts.get("sync.outer_dtype", "fp32"),
        steps,
    )


def communication(steps: int, tmp: Path) -> list[dict]:
    from isoflop.train.data import DataConfig, prepare_data

    cache = tmp / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", ISOFLOP_CACHE=str(cache))
    os.environ["ISOFLOP_CACHE"] = str(cache)
    prepare_data(DataConfig(**micro_config()["data"]), cache_dir=cache / "data")
    cfg = micro_config(
        optim={"lr": 0.01, "warmup_steps": steps // 10},
        train={"max_steps": steps, "ckpt_every": 0, "eval_every": 0, "log_every": steps},
    )
    path = tmp / "micro.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    rows = []
    for name, sets in RUNS.items():
        out = tmp / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        cmd += ["-m", "isoflop", "train", str(path), "--out", str(out)]
        for item in sets:
            cmd += ["--set", item]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        measured = summary["comm"]["bytes_total"]
        predicted = predicted_bytes(name, steps)
        rows.append(
            {
                "run": name,
                "tokens": summary["tokens"],
                "measured_bytes_per_step": measured / steps,
                "predicted_bytes_per_step": predicted / steps,
                "measured_over_predicted": measured / predicted,
                "val_loss": summary["val_loss"],
                "val_loss_initial": summary["val_loss_initial"],
                "wall_s": summary["wall_s"],
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    ddp = next(r for r in rows if r["run"] == "ddp")
    for r in rows:
        r["bytes_vs_ddp"] = r["measured_bytes_per_step"] / ddp["measured_bytes_per_step"]
        r["val_loss_minus_ddp"] = r["val_loss"] - ddp["val_loss"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"optimizer_memory": optimizer_memory(), "communication": communication(args.steps, Path(tmp))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
