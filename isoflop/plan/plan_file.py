"""``plan.yaml``: the plan in the TrainConfig schema, so that the trainer runs it as it is.

Sections ``model`` (ModelSpec fields), ``data``, ``train``, ``optim``, ``parallel`` as the trainer reads them;
``predicted`` (what the trainer copies beside its measurements) and ``plan`` (free-form planner metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from isoflop.atomic import atomic_write_text


def _strategy(layout: dict[str, Any] | None) -> str:
    if not layout:
        return "auto"
    if layout.get("zero", 0) == 3 and layout.get("replicate", 1) > 1:
        return "hsdp"
    if layout.get("zero", 0) >= 1:
        return "fsdp"
    return "ddp" if layout.get("dp", 1) > 1 else "none"


def train_config(plan: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig mapping for ``plan`` (the dict of ``make_plan``)."""
    hp = plan["hyperparameters"]
    layout = plan.get("layout")
    spec = dict(plan["model"]["spec"])
    return {
        "model": spec,
        "data": {"source": "stdlib", "vocab_size": spec["vocab_size"], "tokenizer": None},
        "train": {
            "seq_len": int(plan["seq_len"]),
            "global_batch": int(hp["global_batch"]),
            "micro_batch": int(layout["micro_batch"]) if layout else None,
            "max_steps": None,
            "tokens": int(round(plan["tokens"])),
            "seed": 0,
            "dtype": "auto",
            "compile": False,
            "activation_checkpointing": bool(layout and layout.get("recompute", "none") != "none"),
            "eval_every": 50,
            "eval_batches": 8,
            "log_every": 10,
            "ckpt_every": 0,
            "keep_checkpoints": 2,
        },
        "optim": {
            "lr": float(hp["lr"]),
            "min_lr_ratio": float(hp["min_lr_ratio"]),
            "schedule": hp["schedule"],
            "warmup_steps": int(hp["warmup_steps"]),
            "decay_fraction": float(hp["decay_fraction"] or 0.2),
            "weight_decay": 0.1,
            "beta1": 0.9,
            "beta2": 0.95,
            "eps": 1.0e-8,
            "grad_clip": 1.0,
        },
        "parallel": {
            "strategy": _strategy(layout),
            "replicate": int(layout.get("replicate", 1)) if layout else 1,
            **({k: layout[k] for k in ("tp", "pp", "dp", "zero")} if layout else {}),
        },
        "predicted": {
            "loss": plan["predicted_loss"],
            "loss_ci95": plan["predicted_loss_ci95"],
            "step_time_s": plan.get("step_time_s"),
            "memory_gib": plan.get("memory_gib"),
            "tokens_per_s": plan.get("tokens_per_s"),
            "mfu": plan.get("mfu"),
        },
        "plan": {
            "budget": plan["budget"],
            "law": plan["law"],
            "flops": plan["flops"],
            "tokens_per_param": plan["tokens_per_param"],
            "hyperparameter_laws": hp["laws"],
            **{k: plan[k] for k in ("layout", "days", "gpu_hours", "cost_usd", "energy_kwh", "co2_kg") if k in plan},
        },
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Write ``plan.yaml`` atomically."""
    header = (
        "# Written by `isoflop plan`; runs as it is with the trainer (TrainConfig schema).\n"
        "# data.source 'stdlib' is the small built-in corpus: point it at your training data for a real run.\n"
    )
    return atomic_write_text(path, header + yaml.safe_dump(_plain(train_config(plan)), sort_keys=False))
