"""DARE, Drop And REscale (Yu et al. 2024, Eq. 2): drop each task-vector entry with probability ``1 - density``,
then rescale what is left. mergekit 0.1.5 (which we match) rescales to the original L1 norm, which equals the
paper's ``1 / density`` factor in expectation; either way ``E[dare(delta)] ~= delta``."""

from __future__ import annotations

import torch

EPS = 1e-7


def drop_and_rescale(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return delta
    work = delta.to(torch.float32) if delta.dtype in (torch.float16,) else delta
    keep = torch.bernoulli(torch.full_like(work, density, dtype=torch.float32), generator=generator).to(work.dtype)
    kept = work * keep
    if rescale:
        before, after = work.abs().sum(), kept.abs().sum()
        if before >= EPS and after >= EPS:
            kept = kept * (before / after)
    return kept.to(delta.dtype)
