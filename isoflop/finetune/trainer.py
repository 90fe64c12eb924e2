"""``isoflop finetune``: train, evaluate on a held-out split, save the adapter (and a merged model), and set the
predicted step memory (``isoflop.perf.finetune``) beside the measured one (``memtrack.PeakTensorBytes``).

Optimizer: AdamW over the trainable parameters (weight decay 0) at a constant learning rate; batches cycle
through a seeded permutation of the training examples, one permutation per epoch.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from isoflop.atomic import atomic_write_json
from isoflop.errors import IsoflopError
from isoflop.finetune.config import FinetuneConfig, check_config, predict, resolve_base
from isoflop.finetune.data import IGNORE, load_sft
from isoflop.finetune.memtrack import PeakTensorBytes
from isoflop.finetune.model import attach_adapter, load_base, quant_tensors, require_extra
from isoflop.perf.finetune import GIB


def _check(cfg: FinetuneConfig) -> Path:
    check_config(cfg)
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IsoflopError(f"output folder {str(out)!r} is not empty; choose a new --out")
    return resolve_base(cfg.base)


def _val_loss(model: Any, val: dict[str, torch.Tensor], batch: int) -> float:
    """Mean loss per completion token over the held-out split."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, val["input_ids"].shape[0], batch):
            part = {k: v[i : i + batch] for k, v in val.items()}
            n = int((part["labels"][:, 1:] != IGNORE).sum())
            if n:
                total += float(model(**part).loss) * n
                count += n
    model.train()
    return total / count if count else float("nan")


def _save_dir(target: Path, write: Any) -> Path:
    """Write a folder through ``write(tmp)`` and rename it into place (no half-written folder survives)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def merge_adapter(base: Path, adapter: Path, target: Path, dtype: str, tokenizer: Any) -> Path:
    """Load the unquantised base, apply the adapter and fold it into the weights (peft ``merge_and_unload``)."""
    from peft import PeftModel

    def write(tmp: Path) -> None:
        merged = PeftModel.from_pretrained(load_base(base, dtype, "none"), adapter).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _save_dir(target, write)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.base`` on ``cfg.data``; returns the summary also written to ``out/summary.json``."""
    require_extra()
    folder = _check(cfg)
    setup, predicted = predict(cfg, folder)
    from transformers import AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = load_sft(cfg.data, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.seed)
    quant = "nf4" if cfg.method == "qlora" else "none"
    model = load_base(folder, cfg.dtype, quant)
    model = attach_adapter(
        model, cfg.method, cfg.rank, cfg.alpha, cfg.dropout, list(setup.targets), cfg.grad_checkpointing
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    initial_val = _val_loss(model, data.val, cfg.micro_batch)

    n = data.train["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    tracker = PeakTensorBytes()
    measure_at = min(2, cfg.max_steps)  # the first step with optimizer states: the steady-state peak
    tokens, losses, times = 0, [], []
    start = time.perf_counter()
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as log:
        for step in range(1, cfg.max_steps + 1):
            while len(order) < cfg.micro_batch:
                order += torch.randperm(n, generator=gen).tolist()
            rows, order = order[: cfg.micro_batch], order[cfg.micro_batch :]
            batch = {k: v[rows] for k, v in data.train.items()}
            if step == measure_at:
                gc.collect()
                state = [model.parameters(), model.buffers(), quant_tensors(model), optimizer.state_dict()["state"]]
                tracker.track([t for group in state for t in (group.values() if isinstance(group, dict) else group)])
            t0 = time.perf_counter()
            if step == measure_at:
                with tracker:
                    loss = _train_step(model, optimizer, batch)
            else:
                loss = _train_step(model, optimizer, batch)
            times.append(time.perf_counter() - t0)
            tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
            losses.append(loss)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                log.write(json.dumps({"step": step, "loss": loss, "tokens": tokens, "step_time_s": times[-1]}) + "\n")
                log.flush()
    wall = time.perf_counter() - start
    val = _val_loss(model, data.val, cfg.micro_batch)

    adapter_dir = merged_dir = model_dir = None
    if cfg.method == "full":
        model_dir = _save_dir(out / "model", lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    else:
        adapter_dir = _save_dir(
            out / "adapter", lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp))
        )
        if cfg.merge_adapter:
            merged_dir = merge_adapter(folder, adapter_dir, out / "merged", cfg.dtype, tokenizer)

    measured_gib = tracker.peak / GIB
    steady = times[1:] or times
    summary = {
        "method": cfg.method,
        "base": str(folder),
        "targets": list(setup.targets) if cfg.method != "full" else [],
        "rank": cfg.rank if cfg.method != "full" else None,
        "total_params": n_total,
        "trainable_params": n_trainable,
        "steps": cfg.max_steps,
        "tokens": tokens,
        "train_examples": n,
        "val_examples": int(data.val["input_ids"].shape[0]),
        "final_train_loss": losses[-1],
        "initial_val_loss": initial_val,
        "val_loss": val,
        "step_time_s": sum(steady) / len(steady),
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "wall_s": wall,
        "predicted": predicted,
        "measured": {"peak_gib": measured_gib, "step": measure_at},
        "memory_error": (predicted["total_gib"] / measured_gib - 1.0) if predicted and measured_gib else None,
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "merged_dir": str(merged_dir) if merged_dir else None,
        "model_dir": str(model_dir) if model_dir else None,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _train_step(model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
