"""The planner: budget -> (N, D) from a law -> architecture -> parallel layout -> time, cost, energy, CO2.

With hardware (GPU type, count, days) the FLOP budget is not known in advance: it is what the chosen model
achieves on that hardware. The planner therefore iterates (a fixed point): assume an MFU (0.4, or the user's),
turn GPUs x days into FLOPs, allocate N and D, build the architecture, search the best layout with the
performance model (``isoflop.perf.search_layouts``), and recompute the budget from the predicted throughput,
``C = 6 N x tokens/s x seconds``, until it changes by less than 0.5%.

``N`` is the parameter count the law uses (``law.param_kind``): the allocation's N, the size the architecture is
built to, the count the loss is predicted at and the N of ``C = 6 N D`` are all total parameters for
Chinchilla-style laws (Hoffmann et al. 2022) and non-embedding parameters for Kaplan et al. 2020 (Sec. 1.2,
Eq. 2.1) or ladder-fitted laws.

Energy: every GPU at its board power (TDP) for the whole run, times the data-centre PUE; host CPUs and network
are not counted. Defaults PUE 1.1 and 0.429 kg CO2e/kWh are the values Patterson et al. 2021 ("Carbon Emissions
and Large Neural Network Training", Table 4) use for a hyperscale data centre and the US grid average.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from isoflop.errors import IsoflopError
from isoflop.hardware import GPU, get_gpu
from isoflop.laws.allocation import Allocation, compute_optimal, data_constrained
from isoflop.laws.forms import AllocationLaw, Law, load_law
from isoflop.laws.hyperparams import recommend, warmup_steps
from isoflop.laws.intervals import ci95
from isoflop.laws.moe import MOE_FORMS
from isoflop.perf.layout import check_counts
from isoflop.plan.arch import NoShapeError, shape_for_params
from isoflop.spec import ModelSpec, count_params

DEFAULT_PUE = 1.1
DEFAULT_CARBON_KG_PER_KWH = 0.429
DEFAULT_MFU_GUESS = 0.4
MAX_ITERATIONS = 12
SIX_N_SHARE_GUESS = 0.9  # first guess of 6N / training FLOPs per token (attention scores add ~10%); iterated away


@dataclass
class PlanRequest:
    """What the user asked for. Give ``budget_flops`` or ``target_loss``, or ``gpu`` + ``n_gpus`` + ``days``."""

    law: str | Law = "besiroglu"
    budget_flops: float | None = None
    target_loss: float | None = None
    gpu: str | None = None
    n_gpus: int | None = None
    days: float | None = None
    price_per_gpu_hour: float | None = None
    mfu: float | None = None
    unique_tokens: float | None = None
    inference_tokens: float | None = None
    seq_len: int = 2048
    vocab_size: int = 32000
    hp_law: str = "step"
    schedule: str = "cosine"
    dtype: str | None = None  # default: bf16 where the GPU has it, else fp16, else fp32
    pue: float = DEFAULT_PUE
    carbon_kg_per_kwh: float = DEFAULT_CARBON_KG_PER_KWH
    hardware_file: str | None = None


def _check(req: PlanRequest) -> None:
    hardware = [req.gpu is not None, req.n_gpus is not None, req.days is not None]
    if any(hardware) and not all(hardware):
        raise IsoflopError("a hardware budget needs all of --gpu, --gpus and --days")
    given = sum([req.budget_flops is not None, req.target_loss is not None, all(hardware)])
    if given != 1:
        raise IsoflopError("give exactly one budget: --budget-flops, --target-loss, or --gpu/--gpus/--days")
    for value, name in (
        (req.budget_flops, "--budget-flops"),
        (req.days, "--days"),
        (req.target_loss, "--target-loss"),
        (req.unique_tokens, "--unique-tokens"),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise IsoflopError(f"{name} must be a positive finite number, got {value!r}")
    check_counts(gpus=req.n_gpus)
    if req.mfu is not None and not 0 < req.mfu <= 1:
        raise IsoflopError(f"--mfu must be in (0, 1], got {req.mfu}")
    if req.price_per_gpu_hour is not None and not (
        math.isfinite(req.price_per_gpu_hour) and req.price_per_gpu_hour >= 0
    ):
        raise IsoflopError(f"--price must be >= 0, got {req.price_per_gpu_hour}")
    if req.seq_len < 1 or req.vocab_size < 1:
        raise IsoflopError("--seq-len and --vocab-size must be positive integers")
    if not (req.pue >= 1 and math.isfinite(req.pue)):
        raise IsoflopError(f"--pue must be >= 1, got {req.pue}")
    if not (math.isfinite(req.carbon_kg_per_kwh) and req.carbon_kg_per_kwh >= 0):
        raise IsoflopError(
            f"--carbon-intensity must be a finite number >= 0 (kg CO2e per kWh), got {req.carbon_kg_per_kwh}"
        )


def _model(alloc: Allocation, req: PlanRequest) -> ModelSpec:
    """The architecture with about ``alloc.n_params`` parameters of the law's kind (``alloc.param_kind``)."""
    try:
        return shape_for_params(
            alloc.n_params, req.vocab_size, req.seq_len, tp=1, count=alloc.param_kind, name="planned"
        )
    except NoShapeError as exc:
        kind = alloc.param_kind.replace("_", "-")
        if exc.too_large:
            raise IsoflopError(
                f"the budget is too large: the law asks for {alloc.n_params:.3g} {kind} parameters, more than the "
                "largest model isoflop shapes (width 65536 x 256 layers) holds; lower the budget (or --gpus/--days)"
            ) from None
        raise IsoflopError(
            f"the budget is too small for any sensible model: the law asks for {alloc.n_params:.3g} "
            f"{kind} parameters, fewer than a {req.vocab_size}-token vocabulary's "
            "embedding and output layers need; raise the budget, or use a smaller --vocab-size"
        ) from None


def _law_count(spec: ModelSpec, law: Law) -> float:
    """The built model's parameter count of the kind the law's N counts."""
    counts = count_params(spec)
    return float(counts.total if law.param_kind == "total" else counts.non_embedding)


@dataclass
class PlannedModel:
    """The planned architecture: its counts and shape, and the full ``ModelSpec``."""

    params: int
    non_embedding_params: int
    layers: int
    d_model: int
    heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab_size: int
    seq_len: int
    spec: ModelSpec

    @classmethod
    def of(cls, spec: ModelSpec) -> PlannedModel:
        p = count_params(spec)
        return cls(
            params=p.total,
            non_embedding_params=p.non_embedding,
            layers=spec.n_layers,
            d_model=spec.d_model,
            heads=spec.n_heads,
            n_kv_heads=spec.n_kv_heads,
            head_dim=spec.head_dim,
            ffn=spec.d_ff,
            vocab_size=spec.vocab_size,
            seq_len=spec.max_seq_len,
            spec=spec,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"},
            "spec": self.spec.model_dump(),
        }


@dataclass
class HardwarePlan:
    """Time, cost and energy of a plan on given hardware (``--gpu``/``--gpus``/``--days``)."""

    layout: dict[str, Any]
    layout_reason: str | None
    alternatives: list[dict[str, Any]]
    step_time_s: float
    tokens_per_s: float
    mfu: float
    memory_gib: float
    days: float
    gpu_hours: float
    price_per_gpu_hour: float
    cost_usd: float
    energy_kwh: float
    co2_kg: float
    assumptions: dict[str, Any]


@dataclass
class Plan:
    """The answer of ``make_plan``; ``to_dict`` is the documented JSON (``isoflop plan --json``), with the
    ``hardware`` fields at the top level when there is hardware."""

    law: dict[str, Any]
    model: PlannedModel
    tokens: float
    tokens_per_param: float
    flops: float
    predicted_loss: float | None
    predicted_loss_ci95: list[float] | None
    law_optimum: Allocation
    hyperparameters: dict[str, Any]
    seq_len: int
    notes: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    hardware: HardwarePlan | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hardware"}
        out.update(model=self.model.to_dict(), law_optimum=self.law_optimum.to_dict(), notes=list(self.notes))
        if self.hardware is not None:
            out.update(asdict(self.hardware))
        return out


def _allocate(law: Law, req: PlanRequest, flops: float | None) -> Allocation:
    return compute_optimal(
        law,
        flops,
        target_loss=None if flops is not None else req.target_loss,
        unique_tokens=req.unique_tokens,
        inference_tokens=req.inference_tokens,
    )


def _loss(law: Law, req: PlanRequest, n: float, d: float) -> float | None:
    if isinstance(law, AllocationLaw):
        loss = law.optimal_loss(6.0 * n * d)
        return None if loss is None else float(loss)
    if req.unique_tokens is not None:
        return float(data_constrained(law).predict(n, d, req.unique_tokens))
    return float(law.predict(n, d))


def _loss_ci(law: Law, req: PlanRequest, n: float, d: float) -> list[float] | None:
    """Interval of the predicted loss of the planned (N, D) over the law's bootstrap draws."""
    if law.samples_ is None or isinstance(law, AllocationLaw):
        return None
    return ci95([_loss(s, req, n, d) for s in law.sample_laws()])


def _batch(hp: dict[str, Any], n_gpus: int) -> int:
    """Global batch in sequences: the law's batch rounded to a multiple of the GPU count (every data-parallel
    degree divides it)."""
    return max(n_gpus, int(round(hp["global_batch"] / n_gpus)) * n_gpus)


def make_plan(req: PlanRequest) -> Plan:
    """The full plan (``Plan.to_dict()`` is ``isoflop plan --json``)."""
    _check(req)
    law = load_law(req.law)
    if law.form in MOE_FORMS:
        raise IsoflopError(f"{law.name} is a mixture-of-experts law ({law.form}); plan it with `isoflop plan --moe`")
    gpu = get_gpu(req.gpu, req.hardware_file) if req.gpu else None
    if gpu is not None and req.dtype is None:
        req = replace(req, dtype=next(d for d in ("bf16", "fp16", "fp32", "tf32", "fp8") if gpu.peak_tflops.get(d)))
    if gpu is None:
        alloc = _allocate(law, req, req.budget_flops)
        spec = _model(alloc, req)
        n = _law_count(spec, law)
        tokens = alloc.flops / (6.0 * n)
        hp = recommend(
            count_params(spec).non_embedding, tokens, seq_len=req.seq_len, law=req.hp_law, schedule=req.schedule
        )
        plan = _common(law, req, alloc, spec, tokens, hp)
        plan.budget = {
            "kind": "target_loss" if req.target_loss is not None else "flops",
            "flops": alloc.flops,
            "target_loss": req.target_loss,
        }
        return plan
    return _hardware_plan(law, req, gpu)


def _common(law: Law, req: PlanRequest, alloc: Allocation, spec: ModelSpec, tokens: float, hp: dict[str, Any]) -> Plan:
    n = _law_count(spec, law)
    return Plan(
        law={
            "name": law.name,
            "form": law.form,
            "citation": law.citation,
            "param_kind": law.param_kind,
            "params": law.params_,
        },
        model=PlannedModel.of(spec),
        tokens=tokens,
        tokens_per_param=tokens / n,
        flops=6.0 * n * tokens,
        predicted_loss=_loss(law, req, n, tokens),
        predicted_loss_ci95=_loss_ci(law, req, n, tokens),
        law_optimum=alloc,
        hyperparameters=hp,
        seq_len=req.seq_len,
        notes=list(alloc.notes),
    )


def _hardware_plan(law: Law, req: PlanRequest, gpu: GPU) -> Plan:
    from isoflop.perf import fit_hints, search_layouts

    seconds = req.days * 86400.0
    peak = gpu.peak_flops(req.dtype) * req.n_gpus
    mfu = req.mfu or DEFAULT_MFU_GUESS
    flops = peak * mfu * seconds * SIX_N_SHARE_GUESS
    history: list[dict[str, float]] = []
    done = False
    for _ in range(MAX_ITERATIONS):
        alloc = _allocate(law, req, flops)
        spec = _model(alloc, req)
        counts = count_params(spec)
        n = _law_count(spec, law)
        hp = recommend(
            counts.non_embedding, flops / (6.0 * n), seq_len=req.seq_len, law=req.hp_law, schedule=req.schedule
        )
        global_batch = _batch(hp, req.n_gpus)
        layouts = search_layouts(spec, gpu, req.n_gpus, global_batch, req.seq_len, fixed={"dtype": req.dtype}, top_k=3)
        if not layouts:
            hints = fit_hints(spec, gpu, req.n_gpus, global_batch, req.seq_len, {"dtype": req.dtype})
            raise IsoflopError(
                f"no parallel layout of the {counts.total / 1e9:.3g}B-parameter model fits {req.n_gpus} x {gpu.name}; "
                + "; ".join(hints)
            )
        best = layouts[0]
        tokens_per_s = best.tokens_per_s if req.mfu is None else best.tokens_per_s * req.mfu / best.mfu
        new_flops = 6.0 * n * tokens_per_s * seconds
        history.append(
            {
                "flops": flops,
                "n_params": n,
                "tokens_per_s": tokens_per_s,
                "mfu": best.mfu if req.mfu is None else req.mfu,
            }
        )
        done = abs(new_flops / flops - 1.0) < 0.005
        flops = new_flops
        if done:
            break
    alloc = _allocate(law, req, flops)
    spec = _model(alloc, req)
    counts = count_params(spec)
    n = _law_count(spec, law)
    tokens = flops / (6.0 * n)
    hp = recommend(counts.non_embedding, tokens, seq_len=req.seq_len, law=req.hp_law, schedule=req.schedule)
    global_batch = _batch(hp, req.n_gpus)
    layouts = search_layouts(spec, gpu, req.n_gpus, global_batch, req.seq_len, fixed={"dtype": req.dtype}, top_k=3)
    if not layouts:
        raise IsoflopError(f"no parallel layout fits {req.n_gpus} x {gpu.name} for the final model; try more GPUs")
    best = layouts[0]
    mfu_used = best.mfu if req.mfu is None else req.mfu
    step_time = best.step_time_s if req.mfu is None else best.step_time_s * best.mfu / req.mfu
    steps = max(1, math.ceil(tokens / (global_batch * req.seq_len)))
    hp = {
        **hp,
        "global_batch": global_batch,
        "steps": steps,
        "warmup_steps": warmup_steps(counts.non_embedding, global_batch * req.seq_len, steps),
    }
    hp["batch_tokens"] = global_batch * req.seq_len
    plan = _common(law, req, alloc, spec, tokens, hp)
    days = steps * step_time / 86400.0
    gpu_hours = req.n_gpus * days * 24.0
    price = gpu.price_per_hour_usd if req.price_per_gpu_hour is None else req.price_per_gpu_hour
    energy = gpu_hours * gpu.tdp_watts / 1000.0 * req.pue
    plan.budget = {
        "kind": "hardware",
        "gpu": gpu.name,
        "n_gpus": req.n_gpus,
        "days": req.days,
        "flops": flops,
        "dtype": req.dtype,
        "mfu_override": req.mfu,
        "iterations": history,
        "converged": done,
    }
    plan.hardware = HardwarePlan(
        layout=best.layout.to_dict(),
        layout_reason=best.extra.get("reason"),
        alternatives=[e.layout.to_dict() | {"tokens_per_s": e.tokens_per_s, "mfu": e.mfu} for e in layouts[1:]],
        step_time_s=step_time,
        tokens_per_s=global_batch * req.seq_len / step_time,
        mfu=mfu_used,
        memory_gib=best.memory["total_gib"],
        days=days,
        gpu_hours=gpu_hours,
        price_per_gpu_hour=price,
        cost_usd=gpu_hours * price,
        energy_kwh=energy,
        co2_kg=energy * req.carbon_kg_per_kwh,
        assumptions={
            "pue": req.pue,
            "carbon_kg_per_kwh": req.carbon_kg_per_kwh,
            "power": f"{gpu.tdp_watts:.0f} W per GPU (TDP) for the whole run; host and network not counted",
        },
    )
    return plan
