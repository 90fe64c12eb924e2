"""``isoflop quickstart``: the whole predict-then-verify loop on the embedded stdlib corpus, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from isoflop.atomic import atomic_write_json
from isoflop.cli.app import app
from isoflop.cli.ladder import missing_modules, render_summary
from isoflop.cli.output import JSON_OPTION, emit


@app.command()
def quickstart(
    out: Path = typer.Option(
        Path("quickstart"), "--out", "-o", help="Output folder (re-running reuses its finished runs)."
    ),
    preset: str = typer.Option(
        "quick",
        "--preset",
        "-p",
        help="smoke (a 1-minute machinery check), quick (the default, minutes on 2 CPU cores), medium or large.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Plan a tiny IsoFLOP ladder, train it, fit the laws, predict held-out runs (a bigger compute-optimal one and an
    over-trained one), train them, compare, report."""
    from isoflop.ladder.pipeline import run_pipeline
    from isoflop.ladder.presets import get_ladder_preset
    from isoflop.ladder.runner import ExecOptions

    design = get_ladder_preset(preset)
    missing = missing_modules()
    if missing:
        # A build without the trainer still shows the plan, and says what is missing (exit 0: nothing failed).
        from isoflop.ladder.grid import design_grid

        points = design_grid(design)
        plan = {
            "status": "trainer unavailable",
            "missing": missing,
            "ladder": design.name,
            "runs": [
                {"budget": p.budget, "n_non_embedding": p.n_params_non_embedding, "tokens": p.tokens} for p in points
            ],
        }
        atomic_write_json(out / "summary.json", plan)
        note = (
            f"planned {len(points)} ladder runs; this build lacks {', '.join(missing)}, so nothing was trained; "
            "install with `pip install -e '.[train]'`"
        )
        emit(plan, as_json, lambda c: c.print(note, markup=False))
        return
    say = (lambda msg: None) if as_json else (lambda msg: print(msg, flush=True))
    summary = run_pipeline(design, out, ExecOptions(threads=1), say=say)

    def render(console) -> None:
        render_summary(summary)(console)
        for held in summary["heldouts"]:
            if held.get("actual_loss") is None:
                continue
            lo, hi = held["ci95"] or (float("nan"), float("nan"))
            kind = "compute-optimal" if held["role"] == "heldout" else "over-trained"
            console.print(
                f"[bold]held-out ({kind}, {held['method']}): predicted {held['predicted_loss']:.4f} "
                f"[95% CI {lo:.4f}, {hi:.4f}], actual {held['actual_loss']:.4f}, error {held['error_pct']:+.2f}% "
                f"({'inside' if held['inside_ci'] else 'outside'} the interval)[/]"
            )
        console.print(f"summary: {out / 'summary.json'}")

    emit(summary, as_json, render)
