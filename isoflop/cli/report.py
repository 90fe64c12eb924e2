"""``isoflop report DIR``: (re)write DIR/report.html and DIR/plots/*.png from a ladder's analysis.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from isoflop import structured
from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError, first_line


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
    _check_analysis(analysis, path)
    try:
        page = write_report(analysis, directory)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IsoflopError(
            f"{path} is malformed ({type(exc).__name__}: {first_line(str(exc))}); re-run the ladder to rewrite it"
        ) from None
    plots = sorted(str(p) for p in (directory / "plots").glob("*.png"))
    emit({"report": str(page), "plots": plots}, as_json, lambda c: c.print(f"report: {page} ({len(plots)} plots)"))


def _check_analysis(analysis: Any, path: Path) -> None:
    """Refuse an analysis.json without ladder points (``{}``, ``[]``) or whose losses are all missing/NaN."""
    fix = "re-run the ladder to rewrite it"
    points = analysis.get("points") if isinstance(analysis, dict) else None
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        raise IsoflopError(f"{path} holds no ladder points (a 'points' list of runs); {fix}")
    numeric = ("budget", "n", "tokens", "flops")
    for i, point in enumerate(points):
        bad = [k for k in numeric if not _finite(point.get(k))]
        if bad:
            raise IsoflopError(f"{path}: point {i} has no finite {', '.join(bad)}; {fix}")
    if not any(_finite(p.get("loss")) for p in points):
        raise IsoflopError(f"{path}: no point has a finite loss, so there is nothing to plot; {fix}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
