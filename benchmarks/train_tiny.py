"""The README's trainer numbers: ``isoflop train --preset tiny`` as a new user runs it, and the 1- vs 2-process match.

1. Tokenize the stdlib corpus for the preset (``prepare_data``; the first run's cost, cached afterwards).
2. ``python -m isoflop train --preset tiny --out DIR --json`` in a subprocess, after tokenization: wall time of
   the whole command and its CPU time (user + system, all threads: on a shared machine the CPU time over the
   thread count bounds what an idle machine would take), the validation loss before and after, tokens/s and
   MFU (from ``summary.json``).
3. With ``--parity``: the micro config of the tests trained by 1 process and by 2 gloo processes under torchrun
   (DDP, FSDP2, HSDP) on the same global batch; the largest relative difference of any logged loss.

Run: ``python benchmarks/train_tiny.py [--threads 2] [--parity]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _env(threads: int, cache: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    if cache:
        env["ISOFLOP_CACHE"] = cache
    return env


def tiny(threads: int) -> dict:
    from isoflop.train.config import load_train_config
    from isoflop.train.data import prepare_data

    cfg = load_train_config(preset="tiny")
    t0 = time.perf_counter()
    prepare_data(cfg.data)
    prepare_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run(
            [sys.executable, "-m", "isoflop", "train", "--preset", "tiny", "--out", f"{tmp}/run", "--json"],
            cwd=ROOT,
            env=_env(threads, None),
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = json.loads(run.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": "isoflop train --preset tiny --out DIR --json",
        "threads": threads,
        "prepare_s_cached_or_first": prepare_s,
        "command_wall_s": wall,
        "command_cpu_s": cpu,
        "load_average_1min": os.getloadavg()[0],
        "train_wall_s": s["wall_s"],
        "steps": s["steps"],
        "val_loss_initial": s["val_loss_initial"],
        "val_loss": s["val_loss"],
        "final_train_loss": s["final_train_loss"],
        "tokens_per_s": s["tokens_per_s"],
        "mfu": s["mfu"],
        "params": s["params"],
    }


def parity() -> dict:
    from _train_common import micro_config, write_config

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp) / "micro.yaml", micro_config())
        env = _env(1, f"{tmp}/cache")

        def losses(run_dir: Path) -> list[float]:
            return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

        subprocess.run(
            [sys.executable, "-m", "isoflop", "train", str(cfg), "--out", f"{tmp}/one"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        ref = losses(Path(tmp) / "one") + [json.loads((Path(tmp) / "one" / "summary.json").read_text())["val_loss"]]
        for strategy in ("ddp", "fsdp", "hsdp"):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    "2",
                    "-m",
                    "isoflop",
                    "train",
                    str(cfg),
                    "--out",
                    f"{tmp}/{strategy}",
                    "--set",
                    f"parallel.strategy={strategy}",
                    "--set",
                    "parallel.replicate=2",
                ],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            run_dir = Path(tmp) / strategy
            got = losses(run_dir) + [json.loads((run_dir / "summary.json").read_text())["val_loss"]]
            out[strategy] = max(abs(a - b) / abs(a) for a, b in zip(ref, got, strict=True))
    return {"max_rel_diff_2proc_vs_1proc": out, "values_compared": len(ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parity", action="store_true")
    args = parser.parse_args()
    result = {"tiny": tiny(args.threads)}
    if args.parity:
        result["parity"] = parity()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
