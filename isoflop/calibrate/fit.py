"""Fit the performance model's efficiency constants to measured step times (and memory), per GPU.

Step time: least squares on ``log(predicted / measured)`` over the log of each calibratable constant
(``isoflop.perf.calibratable``: GEMM, attention and HBM efficiencies, link efficiencies, per-step overhead),
bounded to physical ranges, with scipy's trust-region reflective solver. Log residuals weigh a 2x
over-prediction like a 2x under-prediction. Memory: ``fixed_overhead_gib`` (the runtime's own footprint) is
the median of measured minus predicted memory, never below 0. Errors are reported before and after.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from isoflop import env
from isoflop.atomic import atomic_write_text
from isoflop.calibrate.measured import Measurement
from isoflop.errors import IsoflopError
from isoflop.hardware import get_gpu
from isoflop.perf import PerfConstants, calibratable, calibration_path, estimate, load_constants
from isoflop.perf.constants import CALIBRATION_ENV, EFF_RANGE, read_calibration_file

# Physical ranges: efficiencies are fractions of a peak; the GEMM half-size is a matrix dimension.
_BOUNDS = {"gemm_half_dim": (1.0, 1e5), "step_overhead_s": (1e-6, 1e3)}
_EFF_BOUNDS = EFF_RANGE


@dataclass
class GpuCalibration:
    gpu: str
    constants: dict[str, float]
    before: dict[str, float | None]
    after: dict[str, float | None]
    runs: list[dict[str, Any]] = field(default_factory=list)
    held_fixed: list[str] = field(default_factory=list)  # constants too many for the runs, kept at their values

    @property
    def warning(self) -> str | None:
        """One line when fewer runs than constants forced some constants to stay fixed."""
        if not self.held_fixed:
            return None
        fitted = [k for k in self.constants if k != "fixed_overhead_gib"]
        return (
            f"{self.gpu}: {len(self.runs)} run(s) cannot determine {len(fitted) + len(self.held_fixed)} constants; "
            f"fitted {', '.join(fitted)} and held {', '.join(self.held_fixed)} at their current values "
            "(measure more runs to fit them all)"
        )


def _predict(ms: list[Measurement], gpu, const: PerfConstants) -> tuple[np.ndarray, np.ndarray]:
    steps, mems = [], []
    for m in ms:
        est = estimate(m.spec, gpu, m.n_gpus, m.layout, m.global_batch, m.seq_len, constants=const)
        steps.append(est.step_time_s)
        mems.append(est.memory["total_gib"])
    return np.array(steps), np.array(mems)


def _errors(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return 100.0 * (pred - meas) / meas


def _summary(step_err: np.ndarray, mem_err: np.ndarray | None) -> dict[str, float | None]:
    return {
        "median_abs_step_time_error_pct": float(np.median(np.abs(step_err))),
        "max_abs_step_time_error_pct": float(np.max(np.abs(step_err))),
        "median_abs_memory_error_pct": float(np.median(np.abs(mem_err)))
        if mem_err is not None and mem_err.size
        else None,
    }


def base_constants(gpu_name: str) -> PerfConstants:
    """The constants perf uses now; when ``$ISOFLOP_CALIBRATION`` names a file this calibration will create,
    the built-in ones (perf refuses a missing file, but here it is the output)."""
    given = env.get(CALIBRATION_ENV)
    if given and not env.path(CALIBRATION_ENV).is_file():
        os.environ.pop(CALIBRATION_ENV)
        try:
            return load_constants(gpu_name)
        finally:
            os.environ[CALIBRATION_ENV] = given
    return load_constants(gpu_name)


def _identifiable(ms: list[Measurement], gpu, base: PerfConstants, names: list[str]) -> tuple[list[str], list[str]]:
    """``(fit, hold)``: all of ``names`` when there are at least as many runs; else the ``len(ms)`` constants with
    the largest effect on the runs' log step times (finite-difference column norms of the Jacobian in log space,
    as the fit sees them), in ``names`` order."""
    if len(ms) >= len(names):
        return list(names), []
    log_t0 = np.log(_predict(ms, gpu, base)[0])
    step = 1e-3
    effect = {}
    for name in names:
        moved = base.replace(**{name: max(getattr(base, name), 1e-4) * math.exp(step)})
        effect[name] = float(np.linalg.norm(np.log(_predict(ms, gpu, moved)[0]) - log_t0)) / step
    keep = set(sorted(names, key=lambda n: -effect[n])[: len(ms)])
    return [n for n in names if n in keep], [n for n in names if n not in keep]


def calibrate_gpu(
    ms: list[Measurement], gpu_name: str, hardware: str | None = None, names: list[str] | None = None
) -> GpuCalibration:
    """Fit one GPU's constants to its measurements."""
    gpu = get_gpu(gpu_name, hardware)
    base = base_constants(gpu.name)
    names = names or calibratable()
    # Least squares cannot pin more constants than there are measurements: fit the ones these runs are most
    # sensitive to and keep the rest at their current values.
    names, held = _identifiable(ms, gpu, base, names)
    meas_t = np.array([m.step_time_s for m in ms])
    has_mem = [i for i, m in enumerate(ms) if m.memory_gib]
    meas_m = np.array([ms[i].memory_gib for i in has_mem])
    pred_t0, pred_m0 = _predict(ms, gpu, base)

    lo = np.array([math.log(_BOUNDS.get(n, _EFF_BOUNDS)[0]) for n in names])
    hi = np.array([math.log(_BOUNDS.get(n, _EFF_BOUNDS)[1]) for n in names])
    x0 = np.clip(np.log([max(getattr(base, n), 1e-4) for n in names]), lo + 1e-9, hi - 1e-9)

    def residuals(x: np.ndarray) -> np.ndarray:
        const = base.replace(**{n: float(math.exp(v)) for n, v in zip(names, x)})
        return np.log(_predict(ms, gpu, const)[0] / meas_t)

    fit = least_squares(residuals, x0, bounds=(lo, hi), method="trf", x_scale=1.0, diff_step=1e-3, max_nfev=400)
    fitted = {n: float(math.exp(v)) for n, v in zip(names, fit.x)}
    const = base.replace(**fitted)
    if has_mem:
        _, pred_m = _predict(ms, gpu, const)
        shift = float(np.median(meas_m - pred_m[has_mem]))
        fitted["fixed_overhead_gib"] = max(0.0, const.fixed_overhead_gib + shift)
        const = base.replace(**fitted)
    pred_t1, pred_m1 = _predict(ms, gpu, const)
    e_t0, e_t1 = _errors(pred_t0, meas_t), _errors(pred_t1, meas_t)
    e_m0 = _errors(pred_m0[has_mem], meas_m) if has_mem else None
    e_m1 = _errors(pred_m1[has_mem], meas_m) if has_mem else None
    runs = [
        {
            "label": m.label,
            "measured_step_time_s": float(meas_t[i]),
            "before_s": float(pred_t0[i]),
            "after_s": float(pred_t1[i]),
            "measured_memory_gib": m.memory_gib,
            "before_memory_gib": float(pred_m0[i]),
            "after_memory_gib": float(pred_m1[i]),
        }
        for i, m in enumerate(ms)
    ]
    return GpuCalibration(
        gpu=gpu.name,
        constants=fitted,
        before=_summary(e_t0, e_m0),
        after=_summary(e_t1, e_m1),
        runs=runs,
        held_fixed=held,
    )


def calibrate(
    ms: list[Measurement], hardware: str | None = None, names: list[str] | None = None
) -> list[GpuCalibration]:
    """Calibrate every GPU that appears in the measurements."""
    if not ms:
        raise IsoflopError("no measurements to calibrate on")
    unknown = set(names or []) - set(calibratable())
    if unknown:
        raise IsoflopError(f"cannot calibrate {sorted(unknown)}; calibratable constants: {', '.join(calibratable())}")
    groups: dict[str, list[Measurement]] = defaultdict(list)
    for m in ms:
        groups[m.gpu.strip().lower()].append(m)
    return [calibrate_gpu(group, gpu, hardware, names) for gpu, group in groups.items()]


def write_calibration(results: list[GpuCalibration], path: str | Path | None = None) -> Path:
    """Merge the fitted constants into the calibration file that ``isoflop.perf.load_constants`` reads."""
    target = Path(path).expanduser() if path else calibration_path()
    data = read_calibration_file(target)
    for res in results:
        data[res.gpu] = {k: float(f"{v:.6g}") for k, v in res.constants.items()}
    header = (
        "# isoflop calibration: GPU name -> fitted constants (written by `isoflop calibrate`; read by isoflop.perf)\n"
    )
    return atomic_write_text(target, header + yaml.safe_dump(data, sort_keys=True))
