"""Approach 3 speed: isoflop's fit against the replication's procedure, side by side in one process.

The replication (Besiroglu et al. 2024, following Hoffmann et al. 2022, App. D.2) minimises the Huber (delta 1e-3)
objective on log loss with L-BFGS-B and numerical gradients from every point of the grid
alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4,500 starts) and keeps the
best. ``--stride K`` runs every K-th start (default 10) and extrapolates the time linearly to 4,500; ``--stride 1``
runs the whole grid. Both sides run with single-threaded BLAS (the faster setting for both on small problems).

Usage: python benchmarks/fit_speed.py [--stride 10] [--bootstrap 1000]
Prints progress lines, then one JSON object as the last line: wall-clock seconds (``*_s``) and CPU seconds of this
process (``*_cpu_s``, less sensitive to other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.laws import ChinchillaLaw  # noqa: E402
from isoflop.laws import bootstrap as B  # noqa: E402
from isoflop.laws import fit as F  # noqa: E402
from isoflop.laws.fit import drop_highest_loss, fit_approach3  # noqa: E402
from isoflop.laws.huber import single_threaded_blas  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinchilla_svg_extracted.csv"


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(DATA.open()))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    return drop_highest_loss(n, c / (6 * n), loss, 5)


def replication_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> float:
    """The replication's objective, written as it does: scipy's Huber on logsumexp(a - alpha log N, ...) - log L."""
    a, b, e, alpha, beta = theta
    pred = np.logaddexp.reduce([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
    return float(np.sum(huber(1e-3, pred - log_l)))


def replication_grid() -> list[np.ndarray]:
    alphas = betas = np.arange(0, 2.01, 0.5)
    es = np.arange(-1, 1.01, 0.5)
    as_ = bs = np.arange(0, 26, 5)
    return [np.array([a, b, e, al, be]) for a, b, e, al, be in itertools.product(as_, bs, es, alphas, betas)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=10, help="run every K-th grid start (1 = all 4,500)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast fit (median time)")
    args = parser.parse_args()
    n, d, loss = load()
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)

    # isoflop's Approach 3
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fit_approach3(n, d, loss)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    fast_s, fast_cpu = float(np.median(times)), float(np.median(cpu))
    fast_obj = replication_objective(res.theta, log_n, log_d, log_l)
    print(f"isoflop Approach 3: {fast_s:.3f} s (median of {args.repeats}), objective {fast_obj:.12g}", file=sys.stderr)

    # The replication's grid
    grid = replication_grid()
    starts = grid[:: args.stride]
    best_obj, best_theta = np.inf, None
    t0, c0 = time.perf_counter(), time.process_time()
    with single_threaded_blas():
        for i, theta0 in enumerate(starts):
            r = minimize(replication_objective, theta0, args=(log_n, log_d, log_l), method="L-BFGS-B")
            if np.isfinite(r.fun) and r.fun < best_obj:
                best_obj, best_theta = float(r.fun), r.x
            if (i + 1) % 50 == 0:
                el = time.perf_counter() - t0
                print(f"  replication: {i + 1}/{len(starts)} starts, {el:.1f} s, best {best_obj:.12g}", file=sys.stderr)
    rep_s, rep_cpu = time.perf_counter() - t0, time.process_time() - c0
    rep_full_s = rep_s * len(grid) / len(starts)
    rep_full_cpu = rep_cpu * len(grid) / len(starts)
    rel = (fast_obj - best_obj) / best_obj
    a, b, e, al, be = best_theta
    rep_params = {
        "E": float(np.exp(e)),
        "A": float(np.exp(a)),
        "B": float(np.exp(b)),
        "alpha": float(al),
        "beta": float(be),
    }

    # Bootstrap
    law = F.fit(ChinchillaLaw(), n, d, loss)
    t0, c0 = time.perf_counter(), time.process_time()
    B.bootstrap(law, args.bootstrap, seed=0)
    boot_s, boot_cpu = time.perf_counter() - t0, time.process_time() - c0

    out = {
        "benchmark": "fit_speed",
        "points": int(len(n)),
        "isoflop_fit_s": fast_s,
        "isoflop_fit_cpu_s": fast_cpu,
        "isoflop_objective": fast_obj,
        "isoflop_params": res.params,
        "replication_starts_run": len(starts),
        "replication_starts_grid": len(grid),
        "replication_s_measured": rep_s,
        "replication_s_for_4500": rep_full_s,
        "replication_cpu_s_for_4500": rep_full_cpu,
        "replication_extrapolated": len(starts) != len(grid),
        "replication_objective": best_obj,
        "replication_params": rep_params,
        "objective_rel_diff": rel,
        "same_optimum_1e-6": bool(abs(rel) <= 1e-6 or fast_obj <= best_obj),
        "speedup": rep_full_s / fast_s,
        "speedup_cpu": rep_full_cpu / fast_cpu,
        "bootstrap_samples": args.bootstrap,
        "bootstrap_converged": law.info_["bootstrap"]["converged"],
        "bootstrap_s": boot_s,
        "bootstrap_cpu_s": boot_cpu,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
