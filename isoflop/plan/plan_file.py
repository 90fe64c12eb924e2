"""``plan.yaml``: the plan in the TrainConfig schema, so that the trainer runs it as it is.

Sections ``model`` (ModelSpec fields), ``data``, ``train``, ``optim``, ``parallel`` as the trainer reads them;
``predicted`` (what the trainer copies beside its measurements) and ``plan`` (free-form planner metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from isoflop.atomic import atomic_write_text
from isoflop.plan.planner import Plan
from isoflop.train.config import OptimSection, ParallelSection, PredictedSection, TrainConfig, TrainSection
from isoflop.train.data import DataConfig


def _strategy(layout: dict[str, Any] | None) -> str:
    if not layout:
        return "auto"
    if layout.get("zero", 0) == 3 and layout.get("replicate", 1) > 1:
        return "hsdp"
    if layout.get("zero", 0) >= 1:
        return "fsdp"
    return "ddp" if layout.get("dp", 1) > 1 else "none"


def plan_train_config(plan: Plan) -> TrainConfig:
    """The ``TrainConfig`` that runs ``plan``: what the plan decides; every other setting is the trainer's default
    (``isoflop.train.config``)."""
    hp = plan.hyperparameters
    layout = plan.hardware.layout if plan.hardware else None
    spec = plan.model.spec
    return TrainConfig(
        model=spec,
        data=DataConfig(source="stdlib", vocab_size=spec.vocab_size, tokenizer=None),
        train=TrainSection(
            seq_len=int(plan.seq_len),
            global_batch=int(hp["global_batch"]),
            micro_batch=int(layout["micro_batch"]) if layout else None,
            tokens=int(round(plan.tokens)),
            activation_checkpointing=layout.get("recompute", "none") if layout else "none",
        ),
        optim=OptimSection(
            lr=float(hp["lr"]),
            min_lr_ratio=float(hp["min_lr_ratio"]),
            schedule=hp["schedule"],
            warmup_steps=int(hp["warmup_steps"]),
            decay_fraction=float(hp["decay_fraction"] or 0.2),
        ),
        parallel=ParallelSection(
            strategy=_strategy(layout),
            replicate=int(layout.get("replicate", 1)) if layout else 1,
            **({k: layout[k] for k in ("tp", "pp", "dp", "zero", "cp", "interleave") if k in layout} if layout else {}),
        ),
        predicted=PredictedSection(
            loss=plan.predicted_loss,
            loss_ci95=plan.predicted_loss_ci95,
            **(
                {k: getattr(plan.hardware, k) for k in ("step_time_s", "memory_gib", "tokens_per_s", "mfu")}
                if plan.hardware
                else {}
            ),
        ),
        plan={
            "budget": plan.budget,
            "law": plan.law,
            "flops": plan.flops,
            "tokens_per_param": plan.tokens_per_param,
            "hyperparameter_laws": hp["laws"],
            **(
                {
                    k: getattr(plan.hardware, k)
                    for k in ("layout", "days", "gpu_hours", "cost_usd", "energy_kwh", "co2_kg")
                }
                if plan.hardware
                else {}
            ),
        },
    )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan.yaml`` atomically."""
    header = (
        "# Written by `isoflop plan`; runs as it is with the trainer (TrainConfig schema).\n"
        "# data.source 'stdlib' is the small built-in corpus: point it at your training data for a real run.\n"
    )
    data = plan_train_config(plan).model_dump(mode="json")
    return atomic_write_text(path, header + yaml.safe_dump(_plain(data), sort_keys=False))
