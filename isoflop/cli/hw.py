"""``isoflop hw``: the hardware catalog."""

from __future__ import annotations

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.hardware import DTYPES, get_gpu, load_catalog

hw_app = typer.Typer(help="The hardware catalog: GPUs, peaks, memory, links, power, price.", no_args_is_help=True)
app.add_typer(hw_app, name="hw")

HARDWARE_OPTION = typer.Option(
    None, "--hardware", help="Extra hardware YAML file (same layout as the built-in catalog)."
)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@hw_app.command("list")
def hw_list(hardware: str | None = HARDWARE_OPTION, as_json: bool = JSON_OPTION) -> None:
    """List every GPU in the catalog."""
    catalog = load_catalog(hardware)

    def render(console) -> None:
        table = Table(title="GPUs (dense peak TFLOP/s; bandwidth GB/s, one direction)")
        for col in ("name", *DTYPES, "mem GiB", "HBM", "intra", "inter", "TDP W", "$/h"):
            table.add_column(col, justify="left" if col == "name" else "right")
        for gpu in catalog.values():
            table.add_row(
                gpu.name,
                *(_fmt(gpu.peak_tflops.get(d)) for d in DTYPES),
                _fmt(gpu.memory_gib),
                _fmt(gpu.hbm_gbps),
                _fmt(gpu.intra_node_gbps),
                _fmt(gpu.inter_node_gbps),
                _fmt(gpu.tdp_watts),
                _fmt(gpu.price_per_hour_usd),
            )
        console.print(table)

    emit([gpu.model_dump() for gpu in catalog.values()], as_json, render)


@hw_app.command("show")
def hw_show(
    name: str = typer.Argument(..., help="GPU name, e.g. h100-sxm."),
    hardware: str | None = HARDWARE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one GPU."""
    gpu = get_gpu(name, hardware)

    def render(console) -> None:
        table = Table(title=f"{gpu.name}: {gpu.display}")
        table.add_column("field")
        table.add_column("value", justify="right")
        for dtype in DTYPES:
            table.add_row(f"peak {dtype} TFLOP/s (dense)", _fmt(gpu.peak_tflops.get(dtype)))
        for field in (
            "memory_gib",
            "hbm_gbps",
            "intra_node_gbps",
            "inter_node_gbps",
            "gpus_per_node",
            "tdp_watts",
            "price_per_hour_usd",
        ):
            table.add_row(field, _fmt(getattr(gpu, field)))
        console.print(table)

    emit(gpu.model_dump(), as_json, render)
