"""Design an IsoFLOP grid: compute budgets x model sizes around the expected optimum (Hoffmann et al. 2022, Sec. 3.2).

Each budget ``C`` gets ``sizes`` models spaced by ``size_ratio`` in parameters, centred on the expected
compute-optimal size ``N_c(C)``: the size whose run at ``C`` sees ``tokens_per_param`` tokens per
parameter, counted as Hoffmann et al. do, embeddings included (default 20, their Table 3 ratio). Shapes come
from the planner's rule (``isoflop.plan.arch.shape_for_params``); a run's FLOPs are exact
(``isoflop.spec.accounting``: training FLOPs per token x tokens), so every point sits on its budget.

Hyperparameters for tiny models follow one stated rule, identical across sizes but for the learning rate:
* learning rate ``lr_factor`` (3) x Kaplan et al. 2020, App. D.6, Eq. D.1: ``lr(N) = 0.003239 - 0.0001395 ln N``
  with ``N`` the non-embedding parameters. Eq. D.1 was fit to 250k-step runs; ladder runs take 10^2-10^3 steps.
  The factor was measured on ladder points only (13k and 40k parameters at 1.2e11 FLOPs, factors 1, 3, 6, 12:
  3 was best or within 0.1 nats of best for both), never on the held-out run. Eq. D.1 barely moves with N (5.8e-3
  at d_model 16, 5.1e-3 at 48), but the best rate halves when the width doubles: at 1.6e11 FLOPs (factors 1.5,
  3, 6, 12 of Eq. D.1) d_model 16 was best at 1.2e-2 to 2.4e-2 and d_model 32 at 1.1e-2, with 2.2e-2 0.22 nats
  worse. A design with ``lr_width`` set uses ``lr = lr_width / d_model`` instead: muP's Adam rule for hidden
  weights, learning rate proportional to 1 / fan-in (Yang et al. 2022, Table 3);
* a fixed batch in tokens for every run (the same optimizer noise scale on the whole ladder);
* linear warmup over ``warmup_fraction`` of the steps, then cosine decay to 10% of the peak at the
  run's own last step (the schedule length matched to the tokens, Hoffmann et al. 2022, Sec. 3 / App. B);
* AdamW (beta2 0.95, weight decay 0.1), fp32, the same data and validation set (same seed) for all runs;
  the validation loss is measured on the same ``eval_batches`` x ``batch_seqs`` windows for every run.

The MoE family (``n_experts > 0``) is the dense family with each MLP replaced by ``n_experts`` routed SwiGLU
experts of width ``d_ff / top_k``, ``top_k`` per token (fine-grained experts, Krajewski et al. 2024, granularity
``G = top_k``): attention, embeddings and the active MLP width are the dense member's, so a token costs the dense
member's FLOPs plus the router's ``2 d E`` per layer. Sizes, grid centres, learning rates and fits count
``fit_params``: active non-embedding parameters (Clark et al. 2022 and Krajewski et al. 2024 scale in active
parameters; at equal active parameters and tokens the two families spend equal FLOPs). For a dense model
that is the non-embedding count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isoflop.errors import IsoflopError
from isoflop.spec import ModelSpec, count_flops, count_params
from isoflop.train.config import OptimSection, ParallelSection, TrainConfig, TrainSection
from isoflop.train.data import DataConfig


@dataclass(frozen=True)
class LadderDesign:
    """The knobs of a ladder; ``budgets`` in training FLOPs (exact accounting)."""

    name: str
    budgets: tuple[float, ...]
    sizes: int = 4
    size_ratio: float = 2.0
    tokens_per_param: float = 20.0
    vocab_size: int = 512
    seq_len: int = 64
    batch_seqs: int = 16
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    heldout_factor: float = 3.5
    overtrain: float = 16.0
    lr_factor: float = 3.0
    lr_width: float | None = None
    seed: int = 0
    data_source: str = "stdlib"
    eval_batches: int = 16
    dim_multiple: int = 16
    primary: str = "envelope"
    max_extensions: int = 2
    bootstrap: int = 200
    extra_data: dict[str, Any] = field(default_factory=dict)
    n_experts: int = 0
    top_k: int = 0

    def validate(self) -> None:
        if len(self.budgets) < 3 or self.sizes < 3:
            raise IsoflopError(
                f"an IsoFLOP ladder needs >= 3 budgets x >= 3 sizes (a parabola per budget), got "
                f"{len(self.budgets)} x {self.sizes}"
            )
        if self.sizes < 4 and self.primary == "envelope":
            raise IsoflopError(
                f"{self.sizes} sizes leave the IsoFLOP parabolas no residuals, so the envelope has no interval; "
                "use >= 4 sizes or primary approach3"
            )
        if any(b <= 0 for b in self.budgets):
            raise IsoflopError("ladder budgets must be positive FLOP counts")
        if self.primary not in ("envelope", "approach3"):
            raise IsoflopError(f"primary must be envelope or approach3, got {self.primary!r}")
        if self.lr_width is not None and self.lr_width <= 0:
            raise IsoflopError(f"lr_width must be > 0, got {self.lr_width}")
        if self.overtrain < 0:
            raise IsoflopError(f"overtrain must be >= 0 (0: no over-trained held-out run), got {self.overtrain}")
        if self.size_ratio <= 1:
            raise IsoflopError(f"size_ratio must be > 1, got {self.size_ratio}")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.top_k <= self.n_experts):
            raise IsoflopError(
                f"--top-k {self.top_k} with --experts {self.n_experts}: an MoE ladder routes each token to "
                f"1 <= top-k <= experts; lower --top-k or raise --experts"
            )
        if not self.n_experts and self.top_k:
            raise IsoflopError(f"--top-k {self.top_k} needs routed experts; give --family moe --experts E")

    @property
    def batch_tokens(self) -> int:
        return self.batch_seqs * self.seq_len


@dataclass
class GridPoint:
    """One planned run: its budget, shape, token count and exact FLOPs, and the training config."""

    budget: float
    spec: ModelSpec
    steps: int
    tokens: int
    flops: float
    n_params: int
    n_params_non_embedding: int  # the fit count, ``fit_params``: active non-embedding parameters
    config: TrainConfig
    role: str = "ladder"

    @property
    def label(self) -> str:
        return f"C={self.budget:.2e} N={self.n_params_non_embedding:,} D={self.tokens:,}"


def fit_params(spec: ModelSpec) -> int:
    """The parameters the ladder sizes, centres and fits by: non-embedding and active (an MoE's top-k experts and
    router; every parameter of a dense model)."""
    params = count_params(spec)
    return params.active - params.embedding


def kaplan_lr(n_non_embedding: float) -> float:
    """Kaplan et al. 2020, Eq. D.1: the learning rate that trains well at ``N`` non-embedding parameters."""
    return max(1e-4, 0.003239 - 0.0001395 * math.log(max(n_non_embedding, 1.0)))


def ladder_lr(n_non_embedding: float, factor: float) -> float:
    """The ladder's rate: ``factor`` x Kaplan's Eq. D.1 (fit to 250k-step runs; runs of 10^2-10^3 steps need more)."""
    return factor * kaplan_lr(n_non_embedding)


FAMILY_ASPECT = 16.0  # d_model / n_layers of the ladder family (Kaplan et al. 2020, Fig. 5: a broad optimum)


def family_size(n_non_embedding: float, multiple: int = 16, aspect: float = FAMILY_ASPECT) -> tuple[int, int]:
    """``(d_model, n_layers)`` of the fixed-aspect family nearest ``n_non_embedding`` parameters.

    Ladder models grow width and depth together, ``d_model ~ aspect x n_layers`` (Kaplan et al. 2020,
    Sec. 3.1, Fig. 5: loss depends weakly on the aspect ratio at fixed N, but a ladder that changes only depth
    or jumps between one-layer and deep models bends its IsoFLOP curves). A Llama block has about ``12 d^2``
    parameters (attention ``4 d^2`` + SwiGLU ``3 d (8d/3)``), so ``d = (aspect N / 12)^(1/3)``."""
    best, best_err = (multiple, 1), math.inf
    for layers in range(1, 129):
        d = max(multiple, round(math.sqrt(n_non_embedding / (12 * layers)) / multiple) * multiple)
        err = abs(math.log(12 * layers * d * d / n_non_embedding)) + 0.2 * abs(math.log(d / (aspect * layers)))
        if err < best_err:
            best, best_err = (d, layers), err
    return best


def in_family(spec: ModelSpec, aspect: float = FAMILY_ASPECT) -> bool:
    """Whether ``spec``'s aspect ratio is within 2x of the family's (``aspect / 2 <= d_model / n_layers <= 2 aspect``):
    the nearest member to a size off the grid can be much deeper and narrower (``family_size`` weighs the aspect
    softly), which a held-out run must not be."""
    return aspect / 2 <= spec.d_model / spec.n_layers <= 2 * aspect


def default_shape(n_params: int, vocab_size: int, seq_len: int, multiple: int) -> ModelSpec:
    """The planner's shape (``isoflop.plan.arch.shape_for_params``, tied embeddings, head_dim = ``multiple``) for
    the family member nearest ``n_params`` non-embedding parameters, asked for at that member's exact size and
    aspect ratio so the planner returns it."""
    from isoflop.plan.arch import shape_for_params

    d, layers = family_size(n_params, multiple)
    ffn = math.ceil(8 * d / 3 / multiple) * multiple
    exact = layers * (4 * d * d + 3 * d * ffn + 2 * d) + d
    return shape_for_params(
        exact,
        vocab_size=vocab_size,
        seq_len=seq_len,
        multiple=multiple,
        head_dim=multiple,
        count="non_embedding",
        tie_embeddings=True,
        aspect=d / layers,
        name="ladder",
    )


ShapeFn = Callable[[int, int, int, int], ModelSpec]


def moe_member(dense: ModelSpec, n_experts: int, top_k: int) -> ModelSpec:
    """``dense`` with each MLP replaced by ``n_experts`` routed experts of width ``d_ff / top_k`` (rounded to a
    multiple of 4, which keeps the grouped GEMM's fp32 rows 16-byte aligned), ``top_k`` of them per token."""
    width = max(4, round(dense.d_ff / top_k / 4) * 4)
    update = {"n_experts": n_experts, "top_k": top_k, "d_ff": width, "name": "ladder-moe"}
    return ModelSpec.model_validate({**dense.model_dump(), **update})


def design_shape(design: LadderDesign) -> ShapeFn:
    """The design's shape rule: ``default_shape``, or for an MoE design the dense member whose MoE version has the
    active count nearest the one asked for (members a router's ``d E`` per layer apart), made MoE."""
    if not design.n_experts:
        return default_shape

    def moe_fit(d_layers: tuple[int, int], vocab_size: int, seq_len: int, multiple: int) -> int:
        dense = dense_member(*d_layers, vocab_size, seq_len, multiple)
        return fit_params(moe_member(dense, design.n_experts, design.top_k))

    def shape(n_active: int, vocab_size: int, seq_len: int, multiple: int) -> ModelSpec:
        members = {family_size(n_active * f, multiple) for f in (0.6, 0.7, 0.8, 0.9, 1.0)}
        best = min(members, key=lambda m: abs(math.log(moe_fit(m, vocab_size, seq_len, multiple) / n_active)))
        n_dense = fit_params(dense_member(*best, vocab_size, seq_len, multiple))
        return moe_member(default_shape(n_dense, vocab_size, seq_len, multiple), design.n_experts, design.top_k)

    return shape


def design_lr(design: LadderDesign, spec: ModelSpec) -> float:
    """The design's peak learning rate for ``spec``: ``lr_width / d_model`` when set, else ``lr_factor`` x Eq. D.1."""
    if design.lr_width is not None:
        return design.lr_width / spec.d_model
    return ladder_lr(fit_params(spec), design.lr_factor)


def ladder_train_config(design: LadderDesign, spec: ModelSpec, steps: int, budget: float, role: str) -> TrainConfig:
    """The ``TrainConfig`` of one ladder run: what the design decides; the rest is the trainer's default."""
    return TrainConfig(
        model=spec,
        data=DataConfig(source=design.data_source, vocab_size=design.vocab_size, **design.extra_data),
        train=TrainSection(
            seq_len=design.seq_len,
            global_batch=design.batch_seqs,
            max_steps=steps,
            tokens=steps * design.batch_tokens,
            seed=design.seed,
            dtype="fp32",
            eval_every=max(1, steps // 2),
            eval_batches=design.eval_batches,
            log_every=max(1, steps // 25),
            ckpt_every=0,
        ),
        optim=OptimSection(
            lr=round(design_lr(design, spec), 6),
            min_lr_ratio=design.min_lr_ratio,
            schedule="cosine",
            warmup_steps=max(1, round(design.warmup_fraction * steps)),
        ),
        parallel=ParallelSection(strategy="none"),
        plan={"ladder": design.name, "budget": budget, "role": role},
    )


def point_for(design: LadderDesign, spec: ModelSpec, budget: float, role: str = "ladder") -> GridPoint:
    """The run of ``spec`` that spends ``budget`` training FLOPs (rounded to whole optimizer steps)."""
    per_token = count_flops(spec, design.seq_len).training
    steps = max(1, round(budget / (per_token * design.batch_tokens)))
    tokens = steps * design.batch_tokens
    params = count_params(spec)
    return GridPoint(
        budget=budget,
        spec=spec,
        steps=steps,
        tokens=tokens,
        flops=tokens * per_token,
        n_params=params.total,
        n_params_non_embedding=fit_params(spec),
        config=ladder_train_config(design, spec, steps, budget, role),
        role=role,
    )


def dense_member(d: int, layers: int, vocab_size: int, seq_len: int, multiple: int) -> ModelSpec:
    """The dense family member of width ``d`` and depth ``layers`` (SwiGLU ``d_ff ~ 8d/3``, head_dim = ``multiple``)."""
    return ModelSpec(
        name="ladder",
        d_model=d,
        n_layers=layers,
        n_heads=d // multiple,
        d_ff=math.ceil(8 * d / 3 / multiple) * multiple,
        vocab_size=vocab_size,
        max_seq_len=seq_len,
        tie_embeddings=True,
    )


def family_spec(n_non_embedding: float, design: LadderDesign) -> ModelSpec:
    """The family member nearest ``n_non_embedding``, built directly (cheap; for searching sizes)."""
    d, layers = family_size(n_non_embedding, design.dim_multiple)
    dense = dense_member(d, layers, design.vocab_size, design.seq_len, design.dim_multiple)
    return moe_member(dense, design.n_experts, design.top_k) if design.n_experts else dense


def centre_size(design: LadderDesign, budget: float) -> float:
    """Size ``N`` (``fit_params``) whose run at ``budget`` sees ``tokens_per_param`` tokens per active parameter
    (embeddings included); bisection in log N, FLOPs and embeddings scaled between discrete family members."""

    def tokens_per_param(n: float) -> float:
        spec = family_spec(n, design)
        params = count_params(spec)
        scale = n / fit_params(spec)
        per_token = count_flops(spec, design.seq_len).training * scale
        return budget / per_token / (params.active * scale)

    lo, hi = 1e3, 1e10
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if tokens_per_param(mid) > design.tokens_per_param:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def design_grid(design: LadderDesign, shape_fn: ShapeFn | None = None) -> list[GridPoint]:
    """Every (budget, size) point of the ladder, smallest budget first.

    Targets are ``centre x size_ratio^k`` for ``k`` centred on 0; tiny shapes are discrete, so a target that
    lands on the same (or a smaller) family member as the previous one is pushed up until it gives a new one.
    """
    design.validate()
    shape = shape_fn or design_shape(design)
    points: list[GridPoint] = []
    for budget in sorted(design.budgets):
        centre = centre_size(design, budget)
        previous = 0
        for k in range(design.sizes):
            target = centre * design.size_ratio ** (k - (design.sizes - 1) / 2)
            while fit_params(family_spec(target, design)) <= previous:
                target *= 1.05
            n = fit_params(family_spec(target, design))
            spec = shape(n, design.vocab_size, design.seq_len, design.dim_multiple)
            previous = fit_params(spec)
            points.append(point_for(design, spec, budget))
    return points


def edge_extensions(
    design: LadderDesign, finished: list[tuple[float, int, float]], shape_fn: ShapeFn | None = None
) -> list[GridPoint]:
    """Extra sizes for budgets whose lowest loss sits at the smallest or largest size tried.

    ``finished`` holds ``(budget, non-embedding N, validation loss)`` of finished runs. A budget whose best run is
    at an edge gets one more size a ``size_ratio`` step beyond that edge, so its parabola has an interior
    minimum (Hoffmann et al. 2022 chose their IsoFLOP ranges around the minima the same way). The rule uses
    ladder losses only, never the held-out run.
    """
    shape = shape_fn or design_shape(design)
    extra: list[GridPoint] = []
    for budget in sorted({b for b, _, _ in finished}):
        runs = sorted((n, loss) for b, n, loss in finished if b == budget)
        if len(runs) < 3:
            continue
        best = min(range(len(runs)), key=lambda i: runs[i][1])
        if 0 < best < len(runs) - 1:
            continue
        target = runs[0][0] / design.size_ratio if best == 0 else runs[-1][0] * design.size_ratio
        spec = shape(int(target), design.vocab_size, design.seq_len, design.dim_multiple)
        n_new = fit_params(spec)
        if (best == 0 and n_new < runs[0][0]) or (best > 0 and n_new > runs[-1][0]):
            extra.append(point_for(design, spec, budget))
    return extra


def heldout_budget(design: LadderDesign) -> float:
    """The verification run's compute: ``heldout_factor`` x the largest ladder budget."""
    return design.heldout_factor * max(design.budgets)
