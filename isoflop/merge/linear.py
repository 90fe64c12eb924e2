"""Linear merging: a weighted average of the models' weights, the "model soup" of Wortsman et al. 2022 (Eq. 1,
uniform soup when all weights are equal): ``sum_i w_i theta_i / sum_i w_i`` (``normalize``) or ``sum_i w_i theta_i``."""

from __future__ import annotations

import torch


def linear(tensors: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    out = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor, w in zip(tensors, weights):
        out.add_(tensor.to(dtype), alpha=w)
    if normalize:
        out.div_(sum(weights))
    return out
