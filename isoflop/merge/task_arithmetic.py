"""Task arithmetic (Ilharco et al. 2023, Eq. 1): ``theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)``,
the frame that TIES and DARE fill in: task vectors are optionally sparsified (TIES trim or DARE drop), optionally
sign-elected (TIES), weighted, summed, optionally divided by the weights that contributed (``normalize``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from isoflop.merge.ties import elect

Sparsify = Callable[[torch.Tensor, int], torch.Tensor]  # (task vector, model index) -> sparse task vector


def task_arithmetic(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    lam: float,
    normalize: bool,
    sparsify: Sparsify | None = None,
    consensus: bool = False,
) -> torch.Tensor:
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(dtype)
    deltas = torch.stack(
        [(t.to(dtype) - b) if sparsify is None else sparsify(t.to(dtype) - b, i) for i, t in enumerate(tensors)]
    )
    w = torch.tensor(weights, dtype=dtype).reshape(-1, *([1] * base.ndim))
    deltas.mul_(w)
    if consensus:
        agree = elect(deltas).to(dtype)
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return b + lam * mixed
