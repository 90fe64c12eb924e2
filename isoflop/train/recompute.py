"""Activation recomputation as the performance model names it (``isoflop.perf.layout.Recompute``).

* ``selective``: the attention core (softmax(Q K^T) V, the SDPA call) of each block is recomputed in the backward
  (Korthikanti et al. 2022, Sec. 4.2); ``Attention.recompute_core`` switches it on.
* ``op``: torchtitan's op-level selective checkpointing; each block runs under ``torch.utils.checkpoint`` with
  ``create_selective_checkpoint_contexts`` and the policy of ``isoflop.perf.sac`` (save the attention kernel's
  output and every odd matmul's, recompute the rest).
* ``full``: each block is recomputed from its input (Chen et al. 2016).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from isoflop.perf.sac import SAVED_KERNELS, saves_matmul

_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)  # addmm: a matmul with a bias (GPT-2)
_SAVED = tuple(getattr(torch.ops.aten, name).default for name in SAVED_KERNELS if hasattr(torch.ops.aten, name))


def op_sac_context() -> tuple[Any, Any]:
    """The (forward, recompute) contexts of one checkpointed block under torchtitan's op-level policy: matmuls are
    counted per pass in forward order and ``isoflop.perf.sac.saves_matmul`` decides which outputs are kept."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    counts = {False: 0, True: 0}  # matmuls seen in the forward and in the recompute

    def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if func in _MATMULS:
            counts[ctx.is_recompute] += 1
            keep = saves_matmul(counts[ctx.is_recompute])
        else:
            keep = func in _SAVED
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _wrap(block: nn.Module, context_fn: Callable[[], tuple[Any, Any]] | None) -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    if context_fn is None:
        return checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, context_fn=context_fn)


def apply_recompute(blocks: nn.ModuleList, policy: str) -> None:
    """Apply recompute ``policy`` (none, selective, op, full) to the transformer ``blocks`` in place."""
    if policy == "selective":
        for block in blocks:
            block.attn.recompute_core = True
    elif policy in ("op", "full"):
        for i, block in enumerate(blocks):
            blocks[i] = _wrap(block, op_sac_context if policy == "op" else None)
