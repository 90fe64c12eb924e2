"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded, resharding on load, written atomically.

Layout under ``DIR/checkpoints/``::

    step-00000040/            a complete checkpoint: DCP shards + .metadata, trainer_state.json, COMPLETE
    step-00000060.tmp/        being written (or half-written by a crash): never loaded, removed later

Every rank writes its own shards into ``step-N.tmp``; when all are written, rank 0 adds ``trainer_state.json``
(step, data position, RNG, counters) and the ``COMPLETE`` marker, then renames the folder to ``step-N``.
A folder counts only with its marker and without the ``.tmp`` suffix, so a crash at any moment leaves the
last complete checkpoint as the one to resume from. Model and optimizer states go through
``get_state_dict``/``set_state_dict``, whose keys do not depend on DDP/FSDP wrapping, so a run resumes on
a different number of processes or strategy (DCP reshards). On GPU the save is asynchronous (staged to CPU,
written by a background thread); on CPU it is synchronous.

Loading executes no code from files: tensors are read with ``torch.load(weights_only=True)`` (DCP's reader),
DCP's pickled ``.metadata`` goes through an unpickler that admits only DCP's own metadata classes and a few
torch/builtin types, and the trainer state is JSON.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from isoflop.atomic import atomic_write_json
from isoflop.errors import IsoflopError
from isoflop.train.distributed import DistEnv

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


# Safe metadata reading ---------------------------------------------------------------------------

_ALLOWED_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
_ALLOWED = {
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "layout"),
    ("torch", "memory_format"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP metadata dataclasses/enums and plain torch descriptors (dtype, Size, layout); nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_ALLOWED_MODULE_PREFIXES) and not name.startswith("__"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


class SafeFileSystemReader(FileSystemReader):
    """DCP's filesystem reader with the metadata read through ``_MetadataUnpickler`` instead of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = _MetadataUnpickler(io.BytesIO(stream.read())).load()
            except (pickle.UnpicklingError, EOFError, AttributeError) as exc:
                raise IsoflopError(
                    f"checkpoint {self.path} has unreadable metadata ({exc}); delete that checkpoint folder"
                ) from None
        if not isinstance(metadata, Metadata):
            raise IsoflopError(f"checkpoint {self.path} metadata is not DCP metadata; delete that checkpoint folder")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


@contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that a process without a process group saves/loads 'in a single process': expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# Finding checkpoints ------------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first (``.tmp`` folders and ones without a marker ignored)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / COMPLETE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Optimizer states keyed by parameter name, not by group index: pipeline stages hold different groups' members,
# and index-keyed groups (``param_groups.0.params``) would collide across ranks (torchtitan flattens too).
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)

# Saving and loading --------------------------------------------------------------------------------


class Checkpointer:
    """Saves and loads the training state of one run under ``root``, keeping the last ``keep`` checkpoints."""

    def __init__(self, root: Path, keep: int, env: DistEnv, async_save: bool | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.env = env
        use_async = env.device.type == "cuda" if async_save is None else async_save
        self.async_save = bool(use_async and hasattr(dcp, "async_save"))
        self._pending: tuple[Any, Path, Path, dict[str, Any]] | None = None
        self._async_group = None

    # -- save --
    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any]
    ) -> None:
        """Start writing checkpoint ``step`` (finished at once when synchronous; see ``wait``)."""
        self.wait()
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f"step-{step:08d}.tmp"
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        if dist.is_initialized():
            dist.barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_FLAT)
        state = {"model": model_sd, "optim": optim_sd}
        writer = dcp.FileSystemWriter(str(tmp))
        meta = {"step": step, **trainer_state}
        if self.async_save:
            if self._async_group is None and dist.is_initialized():
                self._async_group = dist.new_group(backend="gloo")
            with _quiet():
                future = dcp.async_save(state, storage_writer=writer, process_group=self._async_group)
            if hasattr(future, "staging_completion"):  # the weights must be copied out before the next update
                future.staging_completion.result()
            self._pending = (future, tmp, final, meta)
        else:
            with _quiet():
                dcp.save(state, storage_writer=writer)
            self._finish(tmp, final, meta)

    def wait(self) -> None:
        """Block until an asynchronous save in flight is written and marked complete."""
        if self._pending is None:
            return
        future, tmp, final, meta = self._pending
        self._pending = None
        result = future.upload_completion if hasattr(future, "upload_completion") else future
        result.result()
        self._finish(tmp, final, meta)

    def poll(self) -> None:
        """Finish an asynchronous save if its writes are done (cheap; call every step)."""
        if self._pending is not None:
            future = self._pending[0]
            done = future.upload_completion.done() if hasattr(future, "upload_completion") else future.done()
            if done:
                self.wait()

    def _finish(self, tmp: Path, final: Path, meta: dict[str, Any]) -> None:
        """Rank 0: trainer state + COMPLETE marker, then the atomic rename and pruning."""
        if not self.env.is_main:
            return
        atomic_write_json(tmp / STATE_FILE, meta)
        atomic_write_json(tmp / COMPLETE, {"step": meta["step"], "time": time.time(), "world": self.env.world})
        _fsync_dir(tmp)
        if final.exists():  # the same step written again after a rollback: replace it
            old = final.with_name(final.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)
        self._prune(final)

    def _prune(self, newest: Path) -> None:
        found = complete_checkpoints(self.root)
        for _, path in found[: max(0, len(found) - self.keep)]:
            if path != newest:
                shutil.rmtree(path, ignore_errors=True)
        for child in self.root.iterdir():  # half-written leftovers of crashed saves
            if child.name.endswith((".tmp", ".old")) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    # -- load --
    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model and optimizer from ``path`` (resharding as needed); returns the trainer state."""
        reader = SafeFileSystemReader(str(path))
        reader.read_metadata()  # vet the metadata first: a clean one-line error instead of DCP's wrapped one
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_FLAT)
        state = {"model": model_sd, "optim": optim_sd}
        with _quiet():
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=_FLAT
        )
        try:
            return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IsoflopError(
                f"checkpoint {path} has an unreadable {STATE_FILE} ({exc}); delete that folder"
            ) from None

    def close(self) -> None:
        self.wait()
        if self._async_group is not None:
            dist.destroy_process_group(self._async_group)
            self._async_group = None
