"""Validate the performance model on published mixture-of-experts training runs (benchmarks/published_moe_runs.yaml).

Every run is predicted with the built-in constants (``isoflop/perf/constants.yaml``, fitted on the dense runs of
``benchmarks/published_runs.yaml``; none is MoE), so every error is held-out: nothing is fitted on these runs.
The error is ``predicted / published - 1``; > 0 means the model predicts the run faster than it was.

Run: ``python benchmarks/validate_moe.py [--json]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.hardware import get_gpu  # noqa: E402
from isoflop.perf import Layout, load_constants  # noqa: E402
from isoflop.perf.estimate import estimate  # noqa: E402
from isoflop.spec import count_params  # noqa: E402
from isoflop.spec.loader import spec_from_dict  # noqa: E402

DATA = Path(__file__).resolve().with_name("published_moe_runs.yaml")
METRICS = ("tokens_per_s_per_gpu", "tflops_per_gpu")


def predict_run(run: dict[str, Any], spec, hardware_file: str) -> dict[str, Any]:
    """The performance model's prediction of one run (``isoflop.perf.estimate``)."""
    gpu = get_gpu(run["gpu"], hardware_file)
    knobs = dict(run["layout"])
    tp, pp, cp = knobs.get("tp", 1), knobs.get("pp", 1), knobs.get("cp", 1)
    knobs["dp"] = run["n_gpus"] // (tp * pp * cp)
    layout = Layout(**knobs)
    constants = load_constants(run.get("constants_gpu", run["gpu"]), run["framework"])
    est = estimate(spec, gpu, run["n_gpus"], layout, run["batch"], run["seq"], constants)
    exposed = estimate(spec, gpu, run["n_gpus"], layout, run["batch"], run["seq"], constants.replace(ep_overlap=0.0))

    def metric(e) -> float:
        return e.tokens_per_s / run["n_gpus"] if run["metric"] == "tokens_per_s_per_gpu" else e.tflops_per_gpu

    value = metric(est)
    counts = count_params(spec)
    return {
        "predicted": value,
        "predicted_a2a_exposed": metric(exposed),  # the same run with ep_overlap = 0 (no all-to-all hidden)
        "mfu": est.mfu,
        "step_time_s": est.step_time_s,
        "comm_ep_s": est.breakdown["comm_ep_s"],
        "bubble_s": est.breakdown["bubble_s"],
        "memory_gib": est.memory["total_gib"],
        "fits": est.fits,
        "params_b": counts.total / 1e9,
        "active_params_b": counts.active / 1e9,
    }


def report() -> dict[str, Any]:
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    specs = {name: spec_from_dict(dict(fields), name=name) for name, fields in data["models"].items()}
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp, "hardware.yaml")
        hw.write_text(yaml.safe_dump({"gpus": data["hardware"]}), encoding="utf-8")
        rows = []
        for run in data["runs"]:
            if run["metric"] not in METRICS:
                raise ValueError(f"unknown metric {run['metric']!r} in {run['name']}")
            pred = predict_run(run, specs[run["model"]], str(hw))
            err = pred["predicted"] / run["published"] - 1.0
            rows.append(
                {
                    "name": run["name"],
                    "cite": " ".join(run["cite"].split()),
                    "metric": run["metric"],
                    "published": run["published"],
                    "label": "held-out",
                    "error": err,
                    "error_a2a_exposed": pred["predicted_a2a_exposed"] / run["published"] - 1.0,
                    "assumed": run.get("assumed", []),
                    **pred,
                }
            )
    abs_err = [abs(r["error"]) for r in rows]
    return {
        "headline": "held-out: built-in constants (fitted on dense runs only), no constant set on any MoE run",
        "n_runs": len(rows),
        "median_abs_error": statistics.median(abs_err),
        "max_abs_error": max(abs_err),
        "mean_log_error": statistics.mean(math.log(1 + r["error"]) for r in rows),
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    out = report()
    if parser.parse_args().json:
        print(json.dumps(out, indent=2))
        return
    for r in out["runs"]:
        print(
            f"{r['name']:<20} {r['metric']:<22} published {r['published']:>8.4g}  predicted {r['predicted']:>8.4g} "
            f"({r['error']:+6.1%}, {r['label']}; all-to-all exposed {r['error_a2a_exposed']:+6.1%})  "
            f"MFU {r['mfu']:.2f}  EP all-to-all {r['comm_ep_s']:.2f} s of "
            f"{r['step_time_s']:.2f} s"
        )
    print(f"median |error| {out['median_abs_error']:.1%}, max {out['max_abs_error']:.1%} ({out['headline']})")


if __name__ == "__main__":
    main()
