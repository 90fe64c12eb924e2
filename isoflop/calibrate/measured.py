"""Measured runs for calibration: from a ladder's registry, or from a user's CSV/JSON file.

A user file has one row (CSV) or object (JSON list) per measured run with these keys:
``model`` (preset name, spec file, or in JSON a mapping of ModelSpec fields), ``gpu`` (catalog name),
``n_gpus``, ``global_batch``, ``seq_len``, ``step_time_s`` and optionally ``memory_gib`` (peak per GPU) and
any ``isoflop.perf.Layout`` field (``tp``, ``pp``, ``dp``, ``cp``, ``zero``, ``recompute``, ``micro_batch``,
``dtype``, ...; the defaults are ``Layout``'s, with ``dp = n_gpus / (tp pp cp)``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from isoflop import structured
from isoflop.errors import IsoflopError, quote
from isoflop.perf import Layout
from isoflop.spec import ModelSpec, load_spec, spec_from_dict

_LAYOUT_FIELDS = {f.name: f.type for f in fields(Layout)}
_INT_FIELDS = {"tp", "pp", "dp", "cp", "ep", "zero", "micro_batch", "interleave", "replicate"}


@dataclass(frozen=True)
class Measurement:
    """One measured training configuration."""

    spec: ModelSpec
    gpu: str
    n_gpus: int
    layout: Layout
    global_batch: int
    seq_len: int
    step_time_s: float
    memory_gib: float | None = None
    label: str = ""


def _layout(row: dict[str, Any], n_gpus: int, origin: str) -> Layout:
    values: dict[str, Any] = {}
    for key, raw in row.items():
        if key not in _LAYOUT_FIELDS or raw in (None, ""):
            continue
        if key in _INT_FIELDS:
            values[key] = _count(raw, key, origin)
        elif key in ("sequence_parallel", "offload"):
            values[key] = str(raw).lower() in ("1", "true", "yes")
        else:
            values[key] = raw
    if "dp" not in values:
        values["dp"] = max(1, n_gpus // (values.get("tp", 1) * values.get("pp", 1) * values.get("cp", 1)))
    return Layout(**values)


def _count(raw: Any, key: str, origin: str) -> int:
    """A whole number >= 0 from a CSV cell or JSON value (``"2"``, ``2``, ``2.0``); anything else is one line."""
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise IsoflopError(f"{origin}: {key} must be a whole number >= 0, got {quote(raw, 40)}; fix the row")
    return int(value)


def _positive(row: dict[str, Any], key: str, origin: str, required: bool = True) -> float | None:
    raw = row.get(key)
    if raw in (None, ""):
        if required:
            raise IsoflopError(
                f"{origin}: missing {key}; every row needs model, gpu, n_gpus, global_batch, seq_len, step_time_s"
            )
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise IsoflopError(f"{origin}: {key} must be a number, got {quote(raw, 40)}") from None
    if not (math.isfinite(value) and value > 0):
        raise IsoflopError(f"{origin}: {key} must be positive, got {quote(raw, 40)}")
    return value


def measurement_from_row(row: dict[str, Any], origin: str, base_dir: Path | None = None) -> Measurement:
    model = row.get("model")
    if model in (None, ""):
        raise IsoflopError(f"{origin}: missing model (a preset name, a spec file, or a mapping of ModelSpec fields)")
    if isinstance(model, dict):
        spec = spec_from_dict(model)
    else:
        path = Path(str(model))
        if base_dir is not None and not path.is_absolute() and (base_dir / path).is_file():
            path = base_dir / path
        spec = load_spec(str(path) if path.is_file() else str(model))
    gpu = str(row.get("gpu") or "").strip()
    if not gpu:
        raise IsoflopError(f"{origin}: missing gpu (a catalog name, or your entry in a --hardware file)")
    n_gpus = int(_positive(row, "n_gpus", origin))
    return Measurement(
        spec=spec,
        gpu=gpu,
        n_gpus=n_gpus,
        layout=_layout(row, n_gpus, origin),
        global_batch=int(_positive(row, "global_batch", origin)),
        seq_len=int(_positive(row, "seq_len", origin)),
        step_time_s=float(_positive(row, "step_time_s", origin)),
        memory_gib=_positive(row, "memory_gib", origin, required=False),
        label=str(row.get("label") or spec.name),
    )


def from_file(path: str | Path) -> list[Measurement]:
    """Measurements from a CSV (header row) or JSON (list of objects) file."""
    path = Path(path)
    if not path.is_file():
        raise IsoflopError(f"measurement file {path} does not exist; give a CSV or JSON file of measured runs")
    text = structured.read_text(path, "measurement file", "give a UTF-8 CSV or JSON file")
    if path.suffix.lower() == ".json":
        rows = structured.loads(text, "json", str(path), "measurement file", "fix the file")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise IsoflopError(f"{path} must hold a JSON list of objects, one per measured run")
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise IsoflopError(f"{path} has no measured runs; add at least one row")
    return [measurement_from_row(r, f"{path} row {i + 1}", path.parent) for i, r in enumerate(rows)]


def from_registry(path: str | Path, gpu: str) -> list[Measurement]:
    """Finished runs of a ladder registry (a ``registry.sqlite`` or the folder holding it), measured on ``gpu``."""
    from isoflop.ladder.registry import Registry

    path = Path(path)
    db = path / "registry.sqlite" if path.is_dir() else path
    if not db.is_file():
        raise IsoflopError(f"no registry at {db}; give a ladder/quickstart folder or its registry.sqlite")
    out = []
    for r in Registry(db).runs(status="finished"):
        if not r.step_time_s:
            continue
        cfg = r.config
        world = int(r.summary.get("world") or 1)
        dtype = r.summary.get("dtype") or cfg["train"].get("dtype", "fp32")
        dtype = "fp32" if dtype == "auto" else dtype
        spec = spec_from_dict(cfg["model"])
        batch = int(cfg["train"]["global_batch"])
        out.append(
            Measurement(
                spec=spec,
                gpu=gpu,
                n_gpus=world,
                layout=Layout(dp=world, micro_batch=max(1, batch // world), dtype=dtype),
                global_batch=batch,
                seq_len=int(cfg["train"]["seq_len"]),
                step_time_s=float(r.step_time_s),
                memory_gib=r.memory_gib,
                label=f"d{spec.d_model}xL{spec.n_layers} b{batch}",
            )
        )
    if not out:
        raise IsoflopError(f"{db} has no finished runs with a measured step time; run the ladder first")
    return out
