"""``isoflop estimate``: memory, fit, step time and MFU of one parallel layout."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, MODEL_ARGUMENT, MODEL_OPTION, emit, pick_model
from isoflop.errors import IsoflopError
from isoflop.hardware import get_gpu
from isoflop.perf import Layout, load_constants
from isoflop.perf import estimate as run_estimate
from isoflop.perf.constants import frameworks
from isoflop.perf.layout import KNOBS, OPTIMIZERS, PRECISIONS, RECOMPUTE, check_counts
from isoflop.spec import load_spec

GPU_OPTION = typer.Option(..., "--gpu", help="GPU name from the catalog (`isoflop hw list`).")
GPUS_OPTION = typer.Option(..., "--gpus", help="Total number of GPUs.")
HARDWARE_OPTION = typer.Option(None, "--hardware", help="Extra hardware YAML file (same layout as the catalog).")
FRAMEWORK_OPTION = typer.Option(
    None, "--framework", help=f"Framework profile ({', '.join(frameworks())}); default: generic constants."
)


def knob_options() -> dict[str, Any]:
    """The layout knobs shared by ``estimate`` and ``layout`` (None = not given)."""
    return dict(
        tp=typer.Option(None, "--tp", help="Tensor-parallel degree."),
        pp=typer.Option(None, "--pp", help="Pipeline-parallel degree."),
        dp=typer.Option(None, "--dp", help="Data-parallel degree (default: GPUs / (tp*pp*cp))."),
        cp=typer.Option(None, "--cp", help="Context-parallel degree."),
        ep=typer.Option(None, "--ep", help="Expert-parallel degree (MoE)."),
        zero=typer.Option(None, "--zero", help="ZeRO stage 0-3 (FSDP: 2 = SHARD_GRAD_OP, 3 = FULL_SHARD)."),
        recompute=typer.Option(None, "--recompute", help=f"Activation recomputation: {', '.join(RECOMPUTE)}."),
        sequence_parallel=typer.Option(
            None, "--sequence-parallel/--no-sequence-parallel", help="Megatron sequence parallelism."
        ),
        micro_batch=typer.Option(None, "--micro-batch", help="Sequences per GPU per forward."),
        interleave=typer.Option(None, "--interleave", help="Virtual pipeline stages per GPU."),
        offload=typer.Option(None, "--offload/--no-offload", help="Offload optimizer states to CPU."),
        dtype=typer.Option(None, "--dtype", help=f"Precision: {', '.join(PRECISIONS)} (default bf16)."),
        optimizer=typer.Option(None, "--optimizer", help=f"Optimizer: {', '.join(OPTIMIZERS)} (default adamw)."),
        replicate=typer.Option(None, "--replicate", help="HSDP replica groups (with --zero 3)."),
    )


_K = knob_options()


def check_positive(**values: int | None) -> None:
    """Every count flag is a positive integer within ``isoflop.perf.layout.MAX_COUNT``."""
    check_counts(**values)


def _gib(x: float) -> str:
    return f"{x:.2f}"


def render_estimate(est_dict: dict[str, Any], title: str):
    def render(console) -> None:
        e = est_dict
        shown = [k for k in KNOBS if k != "replicate"] + ["dtype", "optimizer"]
        knobs = " ".join(f"{k}={e[k]}" for k in shown)
        console.print(
            f"[bold]{title}[/]  {e['n_gpus']} x {e['gpu']}, global batch {e['global_batch']} x {e['seq_len']} "
            f"({e['microbatches']} microbatches)\n{knobs}"
        )
        mem = Table(title="Memory per GPU (GiB)")
        mem.add_column("part")
        mem.add_column("GiB", justify="right")
        for key, value in e["memory"].items():
            mem.add_row(key.removesuffix("_gib"), _gib(value))
        mem.add_row("capacity", _gib(e["gpu_memory_gib"]))
        console.print(mem)
        fit = (
            "[green]fits[/]"
            if e["fits"]
            else (f"[red]does not fit[/]: {e['overflow']}; `isoflop layout` searches for a layout that fits")
        )
        console.print(f"{fit} (headroom {e['headroom_gib']:.1f} GiB)")
        st = Table(title="Step time (s per optimizer step; the top-level rows add up)")
        st.add_column("part")
        st.add_column("seconds", justify="right")
        st.add_column("share", justify="right")
        b, total = e["breakdown"], e["step_time_s"]
        for key in ("compute_s", "exposed_comm_s", "bubble_s", "optimizer_s", "overhead_s"):
            st.add_row(key.removesuffix("_s"), f"{b[key]:.4g}", f"{b[key] / total:.1%}")
        for key in (
            "gemm_s",
            "attention_s",
            "memory_bound_s",
            "recompute_s",
            "comm_tp_s",
            "comm_cp_s",
            "comm_ep_s",
            "comm_pp_s",
            "comm_dp_s",
        ):
            if b[key] > 0:
                st.add_row(f"  {key.removesuffix('_s')}", f"{b[key]:.4g}", f"{b[key] / total:.1%}")
        st.add_row("step", f"{total:.4g}", "100%")
        console.print(st)
        comm = {k: v["total"] for k, v in e.get("comm_bytes", {}).items() if v["total"] > 0}
        if comm:
            shown = ", ".join(f"{k} {v / 2**30:.3g} GiB" for k, v in comm.items())
            console.print(f"communication per GPU per step (message bytes): {shown}")
        console.print(
            f"tokens/s {e['tokens_per_s']:,.0f} ({e['tokens_per_s_per_gpu']:,.0f} per GPU), "
            f"model TFLOP/s per GPU {e['tflops_per_gpu']:.1f}, MFU {e['mfu']:.1%}, HFU {e['hfu']:.1%}"
        )

    return render


@app.command()
def estimate(
    model_arg: str | None = MODEL_ARGUMENT,
    model: str | None = MODEL_OPTION,
    gpu: str = GPU_OPTION,
    gpus: int = GPUS_OPTION,
    global_batch: int | None = typer.Option(
        None, "--global-batch", help="Sequences per optimizer step (default dp*micro_batch)."
    ),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Sequence length (default: the model's context)."),
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
    """Predict memory per GPU (and whether it fits), step time with its breakdown, tokens/s and MFU."""
    check_positive(
        gpus=gpus,
        global_batch=global_batch,
        seq_len=seq_len,
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
    tp, pp, cp = tp or 1, pp or 1, cp or 1
    if dp is None:
        if gpus % (tp * pp * cp):
            raise IsoflopError(
                f"tp*pp*cp = {tp * pp * cp} does not divide --gpus {gpus}; choose degrees whose product divides it"
            )
        dp = gpus // (tp * pp * cp)
    mb = micro_batch or 1
    layout = Layout(
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        ep=ep or 1,
        zero=0 if zero is None else zero,  # type: ignore[arg-type]
        recompute=recompute or "none",
        sequence_parallel=bool(sequence_parallel),
        micro_batch=mb,  # type: ignore[arg-type]
        interleave=interleave or 1,
        offload=bool(offload),
        dtype=dtype or "bf16",
        optimizer=optimizer or "adamw",  # type: ignore[arg-type]
        replicate=replicate or 1,
    )
    batch = global_batch or dp * mb
    est = run_estimate(
        spec, device, gpus, layout, batch, seq_len or spec.max_seq_len, load_constants(device.name, framework)
    )
    data = {"model": spec.name, **est.to_dict()}
    emit(data, as_json, render_estimate(data, spec.name))
