"""``isoflop ladder``: run an IsoFLOP ladder, fit approaches 2 and 3, predict and verify a held-out run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError

LAUNCHER_HELP = (
    "local (subprocesses), torchrun (each run under torch.distributed.run), slurm (via submitit, if installed)."
)


def exec_options(workers: int | None, threads: int, launcher: str, nproc_per_node: int):
    from isoflop.ladder.runner import ExecOptions

    if threads < 1:
        raise IsoflopError(f"--threads must be >= 1, got {threads}")
    if launcher not in ("local", "torchrun", "slurm"):
        raise IsoflopError(f"unknown --launcher {launcher!r}; use local, torchrun or slurm")
    return ExecOptions(workers=workers, threads=threads, launcher=launcher, nproc_per_node=nproc_per_node)


def missing_modules() -> list[str]:
    """Modules the ladder needs that this installation lacks (torch comes with the [train] extra)."""
    import importlib.util

    missing = []
    for module in ("torch", "isoflop.train.loop", "isoflop.laws.fit"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    return missing


def require_trainer() -> None:
    """The ladder trains models: it needs the training dependencies."""
    missing = missing_modules()
    if missing:
        raise IsoflopError(
            f"{', '.join(missing)} not available; install isoflop with training support: pip install -e '.[train]'"
        )


def render_summary(summary: dict):
    def render(console) -> None:
        held = summary["heldout"]
        table = Table(title=f"held-out run (C = {held['budget']:.3g} FLOPs, N = {held['n']:,}, D = {held['tokens']:,})")
        for col in ("method", "predicted", "95% CI", "actual", "error %", "inside CI"):
            table.add_column(col, justify="right")
        for p in held["predictions"]:
            ci = p.get("ci95")
            table.add_row(
                p["method"] + (" (primary)" if p["method"] == held["method"] else ""),
                f"{p['predicted_loss']:.4f}",
                f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-",
                f"{held['actual_loss']:.4f}" if held.get("actual_loss") is not None else "-",
                f"{p['error_pct']:+.2f}" if p.get("error_pct") is not None else "-",
                str(p.get("inside_ci", "-")),
            )
        console.print(table)
        runs = summary["runs"]
        console.print(
            f"runs: {runs['finished']} trained, {runs['skipped']} reused, {runs['failed']} failed; "
            f"wall {summary['wall_s']:.0f} s"
        )
        console.print(f"report: {summary['report']}")

    return render


@app.command()
def ladder(
    preset: str = typer.Option(
        "quick", "--preset", "-p", help="Ladder preset: smoke (machinery check), tiny, quick, medium or large."
    ),
    out: Path = typer.Option(Path("ladder"), "--out", "-o", help="Folder for the registry, runs, fits and report."),
    workers: int | None = typer.Option(None, "--workers", help="Runs at once (default: cores / threads)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads per run."),
    launcher: str = typer.Option("local", "--launcher", help=LAUNCHER_HELP),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Processes per run under torchrun."),
    heldout_threads: int | None = typer.Option(
        None, "--heldout-threads", help="Torch threads for the held-out run (default: --threads)."
    ),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Train the held-out run after predicting it."),
    primary: str | None = typer.Option(
        None, "--primary", help="Primary prediction: envelope or approach3 (default: the preset's)."
    ),
    family: str = typer.Option(
        "dense",
        "--family",
        help="Model family: dense, or moe (the dense shapes with each MLP replaced by routed experts of width "
        "d_ff / top-k; sized and fitted by active non-embedding parameters).",
    ),
    experts: int | None = typer.Option(None, "--experts", help="Routed experts per layer, --family moe (default 8)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Experts per token, --family moe (default 2)."),
    data: str = typer.Option(
        "stdlib",
        "--data",
        help="Corpus for every run: stdlib (the interpreter's own sources), a "
        ".txt/.jsonl/.parquet file or folder, or hf:<dataset>; tokenized once with the preset's vocabulary.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run an IsoFLOP ladder (>= 3 budgets x >= 4 sizes), fit approaches 2 and 3, predict a held-out run and verify it.

    Resumable: finished runs in OUT/registry.sqlite are reused, crashed or failed runs are retried."""
    import dataclasses

    from isoflop.ladder.pipeline import run_pipeline
    from isoflop.ladder.presets import get_ladder_preset, with_data, with_family

    design = with_family(with_data(get_ladder_preset(preset), data), family, experts, top_k)
    require_trainer()
    if primary:
        design = dataclasses.replace(design, primary=primary)
        design.validate()
    opts = exec_options(workers, threads, launcher, nproc_per_node)
    say = (lambda msg: None) if as_json else (lambda msg: print(msg, flush=True))
    summary = run_pipeline(design, out, opts, say=say, verify=verify, heldout_threads=heldout_threads)
    emit(summary, as_json, render_summary(summary))
