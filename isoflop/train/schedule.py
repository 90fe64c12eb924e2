"""Learning-rate schedules with linear warmup: cosine and warmup-stable-decay (WSD).

* Cosine (Loshchilov & Hutter 2017, SGDR Eq. 5, without restarts): after warmup,
  ``lr(t) = lr_min + (lr_max - lr_min) (1 + cos(pi p)) / 2`` with ``p`` the fraction of the
  post-warmup steps done; ``lr_min = min_lr_ratio * lr_max``.
* WSD (Hu et al. 2024, MiniCPM Sec. 4; Hagele et al. 2024): warmup, a constant ``lr_max`` phase,
  then a linear decay to ``lr_min`` over the last ``decay_fraction`` of the steps.

Warmup is linear from ``lr_max / warmup`` to ``lr_max`` (Goyal et al. 2017). The schedule is a pure
function of the step, so a checkpoint only needs the step to restore it.
"""

from __future__ import annotations

import math

from isoflop.errors import IsoflopError

#: Default warmup when the config leaves it null: 10% of the steps, at most this many.
DEFAULT_WARMUP_CAP = 1000


def default_warmup(total_steps: int) -> int:
    """10% of the run, capped at ``DEFAULT_WARMUP_CAP`` steps (at least 1 for runs of 10+ steps)."""
    return min(DEFAULT_WARMUP_CAP, total_steps // 10)


def lr_at(
    step: int,
    total_steps: int,
    lr: float,
    warmup_steps: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer update number ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise IsoflopError(f"total steps must be positive, got {total_steps}")
    if schedule not in ("cosine", "wsd"):
        raise IsoflopError(f"unknown schedule {schedule!r}; use cosine or wsd")
    lr_min = lr * min_lr_ratio
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return lr
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        return lr + (lr_min - lr) * progress
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))  # cosine
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
