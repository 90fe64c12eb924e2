"""Input models: a Hugging Face folder (``model.safetensors`` or a sharded index), an isoflop run folder (its
``hf/`` export) or an export itself. Only headers are read up front; tensors are loaded one at a time."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from isoflop import structured
from isoflop.errors import IsoflopError, first_line

_ARCH_KEYS = ("architectures", "model_type")
ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class Stored:
    """Where one tensor's bytes are: its shard, the byte range in it, its shape and dtype."""

    shard: Path
    start: int
    end: int
    shape: tuple[int, ...]
    dtype: str


@dataclass
class ModelSource:
    """One model on disk: where each tensor lives, with its shape and dtype, and the parsed ``config.json``."""

    path: Path
    config: dict[str, Any]
    stored: dict[str, Stored]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: s.shape for name, s in self.stored.items()}

    @property
    def dtypes(self) -> dict[str, str]:
        return {name: s.dtype for name, s in self.stored.items()}

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor with a plain positioned read (no memory map, so pages of tensors already merged do
        not stay resident): memory holds this tensor only."""
        s = self.stored[name]
        buf = bytearray(s.end - s.start)
        try:
            with open(s.shard, "rb") as handle:
                handle.seek(s.start)
                got = handle.readinto(buf)
        except OSError as exc:
            raise IsoflopError(f"cannot read tensor {name} from {s.shard} ({_first(exc)}); check the file") from None
        if got != len(buf):
            raise IsoflopError(f"corrupted safetensors shard {s.shard} (truncated at {name}); re-export that model")
        if not buf:
            return torch.empty(s.shape, dtype=ST_DTYPES[s.dtype])
        return torch.frombuffer(buf, dtype=ST_DTYPES[s.dtype]).reshape(s.shape)

    @property
    def n_layers(self) -> int:
        cfg = self.config
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 1)


def _first(exc: BaseException) -> str:
    return first_line(str(exc)) or type(exc).__name__


def model_dir(path: str | Path) -> Path:
    """The folder holding ``config.json`` and the weights: ``path`` itself, or ``path/hf`` for an isoflop run."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if (p / "hf" / "config.json").is_file():
        return p / "hf"
    if not p.exists():
        raise IsoflopError(f"model {p} not found; pass a Hugging Face folder or an isoflop run folder")
    raise IsoflopError(
        f"{p} holds no config.json (nor hf/config.json); pass a Hugging Face model folder or a finished isoflop run"
    )


def _shards(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = structured.read(index, "safetensors index", "re-export that model", fmt="json")["weight_map"]
        except (IsoflopError, KeyError, TypeError) as exc:
            raise IsoflopError(f"{index} is not a safetensors index ({_first(exc)}); re-export that model") from None
        return {name: folder / shard for name, shard in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise IsoflopError(
            f"{folder} has no model.safetensors (nor an index); merging reads safetensors only: re-save with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return {"": single}


def _parse_header(shard: Path) -> dict[str, Stored]:
    size = shard.stat().st_size
    with open(shard, "rb") as handle:
        head = handle.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, 100_000_000):
            raise ValueError("bad header length")
        header = structured.loads(
            handle.read(n).decode("utf-8"), "json", str(shard), "safetensors header", "re-export it"
        )
    out: dict[str, Stored] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        if info["dtype"] not in ST_DTYPES:
            raise ValueError(f"unsupported dtype {info['dtype']} for {name}")
        width = torch.empty((), dtype=ST_DTYPES[info["dtype"]]).element_size()
        if not 0 <= start <= end <= size - 8 - n or end - start != math.prod(shape) * width:
            raise ValueError(f"byte range of {name} outside the file")
        out[name] = Stored(shard, 8 + n + start, 8 + n + end, shape, info["dtype"])
    return out


def read_header(shard: Path) -> dict[str, Stored]:
    """Parse a safetensors header (``u64`` length, JSON) and check every byte range lies inside the file."""
    try:
        return _parse_header(shard)
    except (IsoflopError, OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise IsoflopError(f"corrupted safetensors shard {shard} ({_first(exc)}); re-export that model") from None


def open_model(path: str | Path) -> ModelSource:
    """Read ``config.json`` and every shard's header (names, shapes, dtypes); no tensor data is loaded."""
    folder = model_dir(path)
    try:
        config = structured.read(folder / "config.json", "model config", "fix or re-export it", fmt="json")
    except IsoflopError as exc:
        raise IsoflopError(f"{folder}/config.json is unreadable ({_first(exc)}); fix or re-export it") from None
    stored: dict[str, Stored] = {}
    listed = _shards(folder)
    for shard in sorted(set(listed.values())):
        for name, entry in read_header(shard).items():
            stored[name] = entry
    if "" not in listed:
        missing = sorted(set(listed) - set(stored))
        if missing:
            raise IsoflopError(f"{folder}: index lists {missing[0]} but no shard holds it; re-export that model")
    return ModelSource(folder, config, stored)


def check_compatible(reference: ModelSource, others: list[ModelSource]) -> None:
    """Same architecture, same tensor names, same shapes: otherwise one line naming the first difference."""
    for other in others:
        for key in _ARCH_KEYS:
            if reference.config.get(key) != other.config.get(key):
                raise IsoflopError(
                    f"architectures differ: {reference.path} has {key}={reference.config.get(key)} but {other.path} "
                    f"has {other.config.get(key)}; merge models of one architecture"
                )
        if reference.config.get("vocab_size") != other.config.get("vocab_size"):
            raise IsoflopError(
                f"vocabularies differ: {reference.path} has vocab_size={reference.config.get('vocab_size')} but "
                f"{other.path} has {other.config.get('vocab_size')}; merge models with one tokenizer"
            )
        missing = sorted(set(reference.shapes) - set(other.shapes))
        extra = sorted(set(other.shapes) - set(reference.shapes))
        if missing or extra:
            name, holder, lacker = (missing[0], reference, other) if missing else (extra[0], other, reference)
            raise IsoflopError(
                f"tensor {name} is in {holder.path} but missing from {lacker.path}; merge models with the same tensors"
            )
        for name, shape in reference.shapes.items():
            if other.shapes[name] != shape:
                raise IsoflopError(
                    f"shapes differ for {name}: {list(shape)} in {reference.path} vs {list(other.shapes[name])} in "
                    f"{other.path}; merge models of the same size"
                )
