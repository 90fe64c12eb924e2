"""``isoflop report DIR``: (re)write DIR/report.html and DIR/plots/*.png from a ladder's analysis.json."""

from __future__ import annotations

from pathlib import Path

import typer

from isoflop import structured
from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError


@app.command()
def report(
    directory: Path = typer.Argument(..., help="A ladder or quickstart folder (with analysis.json)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write report.html with PNG plots: IsoFLOP curves, loss vs compute, N_opt/D_opt(C), held-out, training curves."""
    from isoflop.report import write_report

    path = directory / "analysis.json"
    if not path.is_file():
        raise IsoflopError(
            f"{path} does not exist; run `isoflop ladder --out {directory}` or `isoflop quickstart --out "
            f"{directory}` first"
        )
    analysis = structured.read(path, "analysis", "re-run the ladder to rewrite it", "json")
    page = write_report(analysis, directory)
    plots = sorted(str(p) for p in (directory / "plots").glob("*.png"))
    emit({"report": str(page), "plots": plots}, as_json, lambda c: c.print(f"report: {page} ({len(plots)} plots)"))
