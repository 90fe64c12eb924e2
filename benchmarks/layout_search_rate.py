"""Layout-search throughput: candidate layouts scored per second on one core (target >= 100,000/s).

Enumerates every valid layout for a few (model, GPU count) problems, scores them all with the vectorised
model (``isoflop.perf.estimate.evaluate``: memory + step time + MFU per layout), and reports layouts per second
(best of 3 repeats) for the scoring alone and for the whole ``search_layouts`` call (enumeration, scoring,
ranking). Last line: one JSON object. Run: ``python benchmarks/layout_search_rate.py``
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.hardware import get_gpu  # noqa: E402
from isoflop.perf import load_constants, search_layouts  # noqa: E402
from isoflop.perf.estimate import evaluate  # noqa: E402
from isoflop.perf.search import candidates  # noqa: E402
from isoflop.perf.workload import Workload  # noqa: E402
from isoflop.spec import get_model_preset  # noqa: E402

PROBLEMS = [
    ("llama3-70b", "h100-sxm", 64, 512, 8192),
    ("llama3-405b", "h100-sxm", 1024, 2048, 8192),
    ("gpt3-175b", "a100-80gb", 1536, 1536, 2048),
    ("mixtral-8x7b", "h100-sxm", 256, 1024, 4096),
]


def best_of(fn, repeats: int = 3, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main() -> None:
    rows = []
    for model, gpu_name, n, batch, seq in PROBLEMS:
        spec, gpu = get_model_preset(model), get_gpu(gpu_name)
        const = load_constants(gpu_name)
        work = Workload(spec, gpu, n, batch, seq)
        la = candidates(work)
        t_score = best_of(lambda: evaluate(work, la, const))
        t_search = best_of(lambda: search_layouts(spec, gpu, n, batch, seq, constants=const))
        # CPU time of this process: the one-core rate even while other jobs share the machine
        t_score_cpu = best_of(lambda: evaluate(work, la, const), clock=time.process_time)
        rows.append(
            {
                "problem": f"{model} on {n} {gpu_name}, batch {batch} x {seq}",
                "layouts": len(la),
                "score_s": t_score,
                "score_rate": len(la) / t_score,
                "score_cpu_rate": len(la) / t_score_cpu,
                "search_s": t_search,
                "search_rate": len(la) / t_search,
            }
        )
        print(
            f"{rows[-1]['problem']:<45} {len(la):>8} layouts  scored {rows[-1]['score_rate']:>12,.0f}/s  "
            f"whole search {t_search:.3f} s ({rows[-1]['search_rate']:,.0f}/s)  "
            f"scored per CPU-second {rows[-1]['score_cpu_rate']:,.0f}/s"
        )
    summary = {
        "problems": rows,
        "min_score_rate": min(r["score_rate"] for r in rows),
        "min_search_rate": min(r["search_rate"] for r in rows),
        "min_score_cpu_rate": min(r["score_cpu_rate"] for r in rows),
        "target": 100_000,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
