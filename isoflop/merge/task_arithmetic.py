"""Task arithmetic (Ilharco et al. 2023, Eq. 1): ``theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)``,
the frame that TIES and DARE fill in: task vectors are optionally sparsified (TIES trim or DARE drop), optionally
sign-elected (TIES), weighted, summed, optionally divided by the weights that contributed (``normalize``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from isoflop.merge.ties import elect

CHUNK = 1 << 20  # elements per chunk of the elementwise combination
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
    b = base.to(dtype).reshape(-1)
    deltas = []
    for i, t in enumerate(tensors):
        delta = t.to(dtype).reshape(-1) - b
        deltas.append(delta if sparsify is None else sparsify(delta.reshape(base.shape), i).reshape(-1))
    w = torch.tensor(weights, dtype=dtype).reshape(-1, 1)
    out = torch.empty_like(b)
    for lo in range(0, b.numel(), CHUNK):  # elementwise from here: chunks bound the scratch memory
        d = torch.stack([x[lo : lo + CHUNK] for x in deltas]) * w
        if consensus:
            agree = elect(d).to(dtype)
            mixed = (d * agree).sum(dim=0)
            divisor = (w * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = d.sum(dim=0)
            divisor = w.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            mixed = mixed / divisor
        out[lo : lo + CHUNK] = b[lo : lo + CHUNK] + lam * mixed
    return out.reshape(base.shape)
