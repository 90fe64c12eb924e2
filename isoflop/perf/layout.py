"""Parallel layouts: the ``Layout`` knobs, their validation, and the array form the model evaluates.

Rank placement follows Megatron-LM's order (Narayanan et al. 2021, Sec. 3): tensor parallel innermost
(inside a node), then context parallel, then data parallel, then pipeline parallel outermost. Expert
parallelism is carved out of the data x context group (Megatron-Core MoE), so ``tp*pp*dp*cp = n_gpus``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec

# Upper limits on counts: far beyond any real run (the largest clusters hold ~1e5 GPUs), low enough that no
# product of them overflows int64 or a float's exact integers.
MAX_COUNT = {"gpus": 2**24, "global_batch": 2**30, "batch_size": 2**30, "seq_len": 2**24}
DEFAULT_MAX_COUNT = 2**24


def check_counts(**values: int | None) -> None:
    """Refuse a count flag below 1 or above its ``MAX_COUNT`` (one line naming the flag)."""
    for name, value in values.items():
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if value < 1:
            raise IsoflopError(f"{flag} must be a positive integer, got {value}")
        limit = MAX_COUNT.get(name, DEFAULT_MAX_COUNT)
        if value > limit:
            raise IsoflopError(f"{flag} {value:.3g} is beyond any real run; use at most {limit:,}")


class _Choice(StrEnum):
    """A string enumeration that hashes as its value, so ``Layout(recompute="op")`` and
    ``Layout(recompute=Recompute.OP)`` are one dictionary key."""

    __hash__ = str.__hash__


class Recompute(_Choice):
    """Activation recomputation policies; the order is the integer code of ``LayoutArrays.recompute``."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"
    OP = "op"


class Precision(_Choice):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    AMP = "amp"


class Optimizer(_Choice):
    ADAMW = "adamw"
    SGD = "sgd"
    ADAFACTOR = "adafactor"
    ADAM8BIT = "adam8bit"


RECOMPUTE: tuple[str, ...] = tuple(r.value for r in Recompute)
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in Optimizer)


@dataclass(frozen=True)
class Layout:
    """One way to spread a training step over GPUs.

    ``zero``: 0 = plain data parallel (DDP), 1 = optimizer states sharded, 2 = + gradients, 3 = + weights
    (Rajbhandari et al. 2020; FSDP NO_SHARD / SHARD_GRAD_OP / FULL_SHARD). ``replicate`` > 1 with ZeRO-3 is
    HSDP: shards within groups of ``dp*cp/replicate`` GPUs, replicated across ``replicate`` groups.
    ``interleave`` is the number of virtual pipeline stages per GPU (Narayanan et al. 2021, Sec. 2.2.2); it
    must divide the layers of the fullest stage, ``ceil(n_layers / pp)`` (``pp`` need not divide the layers).
    ``recompute``: ``selective`` recomputes the attention core (Korthikanti et al. 2022, Sec. 5); ``op`` is
    torchtitan's per-op selective checkpointing (saves every other matmul output and the attention output,
    recomputes the rest); ``full`` recomputes each layer from its input.
    ``offload`` moves the optimizer states (fp32 master, moments) to the CPU (ZeRO-Offload, Ren et al. 2021).
    ``dtype``: ``bf16``/``fp16`` = low-precision weights and gradients with fp32 master weights (ZeRO's
    recipe); ``fp8`` = bf16 plus fp8 weight copies and fp8 GEMMs; ``amp`` = ``torch.autocast`` to bf16 over
    fp32 weights (PyTorch's default recipe); ``fp32`` = no mixed precision.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    zero: Literal[0, 1, 2, 3] = 0
    recompute: Recompute = Recompute.NONE
    sequence_parallel: bool = False
    micro_batch: int = 1
    interleave: int = 1
    offload: bool = False
    dtype: Precision = Precision.BF16
    optimizer: Optimizer = Optimizer.ADAMW
    replicate: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The knobs as plain values (enumeration members as their strings, for JSON and YAML)."""
        return {k: v.value if isinstance(v, StrEnum) else v for k, v in asdict(self).items()}

    def replace(self, **changes: Any) -> Layout:
        return Layout(**{**asdict(self), **changes})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# The layout knobs the model evaluates as arrays: every ``Layout`` field but the step-wide dtype and optimizer
# (listed once, here; ``LayoutArrays`` and the search's candidate columns follow this order).
KNOBS: tuple[str, ...] = tuple(f.name for f in fields(Layout) if f.name not in ("dtype", "optimizer"))
_FLAGS = ("sequence_parallel", "offload")


def peak_dtype(dtype: str) -> str:
    """The dtype whose tensor-core peak the GEMMs run at (``amp`` computes in bf16)."""
    return "bf16" if dtype == "amp" else dtype


def microbatches(layout: Layout, global_batch: int) -> int:
    """Microbatches per pipeline per step, ``m = B / (dp * micro_batch)``."""
    return global_batch // (layout.dp * layout.micro_batch)


def stage_layers(n_layers: int | np.ndarray, pp: int | np.ndarray) -> np.ndarray:
    """Layers on the fullest pipeline stage, ``ceil(n_layers / pp)``: stages need not be equal (BLOOM's 70
    layers on 12 stages; Llama 3 405B's 126 on 16, Dubey et al. 2024, Sec. 3.3.2)."""
    return -(-np.asarray(n_layers) // np.asarray(pp))


def stage_split(n_layers: int, stages: int) -> tuple[int, ...]:
    """Transformer blocks on each pipeline stage (virtual stages when interleaved), in stage order: the split
    the trainer cuts (``isoflop.train.parallel.pipeline``); its largest entry is ``stage_layers``.

    As even as possible; when ``stages`` does not divide ``n_layers`` the extra blocks go to the middle
    stages, so the first (embedding) and last (output head, loss) stages carry fewer, as Llama 3 did with
    126 layers over 16 stages (Dubey et al. 2024, Sec. 3.3.2).
    """
    if not 1 <= stages <= n_layers:
        raise IsoflopError(f"{stages} pipeline stages cannot split {n_layers} layers; use 1 to {n_layers} stages")
    base, extra = divmod(n_layers, stages)
    # stages nearest the middle first; ties go to the later stage
    order = sorted(range(stages), key=lambda i: (abs(2 * i - (stages - 1)), -i))
    bigger = set(order[:extra])
    return tuple(base + (i in bigger) for i in range(stages))


def rank_layers(n_layers: int, pp: int, interleave: int = 1) -> tuple[int, ...]:
    """Blocks held by each pipeline rank: virtual stage ``s`` of ``pp * interleave`` runs on rank ``s % pp``
    (the looped placement of Narayanan et al. 2021, Sec. 2.2.2)."""
    per_stage = stage_split(n_layers, pp * interleave)
    return tuple(sum(per_stage[r::pp]) for r in range(pp))


def hsdp_ok(replicate, zero, dpc):
    """The HSDP rule, for scalars or arrays (``validate`` and the search's filter both use it): ``replicate``
    > 1 needs ZeRO-3 and must divide the data x context group (``dpc = dp * cp``) into equal shard groups."""
    return (replicate == 1) | ((zero == 3) & (dpc % replicate == 0))


# The layout rules, each for scalars or arrays: ``validate`` raises on the first one a layout breaks, and the
# search's vectorised candidate filter (``isoflop.perf.search.candidates``) keeps the layouts that pass them all.


def tp_ok(tp, n_heads: int, n_kv_heads: int):
    """Tensor parallelism splits the query heads, and splits or replicates the KV heads."""
    return (n_heads % tp == 0) & ((n_kv_heads % tp == 0) | (tp % n_kv_heads == 0))


def interleave_ok(interleave, pp, n_layers: int):
    """Interleaving needs a pipeline and must divide the fullest stage's ``ceil(n_layers / pp)`` layers."""
    return (interleave == 1) | ((pp > 1) & (stage_layers(n_layers, pp) % interleave == 0))


def ep_ok(ep, dpc, n_experts: int):
    """Expert parallelism divides the experts and the data x context group (``dpc``); dense models use 1."""
    return (ep == 1) | ((n_experts > 0) & (n_experts % ep == 0) & (dpc % ep == 0))


def sp_ok(sequence_parallel, tp):
    """Sequence parallelism shards along the tensor-parallel group, so it needs ``tp > 1``."""
    return ~np.asarray(sequence_parallel, dtype=bool) | (tp > 1)


def batch_ok(global_batch: int, dp, micro_batch):
    """The global batch splits into whole microbatches on every data-parallel rank."""
    return global_batch % (dp * micro_batch) == 0


def validate(layout: Layout, spec: ModelSpec, n_gpus: int, global_batch: int, seq_len: int) -> None:
    """Raise ``IsoflopError`` naming the first violated constraint of ``layout``."""
    lay = layout
    for name in ("tp", "pp", "dp", "cp", "ep", "micro_batch", "interleave", "replicate"):
        if not isinstance(getattr(lay, name), (int, np.integer)) or getattr(lay, name) < 1:
            raise IsoflopError(f"{name} must be a positive integer, got {getattr(lay, name)!r}")
    check_counts(gpus=n_gpus, global_batch=global_batch, seq_len=seq_len)
    if lay.zero not in (0, 1, 2, 3):
        raise IsoflopError(f"zero must be 0, 1, 2 or 3, got {lay.zero!r}")
    if lay.recompute not in RECOMPUTE:
        raise IsoflopError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {lay.recompute!r}")
    if lay.dtype not in PRECISIONS:
        raise IsoflopError(f"dtype must be one of {', '.join(PRECISIONS)}, got {lay.dtype!r}")
    if lay.optimizer not in OPTIMIZERS:
        raise IsoflopError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {lay.optimizer!r}")
    product = lay.tp * lay.pp * lay.dp * lay.cp
    if product != n_gpus:
        raise IsoflopError(
            f"tp*pp*dp*cp = {lay.tp}*{lay.pp}*{lay.dp}*{lay.cp} = {product} must equal the GPU count {n_gpus}; "
            "change a degree (or leave --dp out to derive it)"
        )
    if spec.n_heads % lay.tp:
        raise IsoflopError(f"tp={lay.tp} does not divide n_heads={spec.n_heads}; use a divisor of the head count")
    if not tp_ok(lay.tp, spec.n_heads, spec.n_kv_heads):
        raise IsoflopError(
            f"tp={lay.tp} and n_kv_heads={spec.n_kv_heads} must divide one another (KV heads are split or replicated)"
        )
    if lay.pp > spec.n_layers:
        raise IsoflopError(f"pp={lay.pp} exceeds n_layers={spec.n_layers}; use at most one pipeline stage per layer")
    per_stage = int(stage_layers(spec.n_layers, lay.pp))
    if not interleave_ok(lay.interleave, lay.pp, spec.n_layers):
        raise IsoflopError(
            f"interleave={lay.interleave} does not divide the {per_stage} layers per pipeline stage "
            f"(n_layers={spec.n_layers}, pp={lay.pp}); use pp > 1 and an interleave that divides {per_stage}"
        )
    if seq_len % lay.cp:
        raise IsoflopError(f"cp={lay.cp} does not divide seq_len={seq_len}; use a divisor of the sequence length")
    if lay.ep > 1:
        if not spec.is_moe:
            raise IsoflopError(f"ep={lay.ep} needs a mixture-of-experts model; use ep=1 for dense models")
        if not ep_ok(lay.ep, lay.dp * lay.cp, spec.n_experts):
            raise IsoflopError(f"ep={lay.ep} must divide n_experts={spec.n_experts} and dp*cp={lay.dp * lay.cp}")
    if not sp_ok(lay.sequence_parallel, lay.tp):
        raise IsoflopError("sequence parallel needs tp > 1; drop --sequence-parallel or raise --tp")
    if not hsdp_ok(lay.replicate, lay.zero, lay.dp * lay.cp):
        raise IsoflopError(f"replicate={lay.replicate} (HSDP) needs zero=3 and must divide dp*cp={lay.dp * lay.cp}")
    if not batch_ok(global_batch, lay.dp, lay.micro_batch):
        raise IsoflopError(
            f"global batch {global_batch} is not divisible by dp*micro_batch = {lay.dp}*{lay.micro_batch}; "
            "choose a global batch that is a multiple of it"
        )


@dataclass
class LayoutArrays:
    """Layouts as parallel numpy arrays (one entry per candidate), the form the model evaluates."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    zero: np.ndarray
    recompute: np.ndarray  # 0 none, 1 selective, 2 full, 3 op
    sequence_parallel: np.ndarray
    micro_batch: np.ndarray
    interleave: np.ndarray
    offload: np.ndarray
    replicate: np.ndarray

    def __len__(self) -> int:
        return int(self.tp.shape[0])

    @classmethod
    def from_layouts(cls, layouts: list[Layout]) -> LayoutArrays:
        cols: dict[str, np.ndarray] = {}
        for name in KNOBS:
            values = [getattr(lay, name) for lay in layouts]
            if name == "recompute":
                values = [RECOMPUTE.index(v) for v in values]
            dtype = bool if name in _FLAGS else np.int64
            cols[name] = np.asarray(values, dtype=dtype)
        return cls(**cols)

    def layout(self, i: int, dtype: str, optimizer: str) -> Layout:
        knobs: dict[str, Any] = {k: getattr(self, k)[i] for k in KNOBS}
        knobs = {k: bool(v) if k in _FLAGS else int(v) for k, v in knobs.items()}
        knobs["recompute"] = RECOMPUTE[knobs["recompute"]]
        return Layout(**knobs, dtype=dtype, optimizer=optimizer)  # type: ignore[arg-type]
