"""Checkpoints that reshard between layouts, with DCP doing the resharding.

Tensor parallelism splits the fused projections (``attn.qkv`` -> ``q``/``k``/``v``, ``mlp.gate_up`` ->
``gate``/``up``; ``isoflop.train.parallel.tensor``) so that each rank holds whole heads. A checkpoint must not
depend on that: ``fuse_for_checkpoint`` stores each split family under the fused key of ``Transformer``
(``layers.0.attn.qkv.weight``) as one logical ``[q; k; v]`` tensor. A rank contributes its row blocks of each
part at their offsets in the fused tensor (``FusedShards``, DCP's ``_Checkpointable`` protocol: several chunks
per rank, as torchrec's ``LocalShardsWrapper``), so DCP's metadata describes the same logical tensor whatever
the layout and its planner reshards on load (TP2xDP2 <-> DP4 <-> 1 process). Optimizer states of the split
parameters are fused the same way; their ``step`` counters are equal, the first part's is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType
from torch.distributed.tensor import DTensor

from isoflop.train.parallel.tensor import FUSED


class FusedShards(torch.Tensor):
    """This rank's row blocks ``(local tensor, offsets)`` of a fused logical tensor of ``size``; a write/read
    target for DCP only (no tensor operations)."""

    _blocks: list[tuple[Tensor, torch.Size]]

    @staticmethod
    def __new__(cls, size: torch.Size, dtype: torch.dtype, blocks: list[tuple[Tensor, torch.Size]]) -> FusedShards:
        out = torch.Tensor._make_wrapper_subclass(cls, size, dtype=dtype)
        out._blocks = blocks
        return out

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten.detach.default:
            return args[0]
        raise NotImplementedError(f"{func} is not supported on FusedShards (a checkpoint view)")

    def __create_write_items__(self, fqn: str, obj: Any) -> list[WriteItem]:
        return [
            WriteItem(
                index=MetadataIndex(fqn, offsets),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=offsets, sizes=local.size()),
                    properties=TensorProperties.create_from_tensor(local),
                    size=self.size(),
                ),
            )
            for local, offsets in self._blocks
        ]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets=offsets, sizes=local.size()) for local, offsets in self._blocks]

    def __get_tensor_shard__(self, index: MetadataIndex) -> Tensor:
        for local, offsets in self._blocks:
            if offsets == index.offset:
                return local
        raise ValueError(f"no block of {index.fqn} at offset {index.offset}")

    def __repr__(self) -> str:  # type: ignore[override]
        return f"FusedShards(size={tuple(self.size())}, blocks={len(self._blocks)})"


def _local_block(value: Tensor) -> tuple[Tensor, tuple[int, ...]] | None:
    """This rank's data of ``value`` and its offset in the logical tensor (None when the rank holds none)."""
    if not isinstance(value, DTensor):
        return value, (0,) * value.dim()
    if value.device_mesh.get_coordinate() is None:
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
    return value.to_local(), tuple(offset)


def _fuse(parts: list[Tensor]) -> FusedShards:
    """The ``[parts[0]; parts[1]; ...]`` logical tensor (row-concatenated), as this rank's blocks of it."""
    rows = sum(p.shape[0] for p in parts)
    blocks, start = [], 0
    for part in parts:
        found = _local_block(part)
        if found is not None and found[0].numel():
            local, offset = found
            blocks.append((local, torch.Size((start + offset[0], *offset[1:]))))
        start += part.shape[0]
    return FusedShards(torch.Size((rows, *parts[0].shape[1:])), parts[0].dtype, blocks)


def canonical_name(fqn: str) -> str:
    """``fqn`` with a split part folded into its fused key (``...attn.qkv.q.weight`` -> ``...attn.qkv.weight``)."""
    for fused, names in FUSED.items():
        for name in names:
            head = f".{fused}.{name}."
            if head in fqn:
                prefix, kind = fqn.split(head, 1)
                return f"{prefix}.{fused}.{kind}"
    return fqn


def _families(keys: list[str]) -> dict[str, list[str]]:
    """Fused key -> its split keys, e.g. ``layers.0.attn.qkv.weight`` -> ``[...qkv.q.weight, ...k..., ...v...]``."""
    out: dict[str, list[str]] = {}
    present = set(keys)
    for key in keys:
        for fused, names in FUSED.items():
            head = f".{fused}.{names[0]}."
            if head in key:
                prefix, kind = key.split(head)
                split = [f"{prefix}.{fused}.{n}.{kind}" for n in names]
                if all(s in present for s in split):
                    out[f"{prefix}.{fused}.{kind}"] = split
    return out


def fuse_for_checkpoint(state: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], None]]:
    """``{"model": ..., "optim": {"state": ...}}`` (from ``get_state_dict``) with the split parameters of a
    tensor-parallel model under their fused keys; and what to run after a DCP load into it (copy the loaded
    ``step`` counters to every part). Unchanged for a model with nothing split."""
    model = dict(state["model"])
    families = _families(list(model))
    if not families:
        return state, lambda: None
    for fused, split in families.items():
        model[fused] = _fuse([model.pop(s) for s in split])
    optim = dict(state["optim"]["state"])
    copies: list[tuple[Tensor, Tensor]] = []
    for fused, split in families.items():
        per_part = [optim.get(s) for s in split]
        if any(p is None for p in per_part) or any(set(p) != set(per_part[0]) for p in per_part):
            continue  # states that differ in kind stay under the split keys
        merged: dict[str, Any] = {}
        for name, first in per_part[0].items():
            values = [p[name] for p in per_part]
            if isinstance(first, Tensor) and first.dim() > 0 and first.shape[1:] == values[-1].shape[1:]:
                merged[name] = _fuse(values)
            else:  # scalars (AdamW's step), equal across the parts
                merged[name] = first
                copies.extend((v, first) for v in values[1:] if isinstance(v, Tensor))
        for s in split:
            del optim[s]
        optim[fused] = merged

    def after_load() -> None:
        with torch.no_grad():
            for target, source in copies:
                target.copy_(source)

    return {**state, "model": model, "optim": {**state["optim"], "state": optim}}, after_load
