"""``isoflop layout``: search every valid parallel layout and rank the ones that fit by tokens/s."""

from __future__ import annotations

import sys
import time

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.estimate import (
    FRAMEWORK_OPTION,
    GPU_OPTION,
    GPUS_OPTION,
    HARDWARE_OPTION,
    check_positive,
    knob_options,
)
from isoflop.cli.output import JSON_OPTION, MODEL_ARGUMENT, MODEL_OPTION, emit, pick_model
from isoflop.errors import IsoflopError
from isoflop.hardware import get_gpu
from isoflop.perf import fit_hints, load_constants, search_layouts
from isoflop.perf.layout import RECOMPUTE
from isoflop.spec import load_spec

_K = knob_options()


@app.command()
def layout(
    model_arg: str | None = MODEL_ARGUMENT,
    model: str | None = MODEL_OPTION,
    gpu: str = GPU_OPTION,
    gpus: int = GPUS_OPTION,
    global_batch: int = typer.Option(..., "--global-batch", help="Sequences per optimizer step."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Sequence length (default: the model's context)."),
    top: int = typer.Option(10, "--top", "-k", help="How many layouts to show."),
    tp: int | None = _K["tp"],
    pp: int | None = _K["pp"],
    dp: int | None = _K["dp"],
    cp: int | None = _K["cp"],
    ep: int | None = _K["ep"],
    zero: int | None = _K["zero"],
    recompute: str | None = _K["recompute"],
    sequence_parallel: bool | None = _K["sequence_parallel"],
    micro_batch: int | None = _K["micro_batch"],
    interleave: int | None = _K["interleave"],
    offload: bool | None = _K["offload"],
    dtype: str | None = _K["dtype"],
    optimizer: str | None = _K["optimizer"],
    replicate: int | None = _K["replicate"],
    hardware: str | None = HARDWARE_OPTION,
    framework: str | None = FRAMEWORK_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Search all layouts (knobs given are held fixed), drop those that do not fit, rank by tokens/s."""
    check_positive(
        gpus=gpus,
        global_batch=global_batch,
        seq_len=seq_len,
        top=top,
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        ep=ep,
        micro_batch=micro_batch,
        interleave=interleave,
        replicate=replicate,
    )
    spec = load_spec(pick_model(model_arg, model))
    device = get_gpu(gpu, hardware)
    seq = seq_len or spec.max_seq_len
    spec.check_seq_len(seq)
    fixed = {
        k: v
        for k, v in dict(
            tp=tp,
            pp=pp,
            dp=dp,
            cp=cp,
            ep=ep,
            zero=zero,
            recompute=recompute,
            sequence_parallel=sequence_parallel,
            micro_batch=micro_batch,
            interleave=interleave,
            offload=offload,
            dtype=dtype,
            optimizer=optimizer,
            replicate=replicate,
        ).items()
        if v is not None
    }
    if fixed.get("recompute") is not None and fixed["recompute"] not in RECOMPUTE:
        raise IsoflopError(f"--recompute must be one of {', '.join(RECOMPUTE)}, got {fixed['recompute']!r}")
    if fixed.get("zero") is not None and fixed["zero"] not in (0, 1, 2, 3):
        raise IsoflopError(f"--zero must be 0, 1, 2 or 3, got {fixed['zero']}")
    const = load_constants(device.name, framework)
    start = time.perf_counter()
    found = search_layouts(spec, device, gpus, global_batch, seq, fixed=fixed, top_k=top, constants=const)
    seconds = time.perf_counter() - start
    rows = [{"model": spec.name, **est.to_dict()} for est in found]
    hints = [] if found else fit_hints(spec, device, gpus, global_batch, seq, fixed=fixed, constants=const)

    def render(console) -> None:
        title = (
            f"{spec.name} on {gpus} x {device.name}, global batch {global_batch} x {seq}: "
            f"best layouts by tokens/s (searched in {seconds:.2f} s)"
        )
        if not rows:
            console.print(f"[red]no layout fits[/] for {title.split(':')[0]}. What would make it fit:")
            for hint in hints:
                console.print(f"  - {hint}")
            return
        table = Table(title=title)
        for col in (
            "#",
            "tp",
            "pp",
            "dp",
            "cp",
            "ep",
            "zero",
            "recompute",
            "sp",
            "mb",
            "v",
            "offload",
            "tok/s/GPU",
            "MFU",
            "step s",
            "mem GiB",
            "why",
        ):
            table.add_column(col, justify="left" if col in ("recompute", "why") else "right")
        for r in rows:
            table.add_row(
                str(r["rank"]),
                *(str(r[k]) for k in ("tp", "pp", "dp", "cp", "ep", "zero", "recompute")),
                "y" if r["sequence_parallel"] else "-",
                str(r["micro_batch"]),
                str(r["interleave"]),
                "y" if r["offload"] else "-",
                f"{r['tokens_per_s_per_gpu']:,.0f}",
                f"{r['mfu']:.1%}",
                f"{r['step_time_s']:.3g}",
                f"{r['memory']['total_gib']:.1f}",
                r["reason"],
            )
        console.print(table)

    if as_json and hints:
        for hint in hints:
            print(f"hint: {hint}", file=sys.stderr)
    emit(rows, as_json, render)
