"""Cost of checkpoint integrity: writing ``MANIFEST.json`` at save and verifying it at load, next to one step.

For each shape, isoflop's Transformer + AdamW (``build_optimizer``) takes a few full training steps on CPU
(forward, loss, backward, AdamW step; the median of the timed ones is ``step_s``), then a checkpoint is saved
with ``Checkpointer`` (``save_s``, which includes the manifest), and ``write_manifest`` (size + streamed sha256
of every file) and ``verify`` (manifest sizes and sha256 sums, trainer state, metadata checks) are timed on
it (median of ``--repeats``; the files are in the page cache, as right after a save, so this is the hashing
cost, not the disk's). ``load_s`` is ``Checkpointer.load`` (verify + DCP load). The ratios
``verify_over_step`` and ``manifest_over_step`` are the integrity cost in steps.

Shapes: ``tiny`` = the ``tiny-llama`` spec of the trainer's tiny preset (batch 16 x 256); ``d512`` = d_model 512,
8 layers, d_ff 1376, vocab 4096 (the shape of ``benchmarks/train_throughput.py``, batch 8 x 256).

Run: ``python benchmarks/checkpoint_verify.py`` (``--shapes``, ``--repeats``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from isoflop.spec import ModelSpec, load_spec  # noqa: E402
from isoflop.spec.accounting import count_params  # noqa: E402
from isoflop.train.checkpoint import Checkpointer, verify, write_manifest  # noqa: E402
from isoflop.train.distributed import DistEnv  # noqa: E402
from isoflop.train.model import build_model  # noqa: E402
from isoflop.train.optim import build_optimizer  # noqa: E402

SHAPES = {
    "tiny": lambda: (load_spec("tiny-llama"), 16, 256),
    "d512": lambda: (
        ModelSpec(name="d512", d_model=512, n_layers=8, n_heads=8, d_ff=1376, vocab_size=4096, max_seq_len=256),
        8,
        256,
    ),
}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(name: str, steps: int, repeats: int) -> dict:
    spec, batch, seq = SHAPES[name]()
    model = build_model(spec, "cpu", seed=0)
    optim = build_optimizer(model, 1e-4)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, spec.vocab_size, (batch, seq + 1), generator=gen)

    def step() -> None:
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()  # warm-up
    step_s = _median_time(step, steps)
    with tempfile.TemporaryDirectory(prefix="isoflop-ckpt-bench-") as tmp:
        root = Path(tmp)
        ckpt = Checkpointer(root, 2, DistEnv())
        start = time.perf_counter()
        ckpt.save(1, model, optim, {"tokens": 0, "sampler": {}})
        save_s = time.perf_counter() - start
        path = root / "step-00000001"
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        manifest_s = _median_time(lambda: write_manifest(path), repeats)
        verify_s = _median_time(lambda: verify(path), repeats)
        load_s = _median_time(lambda: ckpt.load(path, model, optim), repeats)
    return {
        "shape": name,
        "params": count_params(spec).total,
        "batch": batch,
        "seq_len": seq,
        "checkpoint_mib": size / 2**20,
        "step_s": step_s,
        "save_s": save_s,
        "manifest_s": manifest_s,
        "verify_s": verify_s,
        "load_s": load_s,
        "verify_over_step": verify_s / step_s,
        "manifest_over_step": manifest_s / step_s,
        "hash_mib_per_s": size / 2**20 / verify_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,d512")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per shape")
    parser.add_argument("--repeats", type=int, default=3, help="timed manifest/verify/load runs per shape")
    args = parser.parse_args()
    results = []
    for name in args.shapes.split(","):
        if name not in SHAPES:
            parser.error(f"unknown shape {name!r}; use {', '.join(SHAPES)}")
        res = run_case(name, args.steps, args.repeats)
        results.append(res)
        print(
            f"{name:5s} {res['checkpoint_mib']:7.1f} MiB  step {res['step_s']:.3f} s  verify {res['verify_s']:.3f} s "
            f"({res['verify_over_step']:.2f} steps)  manifest {res['manifest_s']:.3f} s  load {res['load_s']:.3f} s",
            flush=True,
        )
    summary = {
        "max_verify_over_step": max(r["verify_over_step"] for r in results),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
