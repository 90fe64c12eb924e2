"""One ladder run in its own process: ``python -m isoflop.ladder.worker CONFIG.json OUT_DIR``.

The process sets its own torch thread count (``ISOFLOP_THREADS``, also exported as ``OMP_NUM_THREADS``
by the runner before torch starts), calls the trainer (``isoflop.train.loop.train`` unless
``ISOFLOP_TRAIN_ENTRY=module:function`` names another), and writes ``OUT_DIR/result.json`` atomically:
the losses, measured seconds per optimizer step and peak memory. Under torchrun only rank 0 writes it.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

from isoflop.atomic import atomic_write_json

DEFAULT_ENTRY = "isoflop.train.loop:train"


def load_entry(spec: str) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """``module:function`` -> the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "train")


def _peak_memory_gib() -> float:
    """Peak memory of this process: CUDA's max allocated on a GPU, else the peak resident set (Linux KiB)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def result_from_summary(summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The registry's measurements out of the trainer's summary (``isoflop.train.loop.train``): losses, tokens,
    median seconds per optimizer step, and the process's peak memory (GPU allocations, or CPU resident set)."""
    if summary.get("status", "complete") != "complete":
        raise RuntimeError(f"the trainer stopped early (status {summary.get('status')!r}); the run will be retried")
    steps = summary.get("steps")
    step_time = summary.get("step_time_s") or (wall_s / steps if steps else None)
    return {
        "final_loss": summary.get("final_train_loss"), "val_loss": summary.get("val_loss"),
        "tokens": summary.get("tokens"), "step_time_s": step_time, "memory_gib": _peak_memory_gib(),
        "wall_s": wall_s, "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config_path, out_dir = Path(args[0]), Path(args[1])
    threads = int(os.environ.get("ISOFLOP_THREADS", "0") or 0)
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    config = json.loads(config_path.read_text(encoding="utf-8"))
    entry = load_entry(os.environ.get("ISOFLOP_TRAIN_ENTRY", DEFAULT_ENTRY))
    start = time.perf_counter()
    summary = entry(config, str(out_dir)) or {}
    wall = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out_dir / "result.json", result_from_summary(summary, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
