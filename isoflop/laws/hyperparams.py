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

# Step Law (Li et al. 2025, Eq. 6-7): lr = LR_K N^LR_N D^LR_D, batch = BATCH_K D^BATCH_D tokens.
STEP = {"lr_k": 1.79, "lr_n": -0.713, "lr_d": 0.307, "batch_k": 0.58, "batch_d": 0.571}
# DeepSeek LLM (Bi et al. 2024, Eq. 1): lr = lr_k C^lr_c, batch = batch_k C^batch_c tokens.
DEEPSEEK = {"lr_k": 0.3118, "lr_c": -0.125, "batch_k": 0.2920, "batch_c": 0.3271}
STEP_LAW = (
    f"Step Law, Li et al. 2025 (Eq. 6-7): lr = {STEP['lr_k']:g} N^{STEP['lr_n']:g} D^{STEP['lr_d']:g}, "
    f"batch = {STEP['batch_k']:g} D^{STEP['batch_d']:g} tokens"
)
DEEPSEEK_LAW = (
    f"DeepSeek LLM, Bi et al. 2024 (Eq. 1): lr = {DEEPSEEK['lr_k']:g} C^{DEEPSEEK['lr_c']:g}, "
    f"batch = {DEEPSEEK['batch_k']:.4f} C^{DEEPSEEK['batch_c']:g} tokens"
)
WARMUP_RULE = "Porian et al. 2024 (Sec. 3.3): warmup for N tokens, capped at 10% of the steps"
SCHEDULES = {
    "cosine": "Hoffmann et al. 2022: cosine decay to 10% of the peak over the run",
    "wsd": "Hägele et al. 2024: warmup-stable-decay, last 20% of the steps decay to 10% of the peak",
}


def warmup_steps(n_params: float, batch_tokens: int, steps: int) -> int:
    """Warmup for ``n_params`` tokens, capped at 10% of ``steps``, at least one step (``WARMUP_RULE``)."""
    return max(1, min(math.ceil(n_params / batch_tokens), steps // 10 or 1))


def recommend(
    n_params: float,
    tokens: float,
    *,
    seq_len: int | None = None,
    law: str = "step",
    schedule: str = "cosine",
) -> dict[str, Any]:
    """Peak learning rate, batch size (tokens, and sequences when ``seq_len`` is given), warmup and schedule."""
    for value, name in ((n_params, "N"), (tokens, "D")):
        if not (math.isfinite(value) and value > 0):
            raise IsoflopError(f"{name} must be a positive finite number, got {value!r}")
    if schedule not in SCHEDULES:
        raise IsoflopError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    if law == "step":
        lr = STEP["lr_k"] * n_params ** STEP["lr_n"] * tokens ** STEP["lr_d"]
        batch_tokens = STEP["batch_k"] * tokens ** STEP["batch_d"]
        source = STEP_LAW
    elif law == "deepseek":
        flops = 6.0 * n_params * tokens
        lr = DEEPSEEK["lr_k"] * flops ** DEEPSEEK["lr_c"]
        batch_tokens = DEEPSEEK["batch_k"] * flops ** DEEPSEEK["batch_c"]
        source = DEEPSEEK_LAW
    else:
        raise IsoflopError(f"unknown hyperparameter law {law!r}; use step or deepseek")
    out: dict[str, Any] = {
        "lr": lr,
        "batch_tokens": batch_tokens,
        "schedule": schedule,
        "min_lr_ratio": 0.1,
        "decay_fraction": 0.2 if schedule == "wsd" else None,
        "laws": {"lr": source, "batch_tokens": source, "warmup": WARMUP_RULE, "schedule": SCHEDULES[schedule]},
    }
    if seq_len is not None:
        if seq_len <= 0:
            raise IsoflopError(f"seq_len must be a positive integer, got {seq_len}")
        global_batch = max(1, round(batch_tokens / seq_len))
        steps = max(1, math.ceil(tokens / (global_batch * seq_len)))
        out.update(
            {
                "global_batch": global_batch,
                "steps": steps,
                "warmup_steps": warmup_steps(n_params, global_batch * seq_len, steps),
            }
        )
    return out
