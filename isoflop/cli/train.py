"""``isoflop train``: train a model from a config, a preset or a planner's ``plan.yaml``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.table import Table

from isoflop import env, structured
from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError

LAUNCHED_ENV = env.TRAIN_LAUNCHED


def _overrides(
    max_steps: int | None, ckpt_every: int | None, seed: int | None, sets: list[str], micro_batch: int | None = None
) -> list[str]:
    items = list(sets)
    if micro_batch is not None:
        items.append(f"train.micro_batch={micro_batch}")
    if max_steps is not None:
        items += [f"train.max_steps={max_steps}", "train.tokens=null"]
    if ckpt_every is not None:
        items.append(f"train.ckpt_every={ckpt_every}")
    if seed is not None:
        items.append(f"train.seed={seed}")
    return items


def _render(summary: dict):
    def render(console) -> None:
        if summary.get("status") == "preempted":
            console.print(
                f"preempted at step {summary['step']} of {summary['steps']}; checkpoint {summary['checkpoint']}"
            )
            return
        table = Table(
            title=f"isoflop train: {summary['model']} ({summary['world']} x {summary['device']}, {summary['dtype']})"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")

        def fmt(value, spec=".4g"):
            return "n/a" if value is None else format(value, spec)

        rows = [
            ("steps", fmt(summary["steps"], ",d")),
            ("tokens", fmt(summary["tokens"], ",d")),
            ("final train loss", fmt(summary["final_train_loss"], ".4f")),
            (
                "val loss (start -> end)",
                f"{fmt(summary['val_loss_initial'], '.4f')} -> {fmt(summary['val_loss'], '.4f')}",
            ),
            ("tokens/s", fmt(summary["tokens_per_s"], ",.0f")),
            ("step time s", fmt(summary["step_time_s"])),
            ("MFU", fmt(summary["mfu"], ".1%")),
            ("memory GiB", fmt(summary["memory_gib"], ".3f")),
            ("wall s", fmt(summary["wall_s"], ".1f")),
            ("export", summary.get("hf_dir") or "n/a"),
        ]
        moe = summary.get("moe")
        if moe:  # the last logged step's routing (isoflop.train.moe.MoEStepStats)
            worst = max(max(layer) * len(layer) / max(1, sum(layer)) for layer in moe["moe_tokens_per_expert"])
            rows += [
                ("MoE aux / z loss", f"{fmt(moe['moe_aux_loss'])} / {fmt(moe['moe_z_loss'])}"),
                ("MoE dropped assignments", fmt(moe["moe_dropped_fraction"], ".2%")),
                ("MoE busiest expert / mean load", fmt(worst, ".2f")),
            ]
        for key, pred in (summary.get("predicted") or {}).items():
            meas = (summary.get("measured") or {}).get(key)
            if isinstance(pred, (int, float)):
                rows.append((f"{key}: predicted / measured", f"{fmt(pred)} / {fmt(meas)}"))
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)

    return render


@app.command()
def train(
    config: str | None = typer.Argument(
        None, help="Training config YAML (e.g. a plan.yaml from `isoflop plan --out`).", show_default=False
    ),
    out: str = typer.Option(..., "--out", "-o", help="Run folder; running again with the same folder resumes."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="Built-in config instead of a file (e.g. tiny)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Override train.max_steps."),
    ckpt_every: int | None = typer.Option(
        None, "--ckpt-every", min=0, help="Checkpoint every K steps (0 = at the end)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Override train.seed."),
    micro_batch: int | None = typer.Option(
        None, "--micro-batch", min=1, help="Override train.micro_batch (sequences per process per forward)."
    ),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", min=1, help="Processes on this machine (launched by torchrun)."
    ),
    sets: list[str] = typer.Option([], "--set", help="Override any field: --set optim.lr=1e-3 (repeatable)."),
    sync: str | None = typer.Option(None, "--sync", help="allreduce (DDP) or diloco (sets sync.mode)."),
    inner_steps: int | None = typer.Option(None, "--inner-steps", help="DiLoCo H: inner steps per outer step."),
    outer_lr: float | None = typer.Option(None, "--outer-lr", help="DiLoCo outer learning rate."),
    outer_momentum: float | None = typer.Option(None, "--outer-momentum", help="DiLoCo outer Nesterov momentum."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Start from this run folder's config and newest checkpoint (fresh optimizer)."
    ),
    upcycle: str | None = typer.Option(
        None, "--upcycle", help="With --init-from: turn the dense run into EXPERTS,TOPK experts (sparse upcycling)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a decoder-only transformer: one process, or several through torchrun (DDP / FSDP2).

    Exit codes: 0 done (or preempted and checkpointed), 2 bad input, 3 diverged (after train.max_rollbacks)."""
    from isoflop.train.config import load_train_config

    lowcomm = {"mode": sync, "inner_steps": inner_steps, "outer_lr": outer_lr, "outer_momentum": outer_momentum}
    sets = list(sets) + [f"sync.{key}={value}" for key, value in lowcomm.items() if value is not None]
    overrides = _overrides(max_steps, ckpt_every, seed, sets, micro_batch)
    if init_from is not None:
        from isoflop.train.upcycle import init_overrides

        if config or preset:
            raise IsoflopError("--init-from takes its config from the run folder; drop CONFIG/--preset, use --set")
        run_config, items = init_overrides(init_from, upcycle)
        config, overrides = str(run_config), items + overrides
    elif upcycle is not None:
        raise IsoflopError("--upcycle needs the dense run to start from; add --init-from RUN")
    cfg = load_train_config(config, preset or (None if config else "tiny"), overrides)
    from isoflop.train.parallel.apply import check_layout, uses_model_parallelism

    # the layout against the processes, before any of them starts (torchrun by hand sets WORLD_SIZE)
    check_layout(cfg, int(os.environ.get("WORLD_SIZE", nproc_per_node)))
    if nproc_per_node > 1 and not uses_model_parallelism(cfg):
        cfg.micro_batch_for(nproc_per_node)
    if nproc_per_node > 1:
        from isoflop.train.distributed import launch

        args = ["train"] + ([config] if config else []) + (["--preset", preset] if preset else []) + ["--out", out]
        args += [arg for item in overrides for arg in ("--set", item)]
        os.environ[LAUNCHED_ENV] = "1"
        try:
            code = launch(nproc_per_node, args)
        finally:
            os.environ.pop(LAUNCHED_ENV, None)
        if code:
            raise typer.Exit(code)
        summary_path = Path(out) / "summary.json"
        summary = (
            structured.read(summary_path, "run summary", "rerun the command", fmt="json")
            if summary_path.is_file()
            else {"status": "preempted", "step": None, "steps": cfg.total_steps(), "checkpoint": None}
        )
        emit(summary, as_json, _render(summary))
        return
    from isoflop.train.loop import DivergedError
    from isoflop.train.loop import train as run_training

    try:
        summary = run_training(cfg, out)
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(3) from None
    # Under torchrun only rank 0 prints; under `--nproc-per-node` the launching process prints instead.
    if int(os.environ.get("RANK", "0")) == 0 and not os.environ.get(LAUNCHED_ENV):
        emit(summary, as_json, _render(summary))
