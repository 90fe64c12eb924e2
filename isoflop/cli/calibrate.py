"""``isoflop calibrate``: fit the performance model's constants to measured runs and write the calibration file."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from isoflop import env
from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError


def _registry_source(source: Path) -> bool:
    return source.is_dir() or source.suffix in (".sqlite", ".db")


@app.command()
def calibrate(
    source: Path = typer.Argument(
        ..., help="A ladder/quickstart folder (its registry.sqlite), or a CSV/JSON file of measured runs."
    ),
    gpu: str | None = typer.Option(
        None, "--gpu", help="Hardware the registry's runs ran on (default: cpu-local, the measured local CPU)."
    ),
    hardware: str | None = typer.Option(
        None, "--hardware", help="User hardware YAML (read, and written for cpu-local)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        help="Calibration file to write (default: $ISOFLOP_CALIBRATION or ~/.config/isoflop/calibration.yaml).",
    ),
    remeasure_cpu: bool = typer.Option(
        False, "--remeasure-cpu", help="Measure the local CPU again even if cpu-local exists."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fit and show the errors, write nothing."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit the perf model's efficiency constants to measured step times (and memory); show the error before and after.

    Later `estimate`, `layout` and `plan` calls on that hardware read the calibration file. For CPU runs the
    "GPU" is the local CPU: an entry `cpu-local` with the measured matmul peak is added to a user hardware
    file; use it with `--hardware FILE` or `export ISOFLOP_HARDWARE=FILE`."""

    from isoflop.calibrate import calibrate as fit
    from isoflop.calibrate import from_file, from_registry, write_calibration
    from isoflop.hardware import load_catalog

    hardware_note = None
    if _registry_source(source):
        name = (gpu or "cpu-local").strip().lower()
        if name == "cpu-local":
            from isoflop.calibrate.cpu import DEFAULT_HARDWARE_FILE, cpu_entry, write_hardware_entry

            hw_path = Path(hardware).expanduser() if hardware else env.path(env.HARDWARE, DEFAULT_HARDWARE_FILE)
            known = load_catalog(hw_path) if hw_path.is_file() else {}
            if remeasure_cpu or "cpu-local" not in known:
                if dry_run:
                    raise IsoflopError(
                        "cpu-local is not in a hardware file yet; run without --dry-run once to measure the CPU"
                    )
                write_hardware_entry(cpu_entry(threads=1), hw_path)
            hardware = str(hw_path)
            hardware_note = (
                f"cpu-local lives in {hw_path}; use it with --hardware {hw_path} or export ISOFLOP_HARDWARE={hw_path}"
            )
        measurements = from_registry(source, name)
    else:
        measurements = from_file(source)
    results = fit(measurements, hardware)
    path = None if dry_run else write_calibration(results, output)
    data = {
        "calibration_file": str(path) if path else None,
        "hardware_file": hardware,
        "note": hardware_note,
        "gpus": [
            {
                "gpu": r.gpu,
                "runs": len(r.runs),
                "constants": r.constants,
                "before": r.before,
                "after": r.after,
                "per_run": r.runs,
                "held_fixed": r.held_fixed,
            }
            for r in results
        ],
    }

    def render(console) -> None:
        for r in results:
            table = Table(title=f"{r.gpu}: {len(r.runs)} measured runs")
            table.add_column("error (median |pred - meas| / meas)")
            table.add_column("before", justify="right")
            table.add_column("after", justify="right")
            for key, label in (
                ("median_abs_step_time_error_pct", "step time"),
                ("max_abs_step_time_error_pct", "step time (max)"),
                ("median_abs_memory_error_pct", "memory"),
            ):
                b, a = r.before[key], r.after[key]
                table.add_row(label, "-" if b is None else f"{b:.1f}%", "-" if a is None else f"{a:.1f}%")
            console.print(table)
            console.print("fitted: " + ", ".join(f"{k}={v:.4g}" for k, v in r.constants.items()), markup=False)
        console.print(f"wrote {path}" if path else "dry run: nothing written", markup=False)
        if hardware_note:
            console.print(hardware_note, markup=False)

    for r in results:
        if r.warning:
            print(f"warning: {r.warning}", file=sys.stderr)
    emit(data, as_json, render)
