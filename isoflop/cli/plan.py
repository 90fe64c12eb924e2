"""``isoflop plan``: from a budget to a compute-optimal model, layout, time, cost and energy, and a plan.yaml."""

from __future__ import annotations

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError
from isoflop.perf.lowcomm import SyncChoice, choose_sync
from isoflop.perf.optimizer_state import param_shapes
from isoflop.plan.plan_file import write_plan
from isoflop.plan.planner import DEFAULT_CARBON_KG_PER_KWH, DEFAULT_PUE, Plan, PlanRequest, make_plan


def _fmt_ci(ci: list[float] | None, spec: str = ".4f") -> str:
    return f" (95% CI {ci[0]:{spec}} to {ci[1]:{spec}})" if ci else ""


def _cross_site(plan: Plan, sites: int | None, gbps: float | None) -> SyncChoice | None:
    """DDP or DiLoCo across ``sites`` joined at ``gbps`` Gbit/s (``isoflop.perf.lowcomm.choose_sync``)."""
    if sites is None and gbps is None:
        return None
    if sites is None or gbps is None or plan.hardware is None:
        raise IsoflopError("--sites and --inter-site-gbps go together, with --gpu, --gpus and --days")
    gpus = plan.budget["n_gpus"]
    if gpus % sites:
        raise IsoflopError(f"--sites {sites} does not divide --gpus {gpus}; give a divisor")
    spec = plan.model.spec
    shapes = None if spec.is_moe else param_shapes(spec)
    return choose_sync(
        plan.model.params, plan.hardware.step_time_s, plan.hyperparameters["steps"], sites, gbps, shapes=shapes
    )


def _render(plan: Plan, out: str | None, cross: SyncChoice | None = None):
    def render(console) -> None:
        m, hp, b, hw = plan.model, plan.hyperparameters, plan.budget, plan.hardware
        law = plan.law
        console.print(f"[bold]Plan[/] with law [bold]{law['name']}[/] ({law['form']}; {law['citation'] or 'fitted'})")
        t = Table(show_header=False)
        t.add_column("what")
        t.add_column("value")
        t.add_row(
            "budget",
            f"{b['flops']:.4g} FLOPs"
            + (f" from {b['n_gpus']} x {b['gpu']} for {b['days']:g} days" if b["kind"] == "hardware" else ""),
        )
        kind = law["param_kind"].replace("_", "-")
        t.add_row(
            "model",
            f"{m.params / 1e9:.3f}B parameters ({m.non_embedding_params / 1e9:.3f}B non-embedding; the law's N "
            f"counts {kind}): {m.layers} layers, d_model {m.d_model}, "
            f"{m.heads} heads ({m.n_kv_heads} kv, head_dim {m.head_dim}), ffn {m.ffn}, vocab {m.vocab_size}",
        )
        t.add_row(
            "data",
            f"{plan.tokens / 1e9:.4g}B tokens ({plan.tokens_per_param:.1f} per {kind} parameter), "
            f"seq_len {plan.seq_len}",
        )
        opt = plan.law_optimum
        if opt.epochs is not None:
            t.add_row(
                "repetition",
                f"{opt.epochs:.2f} epochs of {opt.unique_tokens:.4g} unique tokens, costing "
                f"{opt.repetition_loss_cost:+.4f} loss vs fresh data (Muennighoff et al. 2023)",
            )
        if opt.inference_tokens:
            ref = opt.compute_optimal_reference
            t.add_row(
                "inference",
                f"{opt.inference_tokens:.3g} tokens served: lifetime {opt.lifetime_flops:.4g} FLOPs, "
                f"{ref['lifetime_saving']:.1%} less than the compute-optimal model of equal loss "
                f"({ref['n_params'] / 1e9:.3g}B)",
            )
        loss = plan.predicted_loss
        t.add_row("predicted loss", "-" if loss is None else f"{loss:.4f}{_fmt_ci(plan.predicted_loss_ci95)}")
        t.add_row("learning rate", f"{hp['lr']:.3g} peak, {hp['schedule']}, warmup {hp['warmup_steps']} steps")
        t.add_row(
            "batch",
            f"{hp['global_batch']} sequences = {hp['global_batch'] * plan.seq_len:,} tokens, {hp['steps']:,} steps",
        )
        if hw is not None:
            lay = hw.layout
            t.add_row(
                "layout",
                f"TP{lay['tp']} PP{lay['pp']} DP{lay['dp']} CP{lay['cp']} ZeRO-{lay['zero']}, "
                f"recompute {lay['recompute']}, "
                f"micro-batch {lay['micro_batch']} ({hw.layout_reason})",
            )
            t.add_row(
                "speed",
                f"step {hw.step_time_s:.3f} s, {hw.tokens_per_s:,.0f} tokens/s, MFU {hw.mfu:.2f}, "
                f"{hw.memory_gib:.1f} GiB per GPU",
            )
            t.add_row(
                "time and cost",
                f"{hw.days:.2f} days, {hw.gpu_hours:,.0f} GPU-hours, ${hw.cost_usd:,.0f} "
                f"at ${hw.price_per_gpu_hour:.2f}/GPU-hour",
            )
            t.add_row(
                "energy",
                f"{hw.energy_kwh:,.0f} kWh, {hw.co2_kg / 1000:,.2f} t CO2e "
                f"(PUE {hw.assumptions['pue']}, {hw.assumptions['carbon_kg_per_kwh']} kg/kWh)",
            )
        if cross is not None:
            t.add_row(
                "across sites",
                f"{cross.sites} sites at {cross.inter_site_gbit_s:g} Gbit/s: DDP step {cross.ddp_step_time_s:.3f} s "
                f"({cross.ddp_days:.2f} days); chosen {cross.choice}"
                + (f" H={cross.inner_steps}" if cross.choice == "diloco" else "")
                + f", step {cross.diloco_step_time_s:.3f} s ({cross.chosen_days:.2f} days, saves "
                f"{cross.saved_days:.2f} days = {cross.saved_fraction:.0%}); {cross.reason}"
                + (
                    f"; PowerSGD rank {cross.powersgd_rank} would step in {cross.powersgd_step_time_s:.3f} s "
                    "(communication only, not chosen)"
                    if cross.powersgd_step_time_s is not None
                    else ""
                ),
            )
        console.print(t)
        sources: dict[str, list[str]] = {}
        for key, text in hp["laws"].items():
            sources.setdefault(text, []).append(key)
        console.print(
            "hyperparameters from: " + "; ".join(f"{' and '.join(keys)}: {text}" for text, keys in sources.items())
        )
        for note in plan.notes:
            console.print(f"note: {note}")
        if out:
            console.print(f"wrote {out}; run it as it is with `isoflop train {out}`")
        else:
            console.print("write the run configuration with --out plan.yaml (the trainer's TrainConfig schema)")

    return render


@app.command()
def plan(
    law: str | None = typer.Option(
        None,
        "--law",
        help="Law preset (besiroglu, hoffmann, kaplan, muennighoff) or a file from `isoflop fit --out` "
        "(default besiroglu; with --moe krajewski).",
    ),
    budget_flops: float | None = typer.Option(None, "--budget-flops", help="Training compute budget in FLOPs."),
    target_loss: float | None = typer.Option(
        None, "--target-loss", help="Plan the cheapest run reaching this loss instead."
    ),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU name (`isoflop hw list`); with --gpus and --days."),
    gpus: int | None = typer.Option(None, "--gpus", help="Number of GPUs."),
    days: float | None = typer.Option(None, "--days", help="Wall-clock days available."),
    price: float | None = typer.Option(None, "--price", help="USD per GPU-hour (default: the catalog's)."),
    mfu: float | None = typer.Option(None, "--mfu", help="Override the performance model's MFU (0-1)."),
    unique_tokens: float | None = typer.Option(
        None, "--unique-tokens", help="Unique tokens available (data-constrained law)."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Curated folder (`isoflop data curate`): its manifest's tokens are the unique tokens."
    ),
    inference_tokens: float | None = typer.Option(
        None, "--inference-tokens", help="Tokens to be served (minimise 6ND + 2NT)."
    ),
    seq_len: int = typer.Option(2048, "--seq-len", help="Sequence length."),
    vocab_size: int = typer.Option(32000, "--vocab-size", help="Vocabulary size of the planned model."),
    hp_law: str = typer.Option(
        "step", "--hp-law", help="Hyperparameter law: step (Li et al. 2025) or deepseek (Bi et al. 2024)."
    ),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or wsd."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Training precision (default: bf16, or fp16 where the GPU lacks bf16)."
    ),
    pue: float = typer.Option(DEFAULT_PUE, "--pue", help="Data-centre power usage effectiveness."),
    carbon: float = typer.Option(DEFAULT_CARBON_KG_PER_KWH, "--carbon-intensity", help="kg CO2e per kWh."),
    hardware: str | None = typer.Option(
        None, "--hardware", help="Extra hardware YAML file (same layout as the catalog)."
    ),
    out: str | None = typer.Option(None, "--out", help="Write plan.yaml (TrainConfig schema) for the trainer."),
    sites: int | None = typer.Option(
        None, "--sites", help="Sites the GPUs are split over (with --inter-site-gbps): DDP or DiLoCo across them."
    ),
    inter_site_gbps: float | None = typer.Option(None, "--inter-site-gbps", help="Link of each site in Gbit/s."),
    moe: bool = typer.Option(
        False, "--moe", help="Plan a mixture-of-experts: experts, top-k, granularity and shape, against dense."
    ),
    experts: int | None = typer.Option(None, "--experts", help="--moe: fix the routed experts (with --top-k)."),
    top_k: int | None = typer.Option(None, "--top-k", help="--moe: fix the experts per token (= granularity)."),
    max_experts: int | None = typer.Option(
        None, "--max-experts", help="--moe: search granularities with at most this many routed experts."
    ),
    expansion: int = typer.Option(
        64, "--expansion", help="--moe: expert parameters over a dense MLP's (Krajewski et al. fit 64)."
    ),
    dense_law: str = typer.Option("krajewski-dense", "--dense-law", help="--moe: the dense law compared against."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compute-optimal plan: model size and tokens from a scaling law, architecture, layout, time, cost and energy."""
    if moe:
        from isoflop.cli.plan_moe import run_moe_plan

        run_moe_plan(locals())
        return
    if experts is not None or top_k is not None or max_experts is not None:
        raise IsoflopError("--experts, --top-k and --max-experts plan a mixture-of-experts; add --moe")
    law = law or "besiroglu"
    if data is not None:
        from pathlib import Path

        from isoflop.curate.manifest import read_manifest

        if unique_tokens is not None:
            raise IsoflopError("--data and --unique-tokens both give the unique tokens; pass one of them")
        unique_tokens = float(read_manifest(Path(data).expanduser()).tokens)
    req = PlanRequest(
        law=law,
        budget_flops=budget_flops,
        target_loss=target_loss,
        gpu=gpu,
        n_gpus=gpus,
        days=days,
        price_per_gpu_hour=price,
        mfu=mfu,
        unique_tokens=unique_tokens,
        inference_tokens=inference_tokens,
        seq_len=seq_len,
        vocab_size=vocab_size,
        hp_law=hp_law,
        schedule=schedule,
        dtype=dtype,
        pue=pue,
        carbon_kg_per_kwh=carbon,
        hardware_file=hardware,
    )
    result = make_plan(req)
    data = result.to_dict()
    cross = _cross_site(result, sites, inter_site_gbps)
    if cross is not None:
        data["cross_site"] = cross.to_dict()
    if out:
        write_plan(result, out)
        data["out"] = out
    emit(data, as_json, _render(result, out, cross))
