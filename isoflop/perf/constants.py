"""Performance-model constants: built-in data (``constants.yaml``) merged with a calibration file.

``load_constants(gpu, framework)`` = ``defaults`` <- ``gpus[gpu]`` <- ``frameworks[framework]`` <- calibration
file ``[gpu]``. The calibration file
is ``$ISOFLOP_CALIBRATION`` if set, else ``~/.config/isoflop/calibration.yaml``; it maps a GPU name to
``{constant: value}``. ``isoflop calibrate`` writes it; this module only reads it.
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from isoflop import env, structured
from isoflop.errors import IsoflopError, quote

CALIBRATION_ENV = env.CALIBRATION
DEFAULT_CALIBRATION = Path("~/.config/isoflop/calibration.yaml")


class PerfConstants(BaseModel):
    """Every tunable number of the model; see ``constants.yaml`` for the meaning and source of each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_name: str | None = None
    framework: str | None = None
    gemm_eff_max: float
    gemm_half_dim: float
    flash_fwd_eff: float
    flash_bwd_eff: float
    flash_half_seq: float
    flash_bwd_flop_ratio: float
    flash_attention: float
    attn_score_bytes: float
    framework_eff: float
    hbm_eff: float
    elementwise_passes: float
    loss_bytes_per_logit: float
    logits_mem_bytes_per_logit: float
    intra_node_eff: float
    inter_node_eff: float
    tp_overlap: float
    dp_overlap: float
    fsdp_overlap: float
    cp_overlap: float
    ep_overlap: float = 0.0  # isoflop.perf.moe: compute share hiding the expert all-to-all
    pp_overlap: float
    pipeline_rebalance: float
    pcie_gbps: float
    cpu_adam_params_per_s: float
    step_overhead_s: float
    ci90_log_lo: float = 0.0
    ci90_log_hi: float = 0.0
    kernel_launch_s: float
    kernels_per_layer: float
    kernels_head: float
    act_bytes: float
    grad_bytes_mixed: float
    fp8_weight_copy_bytes: float
    ddp_bucket_mib: float
    fsdp_prefetch_layers: float
    sp_saves_gathered_input: float = 0.0
    fixed_overhead_gib: float
    allocator_fraction: float

    def replace(self, **changes: Any) -> PerfConstants:
        return PerfConstants(**{**self.model_dump(), **changes})


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Any]:
    text = resources.files("isoflop.perf").joinpath("constants.yaml").read_text(encoding="utf-8")
    return structured.loads(text, "yaml", "constants.yaml", "built-in constants", "reinstall isoflop")


def calibratable() -> list[str]:
    """Names of the constants a calibration may fit (``calibratable`` in constants.yaml)."""
    return list(_builtin()["calibratable"])


def calibration_path() -> Path:
    """The calibration file that ``load_constants`` reads (it may not exist)."""
    return env.path(CALIBRATION_ENV, DEFAULT_CALIBRATION)


def _check_values(values: dict[str, Any], origin: str) -> dict[str, float]:
    known = set(PerfConstants.model_fields) - {"gpu_name", "framework"}
    out: dict[str, float] = {}
    for key, value in values.items():
        if key not in known:
            raise IsoflopError(f"{origin}: unknown constant {key!r}; use one of {', '.join(sorted(known))}")
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot, unsigned exponent) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise IsoflopError(f"{origin}: constant {key} must be a finite number >= 0, got {quote(value, 40)}")
        low, high = constant_range(key)
        if not low <= value <= high or (key.endswith(_RATES) and value == 0):
            shown = f"in [{low:g}, {high:g}]" if high < math.inf else "> 0"
            raise IsoflopError(
                f"{origin}: constant {key} must be {shown}, got {value!r}; fix the file or run `isoflop calibrate`"
            )
        out[key] = float(value)
    return out


# Efficiencies are fractions of a datasheet peak: (0, 1], floored at 1e-5 (a 100,000x slowdown is no measurement;
# `isoflop calibrate` fits within the same range). Overlaps are fractions of communication hidden behind compute.
EFF_RANGE = (1e-5, 1.0)
_RATES = ("_gbps", "_per_s")


def constant_range(key: str) -> tuple[float, float]:
    """The physical range of constant ``key`` (rates must also be non-zero)."""
    if key.endswith(("_eff", "_eff_max")):
        return EFF_RANGE
    if key.endswith("_overlap"):
        return (0.0, 1.0)
    return (0.0, math.inf)


def read_calibration_file(path: Path) -> dict[str, Any]:
    """The calibration file's mapping of GPU name -> constants ({} when the file does not exist)."""
    if not path.is_file():
        return {}
    data = structured.read(path, "calibration file", "fix or delete it", "yaml") or {}
    if not isinstance(data, dict):
        raise IsoflopError(f"calibration file {path} must map GPU names to {{constant: value}}; fix or delete it")
    return data


def _calibration(gpu_name: str) -> dict[str, float]:
    path = calibration_path()
    if not path.is_file() and env.get(CALIBRATION_ENV):
        raise IsoflopError(f"calibration file {path} does not exist; fix ${CALIBRATION_ENV} or unset it")
    entry = read_calibration_file(path).get(gpu_name) or {}
    if not isinstance(entry, dict):
        raise IsoflopError(f"calibration file {path}: entry {gpu_name!r} must be a mapping of constants")
    return _check_values(entry, f"calibration file {path} [{gpu_name}]")


def frameworks() -> list[str]:
    """Names of the framework profiles (``frameworks`` in constants.yaml)."""
    return sorted(_builtin()["frameworks"])


def framework_profile(name: str) -> dict[str, float]:
    """The constants a framework profile overrides; an unknown name is an error naming the known ones."""
    profiles = _builtin()["frameworks"]
    key = name.strip().lower()
    if key not in profiles:
        raise IsoflopError(f"unknown framework profile {name!r}; use one of {', '.join(frameworks())}")
    return _check_values(profiles[key] or {}, f"framework profile {key}")


def load_constants(gpu_name: str | None = None, framework: str | None = None) -> PerfConstants:
    """Built-in defaults, then the GPU's built-in overrides, then the framework profile, then the
    calibration file's entry for the GPU."""
    data = _builtin()
    values = dict(data["defaults"])
    profile = framework_profile(framework) if framework is not None else {}
    if gpu_name is not None:
        values.update(data.get("gpus", {}).get(gpu_name.strip().lower(), {}))
    values.update(profile)
    if gpu_name is not None:
        values.update(_calibration(gpu_name.strip().lower()))
    return PerfConstants(gpu_name=gpu_name, framework=framework, **values)
