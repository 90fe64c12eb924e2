"""Input models: a Hugging Face folder (``model.safetensors`` or a sharded index), an isoflop run folder (its
``hf/`` export) or an export itself. Only headers are read up front; tensors are loaded one at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from isoflop.errors import IsoflopError

_ARCH_KEYS = ("architectures", "model_type")


@dataclass
class ModelSource:
    """One model on disk: where each tensor lives, with its shape and dtype, and the parsed ``config.json``."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> shard
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    def tensor(self, name: str) -> torch.Tensor:
        """Load one tensor (the shard is memory-mapped; only this tensor is read)."""
        shard = self.files[name]
        try:
            handle = self._handles.get(shard)
            if handle is None:
                handle = self._handles[shard] = safe_open(str(shard), framework="pt")
            return handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise IsoflopError(
                f"cannot read tensor {name} from {shard} ({_first(exc)}); re-export that model"
            ) from None

    @property
    def n_layers(self) -> int:
        cfg = self.config
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 1)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IsoflopError(f"{index} is not a safetensors index ({_first(exc)}); re-export that model") from None
        return {name: folder / shard for name, shard in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise IsoflopError(
            f"{folder} has no model.safetensors (nor an index); merging reads safetensors only: re-save with "
            "save_pretrained(..., safe_serialization=True)"
        )
    return {"": single}


def open_model(path: str | Path) -> ModelSource:
    """Read ``config.json`` and every shard's header (names, shapes, dtypes); no tensor data is loaded."""
    folder = model_dir(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IsoflopError(f"{folder}/config.json is unreadable ({_first(exc)}); fix or re-export it") from None
    files: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    listed = _shards(folder)
    for shard in sorted(set(listed.values())):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    sl = handle.get_slice(name)
                    files[name] = shard
                    shapes[name] = tuple(sl.get_shape())
                    dtypes[name] = sl.get_dtype()
        except (SafetensorError, OSError) as exc:
            raise IsoflopError(f"corrupted safetensors shard {shard} ({_first(exc)}); re-export that model") from None
    if "" not in listed:
        missing = sorted(set(listed) - set(files))
        if missing:
            raise IsoflopError(f"{folder}: index lists {missing[0]} but no shard holds it; re-export that model")
    return ModelSource(folder, config, files, shapes, dtypes)


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
