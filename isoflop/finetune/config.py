"""Fine-tuning settings, input checks and the memory prediction: torch-free, so ``--dry-run`` needs no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isoflop.errors import IsoflopError
from isoflop.perf.finetune import DEFAULT_TARGETS, METHODS, FinetuneSetup, check_targets, family, finetune_memory
from isoflop.spec.loader import load_spec
from isoflop.spec.model import ModelSpec


@dataclass(frozen=True)
class FinetuneConfig:
    base: str
    data: str
    out: str
    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()
    lr: float = 1e-3
    max_steps: int = 20
    micro_batch: int = 4
    seq_len: int = 128
    val_fraction: float = 0.1
    seed: int = 0
    grad_checkpointing: bool = False
    merge_adapter: bool = False
    dtype: str = "fp32"
    log_every: int = 1


def resolve_base(base: str | Path) -> Path:
    """The folder holding ``config.json``: ``base`` itself, or ``base/hf`` for an isoflop run folder."""
    folder = Path(base)
    if (folder / "config.json").is_file():
        return folder
    if (folder / "hf" / "config.json").is_file():
        return folder / "hf"
    if not folder.exists():
        raise IsoflopError(f"base model {str(folder)!r} does not exist; give a Hugging Face folder or an isoflop run")
    raise IsoflopError(
        f"{str(folder)!r} holds no config.json (nor hf/config.json); give a Hugging Face model folder or an isoflop "
        "run folder trained with export on"
    )


def check_config(cfg: FinetuneConfig) -> None:
    if cfg.method not in METHODS:
        raise IsoflopError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}")
    if cfg.method != "full" and cfg.rank <= 0:
        raise IsoflopError(f"LoRA rank must be positive, got {cfg.rank}; pass --rank 8 (or any r >= 1)")
    if cfg.max_steps < 1 or cfg.micro_batch < 1 or cfg.seq_len < 2:
        raise IsoflopError("--max-steps and --batch must be >= 1 and --seq-len >= 2; raise them")
    if cfg.dtype not in ("fp32", "bf16", "fp16"):
        raise IsoflopError(f"unknown dtype {cfg.dtype!r}; use fp32, bf16 or fp16")


def base_spec(folder: Path) -> ModelSpec | None:
    """The base's ``ModelSpec`` from its ``config.json``; ``None`` outside the GPT-2 and Llama families."""
    try:
        return load_spec(folder / "config.json")
    except IsoflopError:
        return None


def predict(cfg: FinetuneConfig, folder: Path) -> tuple[FinetuneSetup, dict[str, Any] | None]:
    """The setup (with the family's default targets filled in) and its predicted memory, ``None`` when the
    model is outside the memory model (activations are modelled for the Llama family)."""
    return predict_spec(cfg, base_spec(folder))


def predict_spec(cfg: FinetuneConfig, spec: ModelSpec | None) -> tuple[FinetuneSetup, dict[str, Any] | None]:
    check_config(cfg)
    targets = cfg.targets or (DEFAULT_TARGETS[family(spec)] if spec is not None else ())
    setup = FinetuneSetup(
        method=cfg.method,  # type: ignore[arg-type]
        rank=cfg.rank,
        targets=tuple(targets),
        dropout=cfg.dropout,
        dtype=cfg.dtype,
        micro_batch=cfg.micro_batch,
        seq_len=cfg.seq_len,
        grad_checkpointing=cfg.grad_checkpointing,
    )
    if spec is None:
        return setup, None
    if setup.adapter:
        check_targets(spec, setup.targets)
    if family(spec) != "llama":
        return setup, None
    return setup, asdict(finetune_memory(spec, setup))


def predict_only(cfg: FinetuneConfig) -> tuple[FinetuneSetup, dict[str, Any]]:
    """``--dry-run``: the prediction for a model folder, or any model ``isoflop count`` takes (a preset name,
    a spec file or a ``config.json``), without loading weights."""
    path = Path(cfg.base)
    if path.is_dir() or not (path.is_file() or not path.suffix):
        setup, predicted = predict(cfg, resolve_base(cfg.base))
    else:
        setup, predicted = predict_spec(cfg, load_spec(cfg.base))
    if predicted is None:
        raise IsoflopError(f"no memory model for {cfg.base!r}; the prediction covers the Llama family")
    return setup, predicted
