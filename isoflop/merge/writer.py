"""Streaming safetensors output: every output shape and dtype is known before the first tensor is merged, so each
shard's header is written first and tensors are appended one at a time as they are computed; peak memory is one
tensor, whatever the shard size. Shards are named as ``save_pretrained`` names them, with the same index file."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from isoflop.merge.sources import ST_DTYPES

DTYPE_CODES = {dtype: code for code, dtype in ST_DTYPES.items()}


@dataclass(frozen=True)
class Planned:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(tensors: list[Planned], max_shard_bytes: int) -> list[list[Planned]]:
    """Consecutive groups of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class ShardWriter:
    """Writes the planned shards under ``folder`` in order; ``write`` must be called in plan order."""

    def __init__(self, folder: Path, shards: list[list[Planned]]) -> None:
        self.folder = folder
        self.shards = shards
        self.names = shard_names(len(shards))
        self._queue = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._pos = 0
        self._shard = -1
        self._handle: BinaryIO | None = None

    def _open(self, index: int) -> None:
        self._close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in self.shards[index]:
            header[t.name] = {
                "dtype": DTYPE_CODES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._handle = open(self.folder / self.names[index], "wb")  # noqa: SIM115 (closed in _close)
        self._handle.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = index

    def write(self, name: str, tensor: torch.Tensor) -> None:
        index, planned = self._queue[self._pos]
        assert planned.name == name and tuple(tensor.shape) == planned.shape and tensor.dtype == planned.dtype
        if index != self._shard:
            self._open(index)
        assert self._handle is not None
        data = tensor.detach().contiguous().cpu().reshape(-1)
        if data.numel():
            self._handle.write(data.view(torch.uint8).numpy().tobytes())
        self._pos += 1

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """Close the last shard and write ``model.safetensors.index.json`` when there are several."""
        assert self._pos == len(self._queue), "not every planned tensor was written"
        self._close()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for shard in self.shards for t in shard)},
                "weight_map": {t.name: self.names[i] for i, shard in enumerate(self.shards) for t in shard},
            }
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
