"""``isoflop plan --moe``: the MoE plan (``isoflop.plan.moe``) against the dense plan at the same compute."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from isoflop.cli.output import emit
from isoflop.errors import IsoflopError
from isoflop.plan.moe import MoeHardware, MoePlan, MoePlanRequest, plan_moe

# `isoflop plan` options that the MoE plan does not take, with their defaults.
_DENSE_ONLY = {
    "target_loss": None,
    "days": None,
    "price": None,
    "mfu": None,
    "unique_tokens": None,
    "data": None,
    "inference_tokens": None,
    "out": None,
    "sites": None,
    "inter_site_gbps": None,
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_moe_plan(opts: dict[str, Any]) -> None:
    """Check the options of ``isoflop plan --moe``, plan, and print (or ``--json``)."""
    given = [_flag(k) for k, default in _DENSE_ONLY.items() if opts.get(k) != default]
    if given:
        raise IsoflopError(
            f"{', '.join(given)} do(es) not apply to --moe; drop them (the MoE plan takes --budget-flops)"
        )
    if opts["budget_flops"] is None:
        raise IsoflopError("--moe plans at a compute budget; give --budget-flops")
    req = MoePlanRequest(
        budget_flops=opts["budget_flops"],
        law=opts["law"] or "krajewski",
        dense_law=opts["dense_law"],
        expansion=opts["expansion"],
        experts=opts["experts"],
        top_k=opts["top_k"],
        max_experts=opts["max_experts"],
        seq_len=opts["seq_len"],
        vocab_size=opts["vocab_size"],
        gpu=opts["gpu"],
        n_gpus=opts["gpus"],
        dtype=opts["dtype"] or "bf16",
        hardware_file=opts["hardware"],
    )
    result = plan_moe(req)
    emit(result.to_dict(), opts["as_json"], _render(result))


def _hw(h: MoeHardware | None) -> str:
    if h is None:
        return "-"
    if not h.fits or h.layout is None:
        return f"no layout fits {h.n_gpus} x {h.gpu}"
    lay = h.layout
    return (
        f"{h.memory_gib:.1f} GiB/GPU, step {h.step_time_s:.3f} s (all-to-all {h.comm_ep_s:.3f} s), "
        f"MFU {h.mfu:.2f}, {h.days:.2f} days; TP{lay['tp']} PP{lay['pp']} DP{lay['dp']} EP{lay['ep']}"
    )


def _render(plan: MoePlan):
    def render(console) -> None:
        console.print(
            f"[bold]MoE plan[/] at {plan.budget_flops:.4g} FLOPs with law [bold]{plan.law['name']}[/] "
            f"({plan.law['citation'] or 'fitted'}); dense: {plan.dense_law['name']}"
        )
        t = Table()
        for col in ("", "MoE", "dense"):
            t.add_column(col)
        m, d = plan.moe, plan.dense
        t.add_row(
            "experts",
            f"{m.spec.n_experts} routed, top-{m.spec.top_k} (granularity {m.granularity}), expert d_ff {m.spec.d_ff}",
            "-",
        )
        t.add_row(
            "shape",
            f"{m.spec.n_layers} layers, d_model {m.spec.d_model}, {m.spec.n_heads} heads",
            f"{d.spec.n_layers} layers, d_model {d.spec.d_model}, {d.spec.n_heads} heads, d_ff {d.spec.d_ff}",
        )
        t.add_row(
            "parameters",
            f"{m.params / 1e9:.3f}B total, {m.active_params / 1e9:.3f}B active",
            f"{d.params / 1e9:.3f}B",
        )
        t.add_row("tokens", f"{m.tokens / 1e9:.4g}B", f"{d.tokens / 1e9:.4g}B")
        t.add_row("predicted loss", f"{m.loss:.4f}", f"{d.loss:.4f}")
        t.add_row("memory, step time", _hw(m.hardware), _hw(d.hardware))
        console.print(t)
        mult = plan.dense_equivalent_flops
        console.print(
            f"the MoE's loss is {plan.loss_gain:+.4f} below the dense plan's at equal compute"
            + (f"; dense needs {mult / plan.budget_flops:.3g}x the compute to match it" if mult else "")
        )
        console.print(
            "by granularity: "
            + ", ".join(
                f"G={g['granularity']} ({g['n_experts']} experts): {g['loss']:.4f}" for g in plan.by_granularity
            )
        )
        for note in plan.notes:
            console.print(f"note: {note}")

    return render
