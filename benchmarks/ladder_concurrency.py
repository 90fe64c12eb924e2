"""Two 1-thread runs at once vs the same two runs one after the other with 2 threads each (tiny ladder models),
and one run alone with 1 vs 2 threads (what the held-out run, which trains alone, should use).

Each "run" trains a tiny Llama-style model (the ladder's shapes) for a fixed number of AdamW steps on random
tokens in its own process. Prints one JSON object (last line): wall seconds of both schedules, the speedup of
concurrent 1-thread runs, and the measured training FLOP/s of each schedule (exact accounting FLOPs).

    python benchmarks/ladder_concurrency.py [--steps 60] [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run(n_params: int, steps: int, threads: int, seq_len: int, batch: int, vocab: int, queue) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from isoflop.ladder.grid import default_shape
    from isoflop.train.model import Transformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = default_shape(n_params, vocab, seq_len, 16)
    model = Transformer(spec)
    model.init_weights() if hasattr(model, "init_weights") else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len + 1))
    start = None
    for step in range(steps + 3):
        if step == 3:
            start = time.perf_counter()  # skip warm-up steps
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    queue.put(time.perf_counter() - start)


def schedule(concurrent: int, threads: int, runs: int, args) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    pending = list(range(runs))
    while pending:
        batch = [pending.pop() for _ in range(min(concurrent, len(pending)))]
        procs = [
            ctx.Process(target=_run, args=(args.n, args.steps, threads, args.seq_len, args.batch, args.vocab, queue))
            for _ in batch
        ]
        for p in procs:
            p.start()
        for _ in procs:
            queue.get()  # each run reports when it is done; only the wall time of the batch is used
        for p in procs:
            p.join()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--n", type=int, default=100_000, help="non-embedding parameters of the tiny model")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=512)
    args = ap.parse_args()
    from isoflop.ladder.grid import default_shape
    from isoflop.spec import count_flops, count_params

    spec = default_shape(args.n, args.vocab, args.seq_len, 16)
    flops_per_run = count_flops(spec, args.seq_len).training * args.batch * args.seq_len * args.steps
    two_by_one = schedule(concurrent=2, threads=1, runs=2, args=args)
    one_by_two = schedule(concurrent=1, threads=2, runs=2, args=args)
    single_1 = schedule(concurrent=1, threads=1, runs=1, args=args)
    print(
        json.dumps(
            {
                "model": {
                    "d_model": spec.d_model,
                    "n_layers": spec.n_layers,
                    "non_embedding": count_params(spec).non_embedding,
                },
                "steps": args.steps,
                "batch_tokens": args.batch * args.seq_len,
                "cores": os.cpu_count(),
                "two_runs_1_thread_concurrent_s": two_by_one,
                "two_runs_2_threads_serial_s": one_by_two,
                "speedup_concurrent_1_thread": one_by_two / two_by_one,
                "one_run_1_thread_s": single_1,
                "one_run_2_threads_s": one_by_two / 2,
                "speedup_2_threads_single_run": single_1 / (one_by_two / 2),
                "flops_per_s_concurrent": 2 * flops_per_run / two_by_one,
                "flops_per_s_serial_2_threads": 2 * flops_per_run / one_by_two,
            }
        )
    )


if __name__ == "__main__":
    main()
