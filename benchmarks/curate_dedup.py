"""Benchmark: near-duplicate recall/precision of ``isoflop data curate`` and its per-stage throughput.

Corpus: stdlib ``.py`` files (the embedded corpus) plus, for some of them, copies with random word replacements
made at target Jaccard similarities: "near duplicates" in [0.8, 1.0), "grey-zone copies" in [0.6, 0.8) (where the
LSH S-curve still pairs many of them) and "distractors" in [0.2, 0.55).
Ground truth is the exact Jaccard similarity of every pair of documents over the shingle sets that MinHash
estimates (datatrove's own ``get_shingles``: normalized word 5-grams), so the measurement checks the MinHash
signatures, LSH banding and clustering against the set similarity they approximate. A pair is a true near
duplicate when its Jaccard similarity is >= ``--threshold``.

* recall: true near-duplicate pairs with at least one member removed / all true near-duplicate pairs;
* precision: removed documents that have a true near-duplicate partner / all removed documents;
* precision counting removals whose partner is within 0.1 below the threshold (the S-curve's grey zone) as right;
* detection by Jaccard bin (planted pairs with no third similar document) next to the S-curve ``1 - (1 - J^r)^b``;
* throughput: source MB / wall seconds of each datatrove stage, 2 local workers (load average printed too);
* side by side, in the same run: the recipe as it is (LSH candidates checked by exact Jaccard, ``verified``) and the
  same recipe accepting every LSH candidate (``lsh_only``, datatrove's stages alone).

Run: ``python benchmarks/curate_dedup.py [--originals 150] [--copies 150] [--workers 2]``. The last printed line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import sysconfig
import tempfile
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.curate.pipeline import CurateRequest
from isoflop.curate.recipe import load_recipe
from isoflop.curate.run import curate


def shingle_sets(texts: list[str], recipe) -> list[set[int]]:
    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature

    from isoflop.curate.pipeline import word_tokenizer

    spec = recipe.dedup.minhash
    sig = MinhashDedupSignature("/tmp", config=MinhashConfig(n_grams=spec.n_grams), language=word_tokenizer(recipe))
    return [set(sig.get_shingles(t).ravel().tolist()) for t in texts]


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / max(len(a | b), 1)


def edit_to(text: str, target: float, rng: random.Random, shingles) -> str:
    """``text`` with random words replaced, the count found by bisection so that the shingle Jaccard to ``text``
    is as close to ``target`` as one word allows (the measured value, not the target, is the ground truth)."""
    words = text.split(" ")
    base = shingles([text])[0]
    order = rng.sample(range(len(words)), len(words))
    fresh = [f"zz{rng.randrange(10**9)}" for _ in order]

    def edited(m: int) -> str:
        out = list(words)
        for j, w in zip(order[:m], fresh[:m]):
            out[j] = w
        return " ".join(out)

    lo, hi = 0, len(words)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if jaccard(base, shingles([edited(mid)])[0]) >= target:
            lo = mid
        else:
            hi = mid
    return edited(max(lo, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--originals", type=int, default=150)
    ap.add_argument("--copies", type=int, default=150, help="a third each: near duplicates, grey zone, distractors")
    ap.add_argument("--threshold", type=float, default=0.8, help="the recipe's jaccard_threshold is set to it")
    ap.add_argument("--recipe", default="minimal")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    recipe = load_recipe(args.recipe)
    std = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in std.rglob("*.py") if 3000 < p.stat().st_size < 30000 and "test" not in p.parts)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in rng.sample(files, args.originals)]
    texts = list(dict.fromkeys(texts))  # byte-identical stdlib files would be exact, not near, duplicates

    def shingles(ts: list[str]) -> list[set[int]]:
        return shingle_sets(ts, recipe)

    planted, sources = [], rng.sample(range(len(texts)), min(args.copies, len(texts)))
    for k, src in enumerate(sources):  # each original gets at most one copy, so a pair's outcome is its own
        low, high = [(args.threshold, 1.0), (args.threshold - 0.2, args.threshold), (0.2, 0.55)][k % 3]
        target = rng.uniform(low, high)
        planted.append(edit_to(texts[src], target, rng, shingles))
    docs = texts + planted
    sets = shingles(docs)
    truth = {
        (i, j): s for i, j in combinations(range(len(docs)), 2) if (s := jaccard(sets[i], sets[j])) > 0.15
    }  # pairs below 0.15 are never flagged in practice and never true duplicates
    spec = recipe.dedup.minhash.model_copy(update={"jaccard_threshold": args.threshold})

    def with_threshold(jaccard_threshold: float):
        minhash = spec.model_copy(update={"jaccard_threshold": jaccard_threshold})
        return recipe.model_copy(update={"dedup": recipe.dedup.model_copy(update={"minhash": minhash})})

    true_pairs = [(p, s) for p, s in truth.items() if s >= args.threshold]
    partners = {i for (pair, _) in true_pairs for i in pair}
    gray = {i for pair, s in truth.items() if s >= args.threshold - 0.1 for i in pair}
    lonely = {i for i in range(len(docs)) if sum(i in p for p in truth) <= 1}  # no third document similar to it
    planted_pairs = {
        (src, len(texts) + k): truth.get((src, len(texts) + k), 0.0)
        for k, src in enumerate(sources)
        if src in lonely and len(texts) + k in lonely
    }
    src_mb = sum(len(t.encode()) for t in docs) / 1e6

    def measure(run_recipe) -> dict:
        with tempfile.TemporaryDirectory() as root:
            src = Path(root) / "src"
            src.mkdir()
            for i, text in enumerate(docs):
                (src / f"{i:05d}.py").write_text(text, encoding="utf-8")
            req = CurateRequest(source=src, out=Path(root) / "out", recipe=run_recipe, workers=args.workers)
            t0 = time.perf_counter()
            result = curate(req)
            wall = time.perf_counter() - t0
            kept = {json.loads(line)["id"] for p in (req.out / "data").glob("*.jsonl") for line in p.open()}
        removed = {i for i in range(len(docs)) if f"{i:05d}.py" not in kept}
        hit = [bool({i, j} & removed) for (i, j), _ in true_pairs]
        bins = {}
        for lo in [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]:
            pairs = [(p, s) for p, s in planted_pairs.items() if lo <= s < lo + 0.1]
            if pairs:
                flagged = sum(bool(set(p) & removed) for p, _ in pairs)
                bins[f"{lo:.1f}-{lo + 0.1:.1f}"] = {
                    "pairs": len(pairs),
                    "one_removed": round(flagged / len(pairs), 4),
                    "lsh_s_curve_at_mean_j": round(spec.detect_probability(sum(s for _, s in pairs) / len(pairs)), 4),
                }
        check = next((s.minhash_pairs for s in result.stats.stages if s.name == "minhash_chk"), {})
        return {
            "recall": round(sum(hit) / max(len(true_pairs), 1), 4),
            "precision": round(len(removed & partners) / max(len(removed), 1), 4),
            "removed": len(removed),
            "removed_without_true_partner": len(removed - partners),
            "precision_counting_0.1_below_threshold": round(len(removed & gray) / max(len(removed), 1), 4),
            "lsh_candidate_pairs": check.get("candidates", 0),
            "rejected_by_exact_jaccard": check.get("rejected", 0),
            "detection_by_jaccard": bins,
            "wall_s": round(wall, 2),
            "stage_mb_per_s": {s.name: round(src_mb / s.seconds, 3) for s in result.stats.stages if s.seconds > 0},
            "stage_seconds": {s.name: round(s.seconds, 2) for s in result.stats.stages},
        }

    out = {
        "benchmark": "curate_dedup",
        "recipe": recipe.name,
        "minhash": {
            "n_grams": spec.n_grams,
            "bands": spec.bands,
            "rows": spec.rows,
            "s_curve_mid": spec.threshold,
            "jaccard_threshold": args.threshold,
        },
        "threshold": args.threshold,
        "documents": len(docs),
        "true_pairs_above_threshold": len(true_pairs),
        "verified": measure(with_threshold(args.threshold)),
        "lsh_only": measure(with_threshold(1e-9)),
        "workers": args.workers,
        "source_mb": round(src_mb, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
