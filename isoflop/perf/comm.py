"""Communication volume of one optimizer step, per GPU and per process group (``estimate --json``'s ``comm_bytes``).

Volumes are *message bytes*: the full buffer a collective reduces or gathers (what NCCL-tests call the size;
a ring moves ``2 (g-1)/g`` of it per GPU for an all-reduce, ``(g-1)/g`` for an all-gather or reduce-scatter,
Thakur et al. 2005, which ``isoflop.perf.steptime`` charges), and the bytes each point-to-point send or receive
moves. With ``T`` tokens per microbatch (``micro_batch * seq_len / cp``), ``m`` microbatches and ``x = T h``
activation elements:

* tensor parallel (Shoeybi et al. 2019, Sec. 3; Korthikanti et al. 2022, Sec. 4.2.2): 4 all-reduces of ``x`` per
  layer and microbatch (2 forward, 2 backward; 6 with full recomputation), one all-gather plus one
  reduce-scatter each under sequence parallelism; the vocabulary-parallel embedding (output reduced) and output
  head (input gradient reduced) add one more each on the first and last stage; the vocabulary-parallel
  cross-entropy all-reduces 3 fp32 values per token (the max logit, the target logit, the sum of exponentials;
  Megatron-LM's ``_VocabParallelCrossEntropy``, torch's ``loss_parallel``); under sequence parallelism the
  norm weights' gradients are all-reduced once per step (Korthikanti et al. 2022, Sec. 4.2.2).
* pipeline parallel (Narayanan et al. 2021, Sec. 2.2): each virtual stage sends its output activations forward
  and its input gradients backward, ``x / t`` under sequence parallelism, once per microbatch.
* data parallel, once per step for the gradients (accumulated locally over the microbatches, as DDP's
  ``no_sync`` and FSDP2's ``set_requires_gradient_sync(False)``): ZeRO-0 all-reduces them; ZeRO-1/2/3
  reduce-scatter them (Rajbhandari et al. 2020, Sec. 5). ZeRO-1 all-gathers the updated weights once per step;
  FSDP2's ZeRO-2 (``reshard_after_forward=False``) all-gathers the weights once per microbatch, ZeRO-3 twice
  (forward and backward). Under pipeline parallelism torch's ``PipelineStage`` keeps them gathered after every
  backward but the last (``set_reshard_after_backward(False)``): ZeRO-3 gathers ``m + 1`` times a step with
  1F1B or GPipe (each forward but those that follow a backward, and each backward that follows a forward),
  ZeRO-2 once. Under HSDP the shard group is ``dp cp / replicate`` and the reduced shards are then
  all-reduced over the replicas.
* context parallel (ring attention, Liu et al. 2023): each layer passes the local K and V around the ring
  ``cp - 1`` times forward and K, V and their gradients backward (3 x), per microbatch, sent and received.
* expert parallel (Lepikhin et al. 2021): 4 all-to-alls of the ``top_k`` routed tokens per MoE layer and
  microbatch (dispatch and combine, forward and backward).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from isoflop.perf.constants import PerfConstants
from isoflop.perf.layout import Layout, rank_layers
from isoflop.perf.memory import precision
from isoflop.spec.accounting import _attention_params, _mlp_params, _norm_params
from isoflop.spec.model import ModelSpec

LOSS_PARALLEL_REDUCTIONS = 3  # max logit, target logit, sum of exponentials: fp32 per token


@dataclass(frozen=True)
class Collectives:
    """Message bytes per GPU per optimizer step in one process group, by collective kind."""

    all_reduce: float = 0.0
    all_gather: float = 0.0
    reduce_scatter: float = 0.0
    send: float = 0.0
    recv: float = 0.0
    all_to_all: float = 0.0

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class CommBytes:
    """Per process group: tensor, pipeline, data, context and expert parallel."""

    tp: Collectives = Collectives()
    pp: Collectives = Collectives()
    dp: Collectives = Collectives()
    cp: Collectives = Collectives()
    ep: Collectives = Collectives()

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {name: getattr(self, name).to_dict() for name in ("tp", "pp", "dp", "cp", "ep")}


def _rank_params(spec: ModelSpec, lay: Layout, rank: int) -> tuple[float, float]:
    """(dense, expert) parameters held by pipeline rank ``rank`` per tensor/expert shard (before ZeRO)."""
    tp, d, V = lay.tp, spec.d_model, spec.vocab_size
    one_mlp = _mlp_params(spec)
    router = d * spec.n_experts if spec.is_moe else 0
    dense_mlp = spec.n_shared_experts * one_mlp if spec.is_moe else one_mlp
    layer = (_attention_params(spec) + dense_mlp) / tp + 2 * _norm_params(spec) + router
    layers = rank_layers(spec.n_layers, lay.pp, lay.interleave)[rank]
    dense = layers * layer
    if rank == 0:
        dense += (V * d + (spec.max_seq_len * d if spec.position == "learned" else 0)) / tp
    if rank == lay.pp - 1:
        dense += _norm_params(spec) + (0 if spec.tie_embeddings and lay.pp == 1 else V * d / tp)
    expert = layers * spec.n_experts * one_mlp / (tp * lay.ep) if spec.is_moe else 0.0
    return dense, expert


def rank_comm_bytes(
    spec: ModelSpec, lay: Layout, global_batch: int, seq_len: int, const: PerfConstants, rank: int
) -> CommBytes:
    """Message bytes of pipeline rank ``rank`` (0 = the first stage) for one optimizer step (module docstring)."""
    prec = precision(spec, lay.dtype, lay.optimizer, const)
    act, h = prec.act, spec.d_model
    m = global_batch // (lay.dp * lay.micro_batch)
    T = lay.micro_batch * seq_len / lay.cp
    x = T * h * act
    first, last = rank == 0, rank == lay.pp - 1
    n_virtual = lay.pp * lay.interleave
    layers = rank_layers(spec.n_layers, lay.pp, lay.interleave)[rank]
    moe_layers = layers if spec.is_moe else 0

    tp = Collectives()
    if lay.tp > 1:
        per_mb = (4 + (2 if lay.recompute == "full" else 0)) * layers + first + last
        reduce = m * per_mb * x
        loss = m * LOSS_PARALLEL_REDUCTIONS * T * 4.0 if last else 0.0
        if lay.sequence_parallel:
            norms = (2 * layers + last) * _norm_params(spec) * prec.grad
            tp = Collectives(all_reduce=loss + norms, all_gather=reduce, reduce_scatter=reduce)
        else:
            tp = Collectives(all_reduce=loss + reduce)

    pp = Collectives()
    if lay.pp > 1:
        msg = x / (lay.tp if lay.sequence_parallel else 1)
        stages = range(rank, n_virtual, lay.pp)
        hops = sum((s > 0) + (s < n_virtual - 1) for s in stages)
        pp = Collectives(send=m * hops * msg, recv=m * hops * msg)

    dp = Collectives()
    group = lay.dp * lay.cp
    if group > 1:
        dense, expert = _rank_params(spec, lay, rank)
        params = dense + expert
        grads, weights = params * prec.grad, params * prec.weight
        if lay.zero == 0:
            dp = Collectives(all_reduce=grads)
        else:
            piped = lay.pp > 1  # the pipeline keeps the weights gathered from one backward to the next
            gathers = {1: 1, 2: 1 if piped else m, 3: m + 1 if piped else 2 * m}[lay.zero]
            hsdp = grads / (group / lay.replicate) if lay.replicate > 1 else 0.0
            dp = Collectives(all_reduce=hsdp, all_gather=gathers * weights, reduce_scatter=grads)

    cp = Collectives()
    if lay.cp > 1:
        kv_local = max(spec.n_kv_heads / lay.tp, 1.0) * spec.head_dim
        ring = m * layers * 3 * (lay.cp - 1) * T * 2 * kv_local * act
        cp = Collectives(send=ring, recv=ring)

    ep = Collectives()
    if lay.ep > 1 and spec.is_moe:
        ep = Collectives(all_to_all=m * moe_layers * 4 * T * spec.top_k * h * act)
    return CommBytes(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep)


def comm_bytes(spec: ModelSpec, lay: Layout, global_batch: int, seq_len: int, const: PerfConstants) -> CommBytes:
    """The busiest pipeline rank's message bytes per group (the largest over ranks, group by group)."""
    ranks = [rank_comm_bytes(spec, lay, global_batch, seq_len, const, r) for r in range(lay.pp)]
    names = ("tp", "pp", "dp", "cp", "ep")
    return CommBytes(**{name: max((getattr(r, name) for r in ranks), key=lambda c: c.total) for name in names})
