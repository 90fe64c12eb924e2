"""``isoflop plan --moe``: experts, top-k, granularity and shape at a compute budget, against the dense plan.

The law is a ``moe_granularity`` law (Krajewski et al. 2024, Eq. 9; preset ``krajewski``): loss of ``N`` total
non-embedding parameters, ``D`` tokens and granularity ``G``. A fine-grained MoE of granularity ``G`` and
expansion rate ``E`` (Krajewski et al. 2024, Sec. 3) takes a dense Llama-style shape (``isoflop.plan.arch``) and
replaces each MLP of width ``d_ff`` by ``E G`` experts of width ``d_ff / G``, of which ``top_k = G`` run per
token: a token's compute is the dense model's plus the router, while the parameters grow ``E``-fold in the MLPs.

Search: for every granularity and every dense base size on a log grid, ``D = C / F`` with ``F`` the training
FLOPs per token of the built model (``isoflop.spec.count_flops``, attention and output head included), and the
law's loss at ``(N, D, G)``; the lowest loss wins. The dense plan runs the same search on the dense shapes with
the dense law (preset ``krajewski-dense``, the paper's dense fit), so both spend the same FLOPs by the same count.
``dense_equivalent_flops``: the compute at which the dense plan reaches the MoE's loss (bisection in log C).
With ``--gpu`` and ``--gpus`` the performance model (``isoflop.perf.search_layouts``) gives both plans' memory
per GPU, step time and days.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.hardware import get_gpu
from isoflop.laws.forms import ChinchillaLaw, Law, load_law
from isoflop.laws.hyperparams import recommend
from isoflop.laws.moe import KRAJEWSKI_EXPANSION, GranularityLaw
from isoflop.perf.layout import check_counts
from isoflop.plan.arch import shape_for_params
from isoflop.spec import ModelSpec, count_flops, count_params

GRANULARITIES = (1, 2, 4, 8, 16, 32, 64)
FINE_EXPERT_WIDTH = 1024  # below this expert width the MoE validation shows the step time underpredicted
MIN_TOKENS = 1e4  # a base shape the budget trains on fewer tokens than this is not a candidate
BASE_POINTS = 48  # dense base sizes per 6 decades of the grid


@dataclass
class MoePlanRequest:
    """``budget_flops`` and the law; ``experts``/``top_k`` fix the choice (then ``G = top_k``); ``max_experts``
    bounds the routed experts of the search (e.g. 256, DeepSeek-V3's)."""

    budget_flops: float
    law: str | Law = "krajewski"
    dense_law: str | Law = "krajewski-dense"
    expansion: int = KRAJEWSKI_EXPANSION
    granularities: tuple[int, ...] = GRANULARITIES
    experts: int | None = None
    top_k: int | None = None
    max_experts: int | None = None
    seq_len: int = 2048
    vocab_size: int = 32000
    gpu: str | None = None
    n_gpus: int | None = None
    dtype: str = "bf16"
    hardware_file: str | None = None


@dataclass
class MoeHardware:
    """One plan on ``n_gpus`` x ``gpu``: the fastest layout the performance model finds, or ``fits=False``."""

    gpu: str
    n_gpus: int
    global_batch: int
    fits: bool
    layout: dict[str, Any] | None = None
    memory_gib: float | None = None
    step_time_s: float | None = None
    comm_ep_s: float | None = None
    mfu: float | None = None
    steps: int | None = None
    days: float | None = None


@dataclass
class Choice:
    """One planned model: its shape, counts, tokens and predicted loss; hardware fields with ``--gpu``."""

    spec: ModelSpec
    granularity: int | None
    params: int
    active_params: int
    law_params: float
    tokens: float
    flops: float
    flops_per_token: float
    loss: float
    hardware: MoeHardware | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "n_experts": s.n_experts,
            "top_k": s.top_k,
            "granularity": self.granularity,
            "d_model": s.d_model,
            "n_layers": s.n_layers,
            "n_heads": s.n_heads,
            "n_kv_heads": s.n_kv_heads,
            "d_ff": s.d_ff,
            "params": self.params,
            "active_params": self.active_params,
            "law_params": self.law_params,
            "tokens": self.tokens,
            "flops": self.flops,
            "flops_per_token": self.flops_per_token,
            "loss": self.loss,
            "hardware": None if self.hardware is None else asdict(self.hardware),
            "spec": s.model_dump(),
        }


@dataclass
class MoePlan:
    """The answer of ``plan_moe``: the MoE, the dense plan at the same FLOPs, and how much they differ."""

    budget_flops: float
    law: dict[str, Any]
    dense_law: dict[str, Any]
    moe: Choice
    dense: Choice
    loss_gain: float  # dense loss - MoE loss at equal compute (> 0: the MoE wins)
    dense_equivalent_flops: float | None  # the dense compute that reaches the MoE's loss
    by_granularity: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["moe"], out["dense"] = self.moe.to_dict(), self.dense.to_dict()
        out["compute_multiplier"] = (
            None if self.dense_equivalent_flops is None else self.dense_equivalent_flops / self.budget_flops
        )
        return out


def _check(req: MoePlanRequest) -> None:
    if not (math.isfinite(req.budget_flops) and req.budget_flops > 0):
        raise IsoflopError(f"--budget-flops must be a positive finite number, got {req.budget_flops!r}")
    if req.expansion < 1:
        raise IsoflopError(f"--expansion must be >= 1 (expert parameters over a dense MLP's), got {req.expansion}")
    if req.experts is not None or req.top_k is not None:
        if req.experts is None or req.top_k is None:
            raise IsoflopError("--experts and --top-k go together (granularity = top-k); give both or neither")
        if req.experts < 1 or req.top_k < 1:
            raise IsoflopError(f"--experts and --top-k must be >= 1, got {req.experts} and {req.top_k}")
        if req.top_k > req.experts:
            raise IsoflopError(f"--top-k {req.top_k} is more than --experts {req.experts}; choose top-k <= experts")
    if req.max_experts is not None:
        if req.experts is not None:
            raise IsoflopError("--max-experts bounds the search; with --experts fixed, drop it")
        if req.max_experts < req.expansion:
            raise IsoflopError(
                f"--max-experts {req.max_experts} is below --expansion {req.expansion} (granularity 1 already has "
                f"{req.expansion} experts); raise it or lower --expansion"
            )
    if (req.gpu is None) != (req.n_gpus is None):
        raise IsoflopError("--gpu and --gpus go together for the MoE plan's memory and step time")
    check_counts(gpus=req.n_gpus)
    if req.seq_len < 1 or req.vocab_size < 1:
        raise IsoflopError("--seq-len and --vocab-size must be positive integers")


def _laws(req: MoePlanRequest) -> tuple[GranularityLaw, ChinchillaLaw]:
    law, dense = load_law(req.law), load_law(req.dense_law)
    if not isinstance(law, GranularityLaw):
        raise IsoflopError(
            f"plan --moe needs a moe_granularity law (Krajewski et al. 2024: loss of N, D and G), got the {law.form} "
            f"law {law.name!r}; use --law krajewski or a file from `isoflop fit --form moe_granularity --out`"
        )
    if not isinstance(dense, ChinchillaLaw):
        raise IsoflopError(f"--dense-law must be a chinchilla-form law (e.g. krajewski-dense), got {dense.form}")
    return law, dense


def _bases(req: MoePlanRequest, top_flops: float) -> list[ModelSpec]:
    """Dense base shapes from ~1e6 non-embedding parameters up to what ``top_flops`` trains on 100 tokens per
    parameter."""
    top = max(2e6, top_flops / (6.0 * 100.0))
    out, seen = [], set()
    for n in np.geomspace(1e6, top, max(8, int(BASE_POINTS * math.log10(top / 1e6) / 6.0))):
        try:
            spec = shape_for_params(
                float(n), req.vocab_size, req.seq_len, count="non_embedding", multiple=32 if n < 5e7 else 128
            )
        except IsoflopError:
            continue
        key = (spec.d_model, spec.n_layers)
        if key not in seen:
            seen.add(key)
            out.append(spec)
    if not out:
        raise IsoflopError(
            f"no model shape fits a {top_flops:.3g}-FLOP budget at vocabulary {req.vocab_size}; raise the budget"
        )
    return out


def _moe_spec(base: ModelSpec, experts: int, top_k: int, granularity: int) -> ModelSpec | None:
    width = base.d_ff // granularity
    if width < 8:
        return None
    return base.model_copy(
        update={"name": "planned-moe", "n_experts": experts, "top_k": top_k, "d_ff": width, "n_shared_experts": 0}
    )


def _choice(spec: ModelSpec, granularity: int | None, budget: float, seq_len: int, law: Law) -> Choice:
    counts = count_params(spec)
    per_token = count_flops(spec, seq_len).training
    tokens = budget / per_token
    n = float(counts.total if law.param_kind == "total" else counts.non_embedding)
    loss = law.predict(n, tokens, granularity) if granularity is not None else law.predict(n, tokens)
    return Choice(
        spec=spec,
        granularity=granularity,
        params=counts.total,
        active_params=counts.active,
        law_params=n,
        tokens=tokens,
        flops=budget,
        flops_per_token=per_token,
        loss=float(loss),
    )


def best_dense(bases: list[ModelSpec], budget: float, seq_len: int, law: ChinchillaLaw) -> Choice:
    """The dense base shape of lowest predicted loss at ``budget``."""
    return min((_choice(b, None, budget, seq_len, law) for b in bases), key=lambda c: c.loss)


def _moe_choices(req: MoePlanRequest, bases: list[ModelSpec], law: GranularityLaw) -> list[Choice]:
    if req.experts is not None and req.top_k is not None:
        options = [(req.experts, req.top_k, req.top_k)]
    else:
        options = [
            (req.expansion * g, g, g)
            for g in req.granularities
            if req.max_experts is None or req.expansion * g <= req.max_experts
        ]
    best: list[Choice] = []
    for experts, top_k, g in options:
        specs = [s for s in (_moe_spec(b, experts, top_k, g) for b in bases) if s is not None]
        if specs:
            best.append(min((_choice(s, g, req.budget_flops, req.seq_len, law) for s in specs), key=lambda c: c.loss))
    if not best:
        raise IsoflopError("no MoE shape fits: the experts' width d_ff / top-k is below 8; lower --top-k")
    return best


def _dense_equivalent(bases: list[ModelSpec], target: float, req: MoePlanRequest, law: ChinchillaLaw) -> float | None:
    """The compute at which the dense plan's loss equals ``target`` (bisection in log C, up to 1e4 x the budget)."""
    kind = law.param_kind
    n = np.array([float(getattr(count_params(b), "total" if kind == "total" else "non_embedding")) for b in bases])
    per_token = np.array([count_flops(b, req.seq_len).training for b in bases])

    def loss_at(log_c: float) -> float:
        return float(np.min(law.predict(n, math.exp(log_c) / per_token)))

    lo, hi = math.log(req.budget_flops) - 2.0, math.log(req.budget_flops) + 4.0 * math.log(10.0)
    if loss_at(hi) > target or loss_at(lo) < target:
        return None
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if loss_at(mid) > target else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def _hardware(choice: Choice, req: MoePlanRequest) -> MoeHardware:
    """Memory per GPU, step time and days of ``choice`` on ``req.n_gpus`` x ``req.gpu`` (best layout)."""
    from isoflop.perf import search_layouts

    gpu = get_gpu(str(req.gpu), req.hardware_file)
    counts = count_params(choice.spec)
    hp = recommend(counts.active - counts.embedding, choice.tokens, seq_len=req.seq_len)
    n_gpus = int(req.n_gpus or 1)
    batch = max(n_gpus, int(round(hp["global_batch"] / n_gpus)) * n_gpus)
    layouts = search_layouts(choice.spec, gpu, n_gpus, batch, req.seq_len, fixed={"dtype": req.dtype}, top_k=1)
    if not layouts:
        return MoeHardware(gpu=gpu.name, n_gpus=n_gpus, global_batch=batch, fits=False)
    best = layouts[0]
    steps = max(1, math.ceil(choice.tokens / (batch * req.seq_len)))
    return MoeHardware(
        gpu=gpu.name,
        n_gpus=n_gpus,
        global_batch=batch,
        fits=True,
        layout=best.layout.to_dict(),
        memory_gib=best.memory["total_gib"],
        step_time_s=best.step_time_s,
        comm_ep_s=best.breakdown["comm_ep_s"],
        mfu=best.mfu,
        steps=steps,
        days=steps * best.step_time_s / 86400.0,
    )


def _law_dict(law: Law) -> dict[str, Any]:
    return {"name": law.name, "form": law.form, "citation": law.citation, "params": dict(law.params_)}


def plan_moe(req: MoePlanRequest) -> MoePlan:
    """The MoE plan (``MoePlan.to_dict()`` is ``isoflop plan --moe --json``)."""
    _check(req)
    law, dense_law = _laws(req)
    everything = _bases(req, req.budget_flops * 1e4)
    bases = [b for b in everything if count_flops(b, req.seq_len).training * MIN_TOKENS <= req.budget_flops]
    if not bases:
        raise IsoflopError(
            f"the budget is too small for any sensible model: {req.budget_flops:.3g} FLOPs train the smallest shape "
            f"at vocabulary {req.vocab_size} on fewer than {MIN_TOKENS:g} tokens; raise --budget-flops"
        )
    choices = _moe_choices(req, bases, law)
    moe = min(choices, key=lambda c: c.loss)
    dense = best_dense(bases, req.budget_flops, req.seq_len, dense_law)
    notes = []
    expansion = moe.spec.n_experts / moe.spec.top_k
    if law.name == "krajewski" and expansion != KRAJEWSKI_EXPANSION:
        notes.append(
            f"expansion {expansion:g} (experts / top-k): Krajewski et al. fitted at {KRAJEWSKI_EXPANSION}; "
            "the prediction extrapolates"
        )
    if req.gpu is not None:
        moe.hardware, dense.hardware = _hardware(moe, req), _hardware(dense, req)
        if moe.spec.d_ff < FINE_EXPERT_WIDTH:
            notes.append(
                f"experts of width {moe.spec.d_ff}: the performance model is optimistic for fine-grained experts "
                "(benchmarks/validate_moe.py: Qwen3-30B-A3B, width 768, ran 2.7x slower than predicted)"
            )
    return MoePlan(
        budget_flops=req.budget_flops,
        law=_law_dict(law),
        dense_law=_law_dict(dense_law),
        moe=moe,
        dense=dense,
        loss_gain=dense.loss - moe.loss,
        dense_equivalent_flops=_dense_equivalent(everything, moe.loss, req, dense_law),
        by_granularity=[
            {"granularity": c.granularity, "n_experts": c.spec.n_experts, "top_k": c.spec.top_k, "loss": c.loss}
            for c in choices
        ],
        notes=notes,
    )
