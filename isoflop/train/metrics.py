"""Training metrics: throughput, MFU, memory; ``metrics.jsonl``, progress display and optional loggers.

MFU (Chowdhery et al. 2022, App. B) = model FLOPs per second / peak FLOP/s. Model FLOPs per step come from
``isoflop.spec.accounting.flops_per_step`` (training = 3 x forward, attention over the full s x s square, no
recomputation). The peak is the device's dense peak from the hardware catalog on GPU, and the measured CPU
matmul peak (``isoflop.train.cpu_peak.measured_peak_flops``) on CPU; either times the number of processes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from isoflop import env, structured
from isoflop.atomic import atomic_write_text
from isoflop.errors import IsoflopError

_GPU_CODES = ("v100", "a100", "h100", "h200", "b200", "l40s", "mi250x", "mi300x")


def catalog_gpu_for(device_name: str, memory_gib: float | None = None) -> str | None:
    """The catalog name of a CUDA/ROCm device (``torch.cuda.get_device_name``), or None when unknown.

    ``$ISOFLOP_GPU`` names it explicitly. Otherwise the model code (h100, a100, ...) picks the family, and
    PCIe/SXM and the memory size pick the entry."""
    from isoflop.hardware.catalog import load_catalog

    catalog = load_catalog()
    forced = env.get(env.GPU)
    if forced:
        if forced not in catalog:
            raise IsoflopError(f"$ISOFLOP_GPU={forced!r} is not in the hardware catalog; see `isoflop hw list`")
        return forced
    name = device_name.lower()
    code = next((c for c in _GPU_CODES if c in name.replace(" ", "").replace("-", "")), None)
    if code is None:
        return None
    entries = [n for n in catalog if n.startswith(code)]
    if len(entries) > 1:
        pcie = "pcie" in name
        entries = [n for n in entries if ("pcie" in n) == pcie] or entries
    if len(entries) > 1 and memory_gib:
        entries.sort(key=lambda n: abs(catalog[n].memory_gib - memory_gib))
    return entries[0] if entries else None


def peak_flops_per_process(device: torch.device, dtype: str, refresh: bool = False) -> tuple[float | None, str]:
    """(peak FLOP/s of one process's device, where it came from). ``dtype`` is fp32 or bf16 (the run's).

    ``refresh`` re-measures the CPU peak (a cached measurement taken while other jobs loaded the CPU is too
    low, which shows as an MFU above 1); the larger of the cached and the new value is kept."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu_name = catalog_gpu_for(props.name, props.total_memory / 2**30)
        if gpu_name is None:
            return None, f"{props.name} is not in the hardware catalog (set $ISOFLOP_GPU)"
        from isoflop.hardware.catalog import get_gpu

        # fp32 runs use TF32 tensor cores on GPU (torch.set_float32_matmul_precision('high')).
        catalog_dtype = "tf32" if dtype == "fp32" and torch.backends.cuda.matmul.allow_tf32 else dtype
        try:
            return get_gpu(gpu_name).peak_flops(catalog_dtype), f"catalog {gpu_name} {catalog_dtype}"
        except IsoflopError as exc:
            return None, str(exc)
    try:
        from isoflop.train.cpu_peak import measured_peak_flops
    except ImportError:
        return None, "no CPU peak measurement available"
    peak = measured_peak_flops(dtype)
    if refresh:
        peak = max(peak, measured_peak_flops(dtype, refresh=True))
    return peak, f"measured CPU matmul peak {dtype}, {torch.get_num_threads()} threads"


def memory_gib(device: torch.device | None = None) -> float:
    """Peak memory of this process: CUDA's max allocated memory on a GPU (``device``, or the current one when CUDA
    is in use), else the peak resident set: Linux's ``VmHWM`` (which writing "5" to ``/proc/self/clear_refs``
    resets), or ``ru_maxrss`` where there is no ``/proc``."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if (device.type == "cuda") if device is not None else cuda:
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class MetricsLog:
    """``DIR/metrics.jsonl`` (one object per logged step) plus the optional TensorBoard / W&B mirrors."""

    def __init__(self, out_dir: Path, loggers: list[str], config: dict[str, Any], resume_step: int) -> None:
        self.path = out_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = self._wandb = None
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                note("tensorboard is not installed; skipping the TensorBoard logger")
        if "wandb" in loggers:
            try:
                import wandb

                self._wandb = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "isoflop"), dir=str(out_dir), config=config, resume="allow"
                )
            except ImportError:
                note("wandb is not installed; skipping the Weights & Biases logger")

    def _truncate_after(self, step: int) -> None:
        """Keep only well-formed lines up to ``step``: a resumed run rewrites the steps after its checkpoint."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = structured.loads(line, "json", str(self.path), "metrics line", "")
            except structured.ParseError:
                continue  # a line cut by a crash
            if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        step = int(row["step"])
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def note(message: str) -> None:
    """One log line on stderr (stdout stays clean for ``--json``)."""
    print(f"[isoflop train] {message}", file=sys.stderr, flush=True)


class Progress:
    """A rich progress bar on an interactive terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, info: str, log_line: bool) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif log_line and self.enabled:
            note(f"step {step}/{self.total} {info}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class StepTimer:
    """Wall time of optimizer steps (synchronising the GPU), for tokens/s and MFU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self._t0
        self.times.append(elapsed)
        return elapsed

    def steady(self) -> list[float]:
        """Step times without the first one of the session (allocation, compilation warm-up)."""
        return self.times[1:] if len(self.times) > 1 else list(self.times)


def relative_errors(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, float]:
    """``(measured - predicted) / predicted`` for every numeric key both have."""
    out = {}
    for key, pred in predicted.items():
        meas = measured.get(key)
        if isinstance(pred, (int, float)) and isinstance(meas, (int, float)) and pred:
            out[key] = (meas - pred) / pred
    return out
