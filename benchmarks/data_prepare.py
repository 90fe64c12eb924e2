"""Benchmark: first (read + train BPE + tokenize + write shards) vs cached ``prepare_data`` on the stdlib corpus.

Run: ``python benchmarks/data_prepare.py [--max-bytes N] [--vocab-size V]``. Both timings come from the same
process and the same fresh temporary cache folder; ``first_cpu_s`` is the CPU time of all threads, which
unlike wall time does not depend on other load on the machine. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.train.data import DataConfig, prepare_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="stdlib")
    ap.add_argument("--max-bytes", type=int, default=None)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--cached-repeats", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    cfg = DataConfig(source=args.source, max_bytes=args.max_bytes, vocab_size=args.vocab_size)
    with tempfile.TemporaryDirectory() as root:
        t0, c0 = time.perf_counter(), time.process_time()
        first = prepare_data(cfg, cache_dir=root)
        first_s, first_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        cached = []
        for _ in range(args.cached_repeats):
            t0 = time.perf_counter()
            again = prepare_data(cfg, cache_dir=root)
            cached.append(time.perf_counter() - t0)
        assert len(again.train) == len(first.train)
        sampler = again.sampler(args.seq_len, args.batch, seed=0)
        sampler.next_batch()  # imports torch outside the timing
        t0 = time.perf_counter()
        for _ in range(200):
            sampler.next_batch()
        sampler_ms = (time.perf_counter() - t0) / 200 * 1e3
        m = first.manifest
        n_tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
        cached_s = sorted(cached)[len(cached) // 2]
        print(
            json.dumps(
                {
                    "source": cfg.source,
                    "documents": m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"],
                    "skipped": len(m["skipped"]),
                    "text_mb": round(m["text_bytes"] / 1e6, 3),
                    "vocab_size": first.vocab_size,
                    "train_tokens": m["splits"]["train"]["tokens"],
                    "val_tokens": m["splits"]["val"]["tokens"],
                    "bytes_per_token": round(m["text_bytes"] / n_tokens, 3),
                    "first_s": round(first_s, 3),
                    "first_cpu_s": round(first_cpu_s, 3),  # all threads; wall time depends on the machine's load
                    "first_phases_s": {k: round(v, 3) for k, v in m["seconds"].items()},
                    "cached_s": round(cached_s, 4),
                    "speedup": round(first_s / cached_s, 1),
                    "sampler_ms_per_batch": round(sampler_ms, 4),  # (batch x seq_len) int64 x and y from the memory map
                    "sampler_shape": [args.batch, args.seq_len],
                }
            )
        )


if __name__ == "__main__":
    main()
