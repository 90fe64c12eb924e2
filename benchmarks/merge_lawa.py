"""Benchmark: does LAWA (averaging a run's last K checkpoints; Kaddour 2022, Sanyal et al. 2023) lower the
validation loss of a short pretraining run?

Run: ``python benchmarks/merge_lawa.py [--steps 120 --every 10 --keep 8 --schedule cosine --seq-len 256
--batch 16]``. Trains the ``tiny`` training preset (about 1M parameters, stdlib corpus) for ``--steps`` steps with
a checkpoint every ``--every`` steps, keeping the last ``--keep``; then evaluates, on the run's fixed validation
batches, the last checkpoint and the uniform average of the last K checkpoints for K = 2, 4, ... up to ``--keep``
(the weights ``isoflop merge --average`` exports). Negative ``delta`` = the average is better. The last printed
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from isoflop.merge.average import average_weights, run_checkpoints
from isoflop.train.config import load_train_config
from isoflop.train.data import prepare_data
from isoflop.train.loop import train
from isoflop.train.model import build_model


def val_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for x, y in batches:
            total += float(model(x, y)) * y.numel()
            count += y.numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--keep", type=int, default=8)
    ap.add_argument("--schedule", choices=["cosine", "wsd"], default="cosine")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=16)
    args = ap.parse_args()
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.ckpt_every={args.every}",
        f"train.keep_checkpoints={args.keep}",
        f"train.eval_every={args.steps}",
        f"optim.schedule={args.schedule}",
        f"train.seq_len={args.seq_len}",
        f"train.global_batch={args.batch}",
    ]
    cfg = load_train_config(preset="tiny", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        summary = train(cfg, run)
        data = prepare_data(cfg.data)
        batches = data.val_batches(cfg.train.seq_len, cfg.train.global_batch, args.eval_batches)
        model = build_model(cfg.model, "cpu")
        rows = {}
        ks = sorted({k for k in (1, 2, 4, 8, 16, args.keep) if k <= args.keep})
        for k in ks:
            chosen = run_checkpoints(run, k)
            model.load_state_dict(average_weights(model, [p for _, p in chosen]))
            rows[k] = {"steps": [s for s, _ in chosen], "val_loss": round(val_loss(model, batches), 5)}
        last = rows[1]["val_loss"]
        for row in rows.values():
            row["delta_vs_last"] = round(row["val_loss"] - last, 5)
    print(
        json.dumps(
            {
                "preset": "tiny",
                "steps": args.steps,
                "ckpt_every": args.every,
                "schedule": args.schedule,
                "seq_len": args.seq_len,
                "global_batch": args.batch,
                "eval_tokens": args.eval_batches * cfg.train.global_batch * cfg.train.seq_len,
                "train_summary_val_loss": summary["val_loss"],
                "lawa": {f"last_{k}": row for k, row in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
