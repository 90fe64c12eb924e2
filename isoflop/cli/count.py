"""``isoflop count``: exact parameters and FLOPs of a model."""

from __future__ import annotations

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, MODEL_ARGUMENT, MODEL_OPTION, emit, pick_model
from isoflop.perf.layout import check_counts
from isoflop.spec import count_flops, count_params, load_spec, preset_names
from isoflop.spec.accounting import flops_per_step


def count_report(model: str, seq_len: int | None, batch_size: int, causal: bool) -> dict:
    """The ``count`` result as a plain dict (the documented JSON)."""
    spec = load_spec(model)
    params = count_params(spec)
    flops = count_flops(spec, seq_len, causal=causal)
    step = {
        policy: flops_per_step(spec, batch_size, flops.seq_len, recompute=policy, causal=causal).__dict__
        for policy in ("none", "selective", "full")
    }
    return {
        "model": spec.model_dump(),
        "params": params.to_dict(),
        "flops_per_token": {
            "seq_len": flops.seq_len,
            "causal": flops.causal,
            "forward": flops.forward,
            "backward": flops.backward,
            "training": flops.training,
            "six_n": flops.six_n,
            "six_n_non_embedding": flops.six_n_non_embedding,
            "training_over_six_n": flops.training / flops.six_n,
            "forward_breakdown": {
                "attention_proj": flops.attention_proj,
                "attention_scores": flops.attention_scores,
                "mlp": flops.mlp,
                "logits": flops.logits,
            },
        },
        "flops_per_step": {"batch_size": batch_size, **{policy: step[policy] for policy in step}},
    }


def _render(report: dict):
    def render(console) -> None:
        p, f = report["params"], report["flops_per_token"]
        spec = report["model"]
        console.print(
            f"[bold]{spec['name']}[/]  d_model={spec['d_model']} layers={spec['n_layers']} heads={spec['n_heads']}"
            f" kv_heads={spec['n_kv_heads']} d_ff={spec['d_ff']} vocab={spec['vocab_size']}"
        )
        table = Table(title="Parameters")
        table.add_column("part")
        table.add_column("count", justify="right")
        table.add_column("billions", justify="right")
        for key in ("total", "embedding", "non_embedding", "active", "attention", "mlp", "router", "norms", "lm_head"):
            table.add_row(key, f"{p[key]:,}", f"{p[key] / 1e9:.4f}")
        console.print(table)
        convention = "causal (lower triangle)" if f["causal"] else "full s x s square (Megatron/PaLM convention)"
        ft = Table(title=f"FLOPs per token at seq_len={f['seq_len']}, attention counted as {convention}")
        ft.add_column("term")
        ft.add_column("GFLOP", justify="right")
        for key, value in f["forward_breakdown"].items():
            ft.add_row(f"forward: {key}", f"{value / 1e9:.4f}")
        for key in ("forward", "backward", "training", "six_n", "six_n_non_embedding"):
            ft.add_row(key, f"{f[key] / 1e9:.4f}")
        console.print(ft)
        s = report["flops_per_step"]
        console.print(
            f"per step (batch {s['batch_size']} x {f['seq_len']}): model {s['none']['model']:.4g} FLOP; hardware with "
            f"selective recompute {s['selective']['hardware']:.4g}, full recompute {s['full']['hardware']:.4g}"
        )

    return render


@app.command()
def count(
    model_arg: str | None = MODEL_ARGUMENT,
    model: str | None = MODEL_OPTION,
    seq_len: int | None = typer.Option(None, "--seq-len", "-s", help="Sequence length (default: the model's context)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Sequences per step, for the per-step FLOPs."),
    causal: bool = typer.Option(False, "--causal", help="Count only the causal half of attention scores."),
    list_presets: bool = typer.Option(False, "--list", help="List the model presets and exit."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Exact parameter counts and FLOPs per token (forward, backward, training) with their breakdown."""
    if list_presets:
        emit(preset_names(), as_json, lambda c: c.print("\n".join(preset_names())))
        return
    check_counts(seq_len=seq_len, batch_size=batch_size)
    report = count_report(pick_model(model_arg, model), seq_len, batch_size, causal)
    emit(report, as_json, _render(report))
