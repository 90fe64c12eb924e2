"""``isoflop finetune``: full, LoRA, DoRA or QLoRA fine-tuning of a Hugging Face causal LM, memory predicted
first (``--dry-run`` stops there, torch-free) and measured after."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError


def _render(summary: dict):
    def render(console) -> None:
        table = Table(title=f"isoflop finetune: {summary['method']} of {summary['base']}")
        table.add_column("metric")
        table.add_column("value", justify="right")

        def fmt(value, spec=".4g"):
            return "n/a" if value is None else format(value, spec)

        pred = summary.get("predicted") or {}
        rows = [("trainable params", fmt(pred.get("trainable_params", summary.get("trainable_params")), ",d"))]
        if "val_loss" in summary:
            rows += [
                ("steps", fmt(summary["steps"], ",d")),
                (
                    "val loss (base -> tuned)",
                    f"{fmt(summary['initial_val_loss'], '.4f')} -> {fmt(summary['val_loss'], '.4f')}",
                ),
                ("step time s", fmt(summary["step_time_s"])),
            ]
        for key in ("base_weights_gib", "trainable_gib", "gradients_gib", "optimizer_gib", "activations_gib"):
            if key in pred:
                rows.append((f"predicted {key}", fmt(pred[key], ".4g")))
        rows.append(
            (
                "memory GiB: predicted / measured",
                f"{fmt(pred.get('total_gib'))} / {fmt((summary.get('measured') or {}).get('peak_gib'))}",
            )
        )
        for key in ("adapter_dir", "merged_dir", "model_dir"):
            if summary.get(key):
                rows.append((key.removesuffix("_dir"), summary[key]))
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)

    return render


@app.command()
def finetune(
    base: str = typer.Argument(..., help="Hugging Face causal-LM folder, or an isoflop run folder (its hf/ export)."),
    data: str | None = typer.Option(None, "--data", "-d", help="JSONL: text, prompt/completion or chat messages."),
    out: str | None = typer.Option(None, "--out", "-o", help="New output folder (adapter/, merged/, summary.json)."),
    method: str = typer.Option("lora", "--method", help="full, lora, dora or qlora (4-bit NF4 base)."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha (the update is scaled by alpha / r)."),
    dropout: float = typer.Option(0.0, "--dropout", min=0.0, max=1.0, help="Dropout on the adapter's input."),
    target_modules: list[str] = typer.Option(
        [], "--target-modules", "-t", help="Linear layers to adapt (repeatable; default: peft's for the family)."
    ),
    max_steps: int = typer.Option(20, "--max-steps", help="Optimizer steps."),
    batch: int = typer.Option(4, "--batch", help="Examples per step."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per example (truncated or padded)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (constant)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Held-out share of the examples."),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("fp32", "--dtype", help="Base weights and activations: fp32, bf16 or fp16."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute each layer in backward."),
    merge: bool = typer.Option(False, "--merge-adapter", help="Also write the merged full model to OUT/merged."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the predicted memory and stop (no torch needed)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune a causal LM with peft adapters or fully; predicts step memory, then measures it."""
    from isoflop.finetune.config import FinetuneConfig, predict_only

    cfg = FinetuneConfig(
        base=base,
        data=data or "",
        out=out or "",
        method=method,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        targets=tuple(target_modules),
        lr=lr,
        max_steps=max_steps,
        micro_batch=batch,
        seq_len=seq_len,
        val_fraction=val_fraction,
        seed=seed,
        grad_checkpointing=grad_checkpointing,
        merge_adapter=merge,
        dtype=dtype,
    )
    if dry_run:
        setup, predicted = predict_only(cfg)
        summary = {"method": method, "base": base, "setup": asdict(setup), "predicted": predicted}
        emit(summary, as_json, _render(summary))
        return
    if not data or not out:
        raise IsoflopError("fine-tuning needs --data FILE and --out DIR (or --dry-run for the prediction only)")
    from isoflop.finetune.trainer import finetune as run

    summary = run(cfg)
    emit(summary, as_json, _render(summary))
