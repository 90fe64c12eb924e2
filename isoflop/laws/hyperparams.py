"""Hyperparameter recommendations from published laws; every number names the law that produced it.

* ``step`` (default): the Step Law of Li et al. 2025 ("Predictable Scale: Part I - Optimal Hyperparameter Scaling
  Law in Large Language Model Pretraining", Eq. 6-7): peak learning rate ``eta = 1.79 N^-0.713 D^0.307`` and batch
  size ``B = 0.58 D^0.571`` tokens (N non-embedding parameters, D training tokens).
* ``deepseek``: DeepSeek LLM (Bi et al. 2024, Eq. 1): ``eta = 0.3118 C^-0.1250`` and ``B = 0.2920 C^0.3271``
  tokens, with compute ``C`` (here ``6 N D``).
* Warmup: ``N`` tokens (one token per parameter), following Porian et al. 2024 ("Resolving Discrepancies in
  Compute-Optimal Scaling of Language Models", Sec. 3.3), capped at 10% of the steps.
* Schedule: ``cosine`` decaying to 10% of the peak over the whole run (Hoffmann et al. 2022, Sec. 3 and App. B),
  or ``wsd``, warmup-stable-decay with the last 20% of steps decaying (Hägele et al. 2024, "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations", Sec. 3).
"""

from __future__ import annotations

import math
from typing import Any

from isoflop.errors import IsoflopError

STEP_LAW = "Step Law, Li et al. 2025 (Eq. 6-7): lr = 1.79 N^-0.713 D^0.307, batch = 0.58 D^0.571 tokens"
DEEPSEEK_LAW = "DeepSeek LLM, Bi et al. 2024 (Eq. 1): lr = 0.3118 C^-0.125, batch = 0.2920 C^0.3271 tokens"
WARMUP_RULE = "Porian et al. 2024 (Sec. 3.3): warmup for N tokens, capped at 10% of the steps"
SCHEDULES = {
    "cosine": "Hoffmann et al. 2022: cosine decay to 10% of the peak over the run",
    "wsd": "Hägele et al. 2024: warmup-stable-decay, last 20% of the steps decay to 10% of the peak",
}


def recommend(
    n_params: float, tokens: float, *, seq_len: int | None = None, law: str = "step", schedule: str = "cosine",
) -> dict[str, Any]:
    """Peak learning rate, batch size (tokens, and sequences when ``seq_len`` is given), warmup and schedule."""
    for value, name in ((n_params, "N"), (tokens, "D")):
        if not (math.isfinite(value) and value > 0):
            raise IsoflopError(f"{name} must be a positive finite number, got {value!r}")
    if schedule not in SCHEDULES:
        raise IsoflopError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    if law == "step":
        lr = 1.79 * n_params**-0.713 * tokens**0.307
        batch_tokens = 0.58 * tokens**0.571
        source = STEP_LAW
    elif law == "deepseek":
        flops = 6.0 * n_params * tokens
        lr = 0.3118 * flops**-0.125
        batch_tokens = 0.2920 * flops**0.3271
        source = DEEPSEEK_LAW
    else:
        raise IsoflopError(f"unknown hyperparameter law {law!r}; use step or deepseek")
    out: dict[str, Any] = {
        "lr": lr, "batch_tokens": batch_tokens, "schedule": schedule, "min_lr_ratio": 0.1,
        "decay_fraction": 0.2 if schedule == "wsd" else None,
        "laws": {"lr": source, "batch_tokens": source, "warmup": WARMUP_RULE, "schedule": SCHEDULES[schedule]},
    }
    if seq_len is not None:
        if seq_len <= 0:
            raise IsoflopError(f"seq_len must be a positive integer, got {seq_len}")
        global_batch = max(1, round(batch_tokens / seq_len))
        steps = max(1, math.ceil(tokens / (global_batch * seq_len)))
        out.update({
            "global_batch": global_batch, "steps": steps,
            "warmup_steps": max(1, min(math.ceil(n_params / (global_batch * seq_len)), steps // 10 or 1)),
        })
    return out
