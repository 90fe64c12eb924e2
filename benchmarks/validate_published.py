"""Validate the performance model on published training runs, with leave-one-source-out cross-validation.

The runs and their citations live in ``benchmarks/published_runs.yaml``. The fitted constants
(``FIT_PARAMS``: GEMM and attention efficiency per GPU generation, shape and link efficiencies) are set
by least squares on log(predicted / published). The headline is leave-one-source-out (LOSO): for each
source, fit on every other source and predict the held-out one. The in-sample fit over all sources (the
values in ``isoflop/perf/constants.yaml``) is reported separately, labelled ``fit``, and is not a
prediction. Framework profiles are data (constants.yaml ``frameworks``), never fitted.

Run: ``python benchmarks/validate_published.py [--json] [--sources a,b]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.hardware import GPU, get_gpu  # noqa: E402
from isoflop.perf import Layout, LayoutArrays, load_constants, validate  # noqa: E402
from isoflop.perf.constants import PerfConstants  # noqa: E402
from isoflop.perf.layout import peak_dtype  # noqa: E402
from isoflop.perf.steptime import step_time  # noqa: E402
from isoflop.perf.workload import Workload  # noqa: E402
from isoflop.spec import ModelSpec  # noqa: E402
from isoflop.spec.accounting import flops_per_step  # noqa: E402
from isoflop.spec.loader import spec_from_dict  # noqa: E402

DATA = Path(__file__).resolve().with_name("published_runs.yaml")
METRICS = ("step_time_s", "tokens_per_s_per_gpu", "tflops_narayanan", "mfu")
# GPU generation of each catalogued GPU the runs use: per-generation constants are fitted jointly.
GENERATION = {"a100-80gb": "a100", "a100-40gb": "a100", "h100-sxm": "h100", "h200": "h100"}
# name -> (constant, scope, lower bound, upper bound, prior); scope: a GPU generation, a framework, or None
# (shared); a scoped constant is fitted only when the training runs include its scope. Every fit starts from
# the priors (the hand-set values before any fit), so no fold starts from a point that saw its held-out source.
# Bounds are physical priors, not fit results: large bf16 GEMMs reach 50-95% of the dense peak;
# FlashAttention-2 forward 0.42-0.9 of the A100 peak and 0.28-0.6 of the H100 peak (Dao 2023; Shah et al.
# 2024, Fig. 5), the backward at a fixed fraction of it (FLASH_BWD_RATIO); the GEMM half-efficiency dimension
# 32-1024 (tiles of 128-256, a wave of 108-132 SMs); NCCL bus bandwidth 30-90% of NVLink and 30-95% of the
# NIC (nccl-tests); a framework reaching 50-100% of the modelled speed.
FIT_PARAMS: dict[str, tuple[str, str | None, float, float, float]] = {
    "a100.gemm_eff_max": ("gemm_eff_max", "a100", 0.5, 0.95, 0.78),
    "h100.gemm_eff_max": ("gemm_eff_max", "h100", 0.5, 0.95, 0.56),
    "a100.flash_fwd_eff": ("flash_fwd_eff", "a100", 0.42, 0.9, 0.60),
    "h100.flash_fwd_eff": ("flash_fwd_eff", "h100", 0.28, 0.6, 0.40),
    "gemm_half_dim": ("gemm_half_dim", None, 32.0, 1024.0, 96.0),
    "intra_node_eff": ("intra_node_eff", None, 0.3, 0.9, 0.55),
    "inter_node_eff": ("inter_node_eff", None, 0.3, 0.95, 0.80),
    "deepspeed.framework_eff": ("framework_eff", "deepspeed", 0.5, 1.0, 1.0),
}
FLASH_BWD_RATIO = {"a100": 0.50 / 0.60, "h100": 0.33 / 0.40}  # backward / forward efficiency (Dao 2023, Table 1)


def _scopes(run: Run) -> set[str | None]:
    return {None, GENERATION[run.gpu], run.framework}


@dataclass(frozen=True)
class Run:
    """One published run: the workload, its layout and framework, and the published metric."""

    source: str
    cite: str
    model: str
    spec: ModelSpec
    gpu: str
    n_gpus: int
    batch: int
    seq: int
    framework: str
    layout: Layout
    metric: str
    published: float
    hardware: tuple[tuple[str, float], ...] = ()  # the run's published deviations from the catalogue GPU

    @property
    def name(self) -> str:
        return f"{self.source}: {self.model} on {self.n_gpus} {self.gpu} ({self.cite})"


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))


def sources() -> dict[str, str]:
    """Source key -> full citation."""
    return dict(_data()["sources"])


def runs() -> list[Run]:
    """Every published run of ``published_runs.yaml``."""
    data = _data()
    specs = {name: spec_from_dict(dict(fields), name=name) for name, fields in data["models"].items()}
    out = []
    for row in data["runs"]:
        knobs = dict(row["layout"])
        tp, pp, cp = knobs.get("tp", 1), knobs.get("pp", 1), knobs.get("cp", 1)
        knobs["dp"] = row["n_gpus"] // (tp * pp * cp)
        if row["metric"] not in METRICS or row["source"] not in data["sources"]:
            raise ValueError(f"bad run {row}")
        out.append(
            Run(
                source=row["source"],
                cite=row["cite"],
                model=row["model"],
                spec=specs[row["model"]],
                gpu=row["gpu"],
                n_gpus=row["n_gpus"],
                batch=row["batch"],
                seq=row["seq"],
                framework=row["framework"],
                layout=Layout(**knobs),
                metric=row["metric"],
                published=float(row["published"]),
                hardware=tuple(sorted((row.get("hardware") or {}).items())),
            )
        )
    return out


def narayanan_flops(spec: ModelSpec, batch: int, seq: int) -> float:
    """Narayanan et al. 2021, Eq. 3: FLOPs per iteration with full recomputation."""
    B, s, l, h, V = batch, seq, spec.n_layers, spec.d_model, spec.vocab_size
    return 96.0 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))


@cache
def _gpu(name: str, hardware: tuple[tuple[str, float], ...] = ()) -> GPU:
    """The catalogue GPU with the run's published deviations (``hardware``: ``hbm_gbps``, ``memory_gib``,
    ``tdp_watts``, ``bf16_tflops``) applied."""
    gpu = get_gpu(name)
    changes: dict[str, Any] = dict(hardware)
    if "bf16_tflops" in changes:
        bf16 = changes.pop("bf16_tflops")
        changes["peak_tflops"] = {**gpu.peak_tflops, "bf16": bf16, "fp16": bf16}
    return gpu.model_copy(update=changes) if changes else gpu


@cache
def _constants(gpu: str, framework: str) -> PerfConstants:
    return load_constants(gpu, framework)


def constants_for(run: Run, params: dict[str, float] | None) -> PerfConstants:
    """The built-in constants for the run's GPU and framework, with ``params`` (FIT_PARAMS names) applied."""
    base = _constants(run.gpu, run.framework)
    if not params:
        return base
    scopes = _scopes(run)
    changes: dict[str, float] = {}
    for name, value in params.items():
        const, scope, _, _, _ = FIT_PARAMS[name]
        if scope not in scopes:
            continue
        changes[const] = value
        if const == "flash_fwd_eff":
            changes["flash_bwd_eff"] = value * FLASH_BWD_RATIO[GENERATION[run.gpu]]
    return base.replace(**changes)


@cache
def _fixed(run: Run) -> tuple[LayoutArrays, float, float]:
    """Per-run pieces that no constant changes: the layout as arrays, model and Narayanan FLOPs per step."""
    validate(run.layout, run.spec, run.n_gpus, run.batch, run.seq)
    model = flops_per_step(run.spec, run.batch, run.seq).model
    return LayoutArrays.from_layouts([run.layout]), model, narayanan_flops(run.spec, run.batch, run.seq)


def predict(run: Run, params: dict[str, float] | None = None) -> float:
    """The run's metric as the model predicts it (``isoflop.perf.steptime.step_time``, as ``estimate`` does)."""
    la, model_flops, eq3_flops = _fixed(run)
    gpu = _gpu(run.gpu, run.hardware)
    lay = run.layout
    seconds = float(
        step_time(
            Workload(run.spec, gpu, run.n_gpus, run.batch, run.seq, lay.dtype, lay.optimizer),
            la,
            constants_for(run, params),
        )["step_time_s"][0]
    )
    if run.metric == "step_time_s":
        return seconds
    if run.metric == "tflops_narayanan":
        return eq3_flops / seconds / run.n_gpus / 1e12
    if run.metric == "tokens_per_s_per_gpu":
        return run.batch * run.seq / seconds / run.n_gpus
    return model_flops / seconds / (run.n_gpus * gpu.peak_flops(peak_dtype(lay.dtype)))


def log_error(run: Run, params: dict[str, float] | None) -> float:
    """log(predicted / published), sign-normalised so that > 0 always means 'predicted too fast'."""
    err = math.log(predict(run, params) / run.published)
    return -err if run.metric == "step_time_s" else err


def prior_params() -> dict[str, float]:
    """FIT_PARAMS at their priors: where every fit starts."""
    return {name: spec[4] for name, spec in FIT_PARAMS.items()}


def fit(train: list[Run], start: dict[str, float] | None = None) -> dict[str, float]:
    """Least-squares fit of FIT_PARAMS to ``train`` (log errors; only the scopes present), from ``start``
    (default: the priors)."""
    start = dict(start or prior_params())
    present = set().union(*(_scopes(r) for r in train))
    names = [n for n, spec in FIT_PARAMS.items() if spec[1] in present]
    lo = np.array([FIT_PARAMS[n][2] for n in names])
    hi = np.array([FIT_PARAMS[n][3] for n in names])
    x0 = np.clip(np.array([start[n] for n in names]), lo * 1.0001, hi * 0.9999)

    def residuals(x: np.ndarray) -> np.ndarray:
        params = {**start, **dict(zip(names, x))}
        return np.array([log_error(r, params) for r in train])

    sol = least_squares(
        residuals, x0, bounds=(lo, hi), x_scale="jac", diff_step=1e-3, max_nfev=40, ftol=1e-4, xtol=1e-4
    )
    return {**start, **{n: float(v) for n, v in zip(names, sol.x)}}


def _summary(errors: list[float]) -> dict[str, float]:
    mags = [abs(e) for e in errors]
    return {"n": len(errors), "median_abs_error": statistics.median(mags), "max_abs_error": max(mags)}


def report(held_out: list[str] | None = None) -> dict[str, Any]:
    """LOSO table (per source, overall) and the in-sample fit; ``held_out`` limits the folds run."""
    all_runs = runs()
    keys = list(sources())
    folds = held_out or keys
    full = fit(all_runs)
    rows: list[dict[str, Any]] = []
    per_source: dict[str, dict[str, Any]] = {}
    for src in folds:
        test = [r for r in all_runs if r.source == src]
        params = fit([r for r in all_runs if r.source != src])
        errs = []
        for r in test:
            pred, fitted = predict(r, params), predict(r, full)
            err = pred / r.published - 1.0
            errs.append(err)
            rows.append(
                {
                    "source": src,
                    "name": r.name,
                    "metric": r.metric,
                    "published": r.published,
                    "predicted_loso": pred,
                    "error_loso": err,
                    "predicted_fit": fitted,
                    "error_fit": fitted / r.published - 1.0,
                }
            )
        per_source[src] = {**_summary(errs), "params": params}
    loso = [row["error_loso"] for row in rows]
    # log(true step time / predicted step time): the band an estimate's step_time_s_ci90 applies
    logs = [math.log1p(row["error_loso"]) * (-1.0 if row["metric"] == "step_time_s" else 1.0) for row in rows]
    return {
        "headline": "leave-one-source-out: each source predicted by constants fitted on the others",
        "n_runs": len(rows),
        "n_sources": len(folds),
        "loso": _summary(loso),
        "loso_per_source": per_source,
        "fit_in_sample": {**_summary([row["error_fit"] for row in rows]), "params": full},
        "step_time_ci90_log_ratio": [float(np.quantile(logs, 0.05)), float(np.quantile(logs, 0.95))],
        "targets": {"median_abs_error": 0.07, "max_abs_error": 0.20},
        "runs": rows,
    }


def markdown(out: dict[str, Any]) -> str:
    """The per-source LOSO table (and the overall and in-sample rows) as Markdown."""
    lines = [
        "| held-out source | runs | LOSO median abs. error | LOSO max abs. error |",
        "| --- | ---: | ---: | ---: |",
    ]
    for src, s in out["loso_per_source"].items():
        lines.append(f"| {src} | {s['n']} | {s['median_abs_error']:.1%} | {s['max_abs_error']:.1%} |")
    lo, fi = out["loso"], out["fit_in_sample"]
    lines.append(f"| **all (LOSO)** | {lo['n']} | **{lo['median_abs_error']:.1%}** | **{lo['max_abs_error']:.1%}** |")
    lines.append(
        f"| all, in-sample fit (not a prediction) | {fi['n']} | {fi['median_abs_error']:.1%} | "
        f"{fi['max_abs_error']:.1%} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    parser.add_argument("--sources", help="comma-separated sources to hold out (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print the per-source table as Markdown")
    args = parser.parse_args()
    out = report(args.sources.split(",") if args.sources else None)
    if args.markdown:
        print(markdown(out))
        return
    if not args.json:
        for row in out["runs"]:
            print(
                f"{row['name']:<100} {row['metric']:<21} published {row['published']:>9.4g}  "
                f"LOSO {row['predicted_loso']:>9.4g} ({row['error_loso']:+6.1%})  fit {row['error_fit']:+6.1%}"
            )
        print(markdown(out))
    print(json.dumps({k: v for k, v in out.items() if k != "runs" or args.json}))


if __name__ == "__main__":
    main()
