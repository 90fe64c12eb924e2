"""Measured peak tensor memory of a CPU training step: every live storage, counted once.

A ``TorchDispatchMode`` sees the output of every ATen op (forward, backward and optimizer alike, since the
autograd engine carries the mode to its threads); each new storage is added with its ``nbytes`` and subtracted
when Python's weak reference to it dies. Tensors that exist before the step (weights, quantisation constants,
optimizer states) are registered up front. This is the CPU counterpart of ``torch.cuda.max_memory_allocated``
without allocator rounding, and the same bookkeeping as PyTorch's ``MemTracker``, which cannot hook frozen
parameters.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorBytes(TorchDispatchMode):
    """Live and peak bytes of distinct storages, from ``track(...)`` plus everything created inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def track(self, tensors: Iterable[Any]) -> None:
        for leaf in tree_leaves(list(tensors)):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or (key in self._seen and self._seen[key]() is not None):
            return
        size = storage.nbytes()

        def release(_ref: weakref.ref, key: int = key, size: int = size) -> None:
            self.live -= size
            self._seen.pop(key, None)

        self._seen[key] = weakref.ref(storage, release)
        self.live += size
        self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (TorchDispatchMode's API)
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out
