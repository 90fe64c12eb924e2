"""One ladder run in its own process: ``python -m isoflop.ladder.worker CONFIG.json OUT_DIR``.

The process sets its own torch thread count (``ISOFLOP_THREADS``, also exported as ``OMP_NUM_THREADS``
by the runner before torch starts), calls the trainer (``isoflop.train.loop.train`` unless
``ISOFLOP_TRAIN_ENTRY=module:function`` names another), and writes ``OUT_DIR/result.json`` atomically:
the losses, measured seconds per optimizer step and peak memory. Under torchrun only rank 0 writes it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isoflop import env, structured
from isoflop.atomic import atomic_write_json

DEFAULT_ENTRY = "isoflop.train.loop:train"


def load_entry(spec: str) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """``module:function`` -> the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "train")


def _reset_peak_memory() -> None:
    """Start a new peak: Linux resets VmHWM when "5" is written to /proc/self/clear_refs (a reused process)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def result_from_summary(summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The registry's measurements out of the trainer's summary (``isoflop.train.loop.train``): losses, tokens,
    median seconds per optimizer step, and the process's peak memory (GPU allocations, or CPU resident set)."""
    if summary.get("status", "complete") != "complete":
        raise RuntimeError(f"the trainer stopped early (status {summary.get('status')!r}); the run will be retried")
    from isoflop.train.metrics import memory_gib  # torch: imported where the worker trains

    steps = summary.get("steps")
    step_time = summary.get("step_time_s") or (wall_s / steps if steps else None)
    return {
        "final_loss": summary.get("final_train_loss"),
        "val_loss": summary.get("val_loss"),
        "tokens": summary.get("tokens"),
        "step_time_s": step_time,
        "memory_gib": memory_gib(),
        "wall_s": wall_s,
        "summary": summary,
    }


def set_threads(threads: int) -> None:
    """Pin this process to ``threads`` torch threads (OMP_NUM_THREADS too, for anything started later)."""
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    config_path, out_dir = Path(args[0]), Path(args[1])
    set_threads(int(env.get(env.THREADS) or 0))
    config = structured.read(config_path, "run config", "re-run the ladder to rewrite it", "json")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and config.get("parallel", {}).get("strategy") == "none":
        config["parallel"]["strategy"] = "auto"  # under torchrun the trainer picks DDP/FSDP for the processes
    entry = load_entry(env.get(env.TRAIN_ENTRY) or DEFAULT_ENTRY)
    _reset_peak_memory()
    start = time.perf_counter()
    summary = entry(config, str(out_dir)) or {}
    wall = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(out_dir / "result.json", result_from_summary(summary, wall))
    return 0


# A reusable worker process (the runner's local pool): torch is imported once per process, not once per run.
def _die_with_parent() -> None:
    """Linux: get SIGTERM when the ladder process dies, so no orphaned worker keeps training
    (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def pool_init(threads: int, entry: str | None) -> None:
    _die_with_parent()
    os.environ[env.THREADS] = str(threads)
    if entry:
        os.environ[env.TRAIN_ENTRY] = entry
    set_threads(threads)


def pool_job(config_path: str, out_dir: str, log_path: str) -> tuple[int, str]:
    """Run one job in this pool process with stdout/stderr (file descriptors 1 and 2) sent to ``log_path``.
    Returns ``(exit code, last lines of the log)``; an exception is a failed run, not a dead worker."""
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    code = 0
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            main([config_path, out_dir])
        except BaseException:  # noqa: BLE001 - recorded as this run's failure
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    tail = "\n".join(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
    return code, tail


if __name__ == "__main__":
    sys.exit(main())
