"""Dense vs MoE IsoFLOP ladders at equal compute: both families on the same budgets, each fitted, each predicting
and verifying its own held-out run (``isoflop ladder --family dense|moe``).

The MoE members are the dense members with each MLP replaced by routed experts of width ``d_ff / top_k``
(``isoflop.ladder.grid.moe_member``): equal active parameters, tokens and FLOPs up to the router's ``2 d E`` per
layer per token. Prints one JSON object (last line): per budget the best validation loss of each family (the
lowest of that budget's runs, with its active non-embedding N), the held-out predictions, errors and intervals,
the wall time of each ladder and the load average before and after.

    python benchmarks/moe_vs_dense.py [--preset smoke] [--experts 8] [--top-k 2] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def family_result(summary: dict, analysis: dict) -> dict:
    """Per budget the best finished run, and the held-out verdict, from a ladder's summary and analysis."""
    best: dict[float, dict] = {}
    for p in analysis["points"]:
        if p["status"] != "finished" or p["loss"] is None or p["budget"] is None:
            continue
        cur = best.get(p["budget"])
        if cur is None or p["loss"] < cur["loss"]:
            best[p["budget"]] = {"loss": p["loss"], "n_active": p["n"], "n_total": p["n_total"], "flops": p["flops"]}
    held = summary["heldout"]
    return {
        "ladder": summary["ladder"],
        "best_by_budget": {f"{b:.3g}": best[b] for b in sorted(best)},
        "heldout": {
            k: held.get(k)
            for k in ("budget", "flops", "n", "n_total", "tokens", "method", "predicted_loss", "ci95", "actual_loss")
        }
        | {"error_pct": held.get("error_pct"), "inside_ci": held.get("inside_ci"), "predictions": held["predictions"]},
        "runs": summary["runs"],
        "wall_s": summary["wall_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke", help="ladder preset for both families (default smoke)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder for both ladders (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=None, help="runs at once (default: one per core)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()

    from isoflop.ladder.pipeline import run_pipeline
    from isoflop.ladder.presets import get_ladder_preset, with_family
    from isoflop.ladder.runner import ExecOptions

    out = args.out or Path(tempfile.mkdtemp(prefix="moe_vs_dense_"))
    base = get_ladder_preset(args.preset)
    designs = {"dense": with_family(base, "dense"), "moe": with_family(base, "moe", args.experts, args.top_k)}
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, flush=True))
    load_before = os.getloadavg()
    families = {}
    for family, design in designs.items():
        folder = out / family
        summary = run_pipeline(design, folder, ExecOptions(workers=args.workers), say=say)
        analysis = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
        families[family] = family_result(summary, analysis)
    budgets = sorted(set(families["dense"]["best_by_budget"]) & set(families["moe"]["best_by_budget"]), key=float)
    table = [
        {
            "budget": float(b),
            "dense_best_loss": families["dense"]["best_by_budget"][b]["loss"],
            "moe_best_loss": families["moe"]["best_by_budget"][b]["loss"],
            "moe_minus_dense": families["moe"]["best_by_budget"][b]["loss"]
            - families["dense"]["best_by_budget"][b]["loss"],
        }
        for b in budgets
    ]
    result = {
        "preset": args.preset,
        "experts": args.experts,
        "top_k": args.top_k,
        "n_counts": "active non-embedding parameters",
        "cores": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "equal_compute": table,
        "families": families,
        "out": str(out),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
