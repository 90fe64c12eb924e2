"""``Workload``: what is being trained and on what, the arguments every performance-model term shares.

The step-time, memory and estimate functions take one ``Workload`` and the layouts to score (``LayoutArrays``),
instead of the same six arguments threaded through each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from isoflop.hardware import GPU
from isoflop.spec.model import ModelSpec


@dataclass(frozen=True)
class Workload:
    """A model trained on ``n_gpus`` of ``gpu`` with ``global_batch`` sequences of ``seq_len`` tokens per step, in
    ``dtype`` with ``optimizer`` (the layout-independent half of a prediction)."""

    spec: ModelSpec
    gpu: GPU
    n_gpus: int
    global_batch: int
    seq_len: int
    dtype: str = "bf16"
    optimizer: str = "adamw"

    @property
    def tokens(self) -> int:
        """Tokens per optimizer step."""
        return self.global_batch * self.seq_len
