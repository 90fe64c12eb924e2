"""The hardware catalog: GPUs as data (``gpus.yaml`` in the package, plus an optional user file).

A user file has the same layout (``gpus: {name: {...}}``) and is named by ``--hardware FILE`` or the
``ISOFLOP_HARDWARE`` environment variable; its entries add to, or replace, the built-in ones.
An unknown name is always an error listing close matches: there is no fallback to another GPU's peak.
"""

from __future__ import annotations

import difflib
import math
import os
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from isoflop import env, structured
from isoflop.errors import IsoflopError, describe_validation_error

DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8")
ENV_VAR = env.HARDWARE


class GPU(BaseModel):
    """One accelerator. Bandwidths are one-direction GB/s (1e9 B/s); peaks are dense TFLOP/s."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str
    display: str = ""
    vendor: str = "unknown"
    peak_tflops: dict[str, float | None]
    memory_gib: float = Field(..., gt=0)
    hbm_gbps: float = Field(..., gt=0)
    intra_node_gbps: float = Field(..., gt=0)
    inter_node_gbps: float = Field(..., gt=0)
    gpus_per_node: int = Field(8, gt=0)
    tdp_watts: float = Field(..., gt=0)
    price_per_hour_usd: float = Field(..., ge=0)

    @field_validator("peak_tflops")
    @classmethod
    def _check_peaks(cls, peaks: dict[str, float | None]) -> dict[str, float | None]:
        unknown = set(peaks) - set(DTYPES)
        if unknown:
            raise ValueError(f"unknown dtype(s) {sorted(unknown)}; use {', '.join(DTYPES)}")
        for dtype, value in peaks.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"peak for {dtype} must be positive, got {value}")
        if not any(peaks.values()):
            raise ValueError("at least one dtype needs a peak")
        return {d: peaks.get(d) for d in DTYPES}

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s for ``dtype``; an unsupported dtype is an error, never a fallback."""
        if dtype not in DTYPES:
            raise IsoflopError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        peak = self.peak_tflops.get(dtype)
        if not peak:
            have = ", ".join(d for d in DTYPES if self.peak_tflops.get(d))
            raise IsoflopError(f"{self.name} has no {dtype} peak; choose one of: {have}")
        return peak * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30


def _read_file(text: str, origin: str) -> dict[str, GPU]:
    data = structured.loads(text, "yaml", origin, "hardware file", "fix the file's syntax")
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
        raise IsoflopError(
            f"hardware file {origin} must map 'gpus:' to entries by name; see `isoflop hw show h100-sxm --json`"
        )
    out: dict[str, GPU] = {}
    for name, entry in data["gpus"].items():
        if not isinstance(entry, dict):
            raise IsoflopError(f"hardware file {origin}: entry {name!r} must be a mapping of fields")
        try:
            out[str(name)] = GPU(name=str(name), **{k: v for k, v in entry.items() if k != "name"})
        except ValidationError as exc:
            raise IsoflopError(f"hardware file {origin}, GPU {name!r}: {describe_validation_error(exc)}") from None
    return out


def load_catalog(user_file: str | os.PathLike[str] | None = None) -> dict[str, GPU]:
    """Built-in GPUs, updated with ``user_file`` (or ``$ISOFLOP_HARDWARE``) when given."""
    builtin = resources.files("isoflop.hardware").joinpath("gpus.yaml").read_text(encoding="utf-8")
    catalog = _read_file(builtin, "gpus.yaml")
    path = Path(user_file).expanduser() if user_file else env.path(ENV_VAR)
    if path is not None:
        if not path.is_file():
            raise IsoflopError(f"hardware file {path} does not exist; fix --hardware or ${ENV_VAR}")
        catalog.update(_read_file(path.read_text(encoding="utf-8"), str(path)))
    return catalog


def get_gpu(name: str, user_file: str | os.PathLike[str] | None = None) -> GPU:
    """The GPU called ``name``; an unknown name is an error that lists the closest names."""
    catalog = load_catalog(user_file)
    key = name.strip().lower()
    if key in catalog:
        return catalog[key]
    close = difflib.get_close_matches(key, list(catalog), n=3, cutoff=0.3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(catalog)}"
    raise IsoflopError(f"unknown GPU {name!r}; {hint} (add your own with --hardware FILE)")
