"""A stand-in trainer for the runner tests (imported by the worker subprocess as ``tests.ladder_fake_entry``).

It checks the thread count the runner promised, then behaves as the config's ``plan.fake`` asks:
``ok`` returns a summary, ``crash`` raises, ``crash_once`` raises unless a marker file exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def train(config: dict, out_dir: str) -> dict:
    import torch

    mode = config["plan"].get("fake", "ok")
    marker = Path(config["plan"].get("marker", out_dir)) / "crashed_once"
    if mode == "crash":
        raise RuntimeError("deliberate failure for the test")
    if mode == "crash_once" and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("1")
        raise RuntimeError("first attempt fails")
    time.sleep(float(config["plan"].get("sleep", 0)))
    log = Path(config["plan"]["log"])
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(
            f"{config['plan']['name']} {os.getpid()} {torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}\n"
        )
    return {"status": "complete", "final_train_loss": 3.0, "val_loss": 3.1, "steps": 10, "tokens": 1000}
