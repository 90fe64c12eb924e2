"""TIES-merging (Yadav et al. 2023, Alg. 1): *trim* each task vector to its top-``density`` fraction by magnitude,
*elect* a sign per parameter (the sign of the summed weighted task vectors), and *disjoint-merge*: average only
the entries that agree with the elected sign."""

from __future__ import annotations

import torch


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``max(1, int(density * n))`` largest-magnitude entries (Alg. 1 step 1), zero the rest."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    keep = torch.zeros(delta.numel(), dtype=delta.dtype)
    keep[torch.topk(delta.abs().reshape(-1).float(), k).indices] = 1
    return delta * keep.reshape(delta.shape)


def elect(deltas: torch.Tensor) -> torch.Tensor:
    """Mask of entries whose sign equals the elected sign ``sign(sum_i delta_i)`` (Alg. 1 step 2, zero -> +)."""
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == majority
