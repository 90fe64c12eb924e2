"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded, resharding on load, written atomically,
checksummed, and loaded without executing anything from the files.

Layout under ``DIR/checkpoints/``::

    step-00000040/            a complete checkpoint: DCP shards + .metadata, trainer_state.json, MANIFEST.json, COMPLETE
    step-00000060.tmp/        being written (or half-written by a crash): never loaded, removed later
    step-00000020.corrupt-sha256/   failed verification on load: set aside (never deleted), never loaded again

Every rank writes its own shards into ``step-N.tmp``; when all are written, rank 0 adds ``trainer_state.json``
(step, data position, RNG, counters, the optimizer's hyperparameters), ``MANIFEST.json`` (size and sha256 of
every file) and then the ``COMPLETE`` marker, and renames the folder to ``step-N``. A folder counts only with
its marker and without a suffix, so a crash at any moment leaves the last complete checkpoint to resume from.
Model and optimizer states go through ``get_state_dict``/``set_state_dict``, whose keys do not depend on
DDP/FSDP wrapping, so a run resumes on a different number of processes or strategy (DCP reshards). On GPU the
save is asynchronous (staged to CPU, written by a background thread); on CPU it is synchronous.

Loading executes no code from files. The DCP part holds tensors only (the optimizer's ``param_groups``, the
only non-tensor state, are JSON in ``trainer_state.json``): tensors are read with ``torch.load(weights_only=True)``
(DCP's reader); a ``.metadata`` that declares a pickled byte item is refused, and the load planner refuses byte
items too (DCP's default one unpickles them with ``weights_only=False``). DCP's pickled ``.metadata`` goes
through an unpickler that admits only the metadata dataclasses and a few inert torch/builtin types.

Integrity (``verify``): the manifest's sizes and streamed sha256 sums, the trainer state's keys and the
metadata (no byte items; every storage entry inside a listed shard) are checked before anything is loaded.
``Checkpointer.restore`` loads the newest checkpoint that verifies and renames the others
``step-N.corrupt-<reason>`` with one log line each.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from isoflop import structured
from isoflop.atomic import atomic_write_json
from isoflop.checksum import sha256_file
from isoflop.errors import IsoflopError
from isoflop.train.distributed import DistEnv, all_reduce, broadcast_object
from isoflop.train.parallel.reshard import canonical_name, fuse_for_checkpoint

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
MANIFEST = "MANIFEST.json"
METADATA = ".metadata"
# Keys every trainer_state.json holds (the trainer adds its own through ``Checkpointer(required=...)``).
STATE_KEYS = ("step", "optim_param_groups")
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointInvalid(IsoflopError):
    """A checkpoint that fails verification; ``reason`` is the short tag of its set-aside name."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(
            f"checkpoint {path} is not usable: {detail}; move that folder aside to resume from an older checkpoint"
        )


# Safe metadata reading ---------------------------------------------------------------------------

# Exactly the classes a DCP ``.metadata`` of this trainer refers to (audited on torch 2.4-2.13): inert
# dataclasses and descriptors whose construction runs no user code. Not admitted: any other DCP class
# (readers, writers, planners have side-effecting constructors), functions, ``builtins`` callables.
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),  # admitted to be named and refused
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # maps a layout name to torch.strided etc.
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits the DCP metadata classes in ``_ALLOWED`` and torch dtypes/layouts/memory formats; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata of checkpoint ``path``, read through ``_MetadataUnpickler``."""
    try:
        metadata = _MetadataUnpickler(io.BytesIO((Path(path) / METADATA).read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, OSError) as exc:
        raise CheckpointInvalid(path, "metadata", f"unreadable {METADATA} ({_short(exc)})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointInvalid(path, "metadata", f"{METADATA} is not DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's filesystem reader with the metadata read through ``_MetadataUnpickler`` instead of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that a byte item (which it would ``torch.load(weights_only=False)``) is refused."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise IsoflopError(f"checkpoint item {read_item.dest_index.fqn} is a pickled object, which is never loaded")


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _first_error(exc: BaseException) -> str:
    """The innermost error of a DCP ``CheckpointException`` (one per failed rank), else ``exc`` itself."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) and inner else inner
        if isinstance(inner, BaseException):
            return _short(inner)
    return _short(exc)


@contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that a process without a process group saves/loads 'in a single process': expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# Verification ------------------------------------------------------------------------------------


def write_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder`` (except the manifest and the marker) into ``MANIFEST.json``."""
    files = {
        child.name: {"size": child.stat().st_size, "sha256": sha256_file(child)}
        for child in sorted(folder.iterdir())
        if child.is_file() and child.name not in (MANIFEST, COMPLETE)
    }
    atomic_write_json(folder / MANIFEST, {"version": 1, "files": files})
    return files


def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    if not (path / MANIFEST).is_file():
        raise CheckpointInvalid(path, "manifest", f"no {MANIFEST}")
    try:
        manifest = structured.read(path / MANIFEST, "manifest", "the checkpoint is set aside", fmt="json")
        files = manifest["files"]
        for name, entry in files.items():
            if "/" in name or name in ("", ".", "..") or not isinstance(entry["size"], int):
                raise ValueError(f"bad entry {name[:60]!r}")
            str(entry["sha256"])
    except (IsoflopError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointInvalid(path, "manifest", f"unreadable {MANIFEST} ({_short(exc)})") from None
    for required in (METADATA, STATE_FILE):
        if required not in files:
            raise CheckpointInvalid(path, "manifest", f"{MANIFEST} does not list {required}")
    return files


def read_trainer_state(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``trainer_state.json`` of checkpoint ``path``, with ``STATE_KEYS`` and ``required``."""
    try:
        state = structured.read(path / STATE_FILE, "trainer state", "the checkpoint is set aside", fmt="json")
    except IsoflopError as exc:
        raise CheckpointInvalid(path, "trainer-state", f"unreadable {STATE_FILE} ({_short(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointInvalid(path, "trainer-state", f"{STATE_FILE} is not a JSON object")
    missing = [key for key in (*STATE_KEYS, *required) if key not in state]
    if missing:
        raise CheckpointInvalid(path, "trainer-state", f"{STATE_FILE} lacks {', '.join(missing)}")
    if not isinstance(state["step"], int) or state["step"] < 0 or not isinstance(state["optim_param_groups"], list):
        raise CheckpointInvalid(path, "trainer-state", f"{STATE_FILE} has a malformed step or optim_param_groups")
    return state


def _check_metadata(path: Path, metadata: Metadata, files: dict[str, dict[str, Any]]) -> None:
    """No pickled byte items; every storage entry inside a shard the manifest lists."""
    for fqn, item in metadata.state_dict_metadata.items():
        if isinstance(item, BytesStorageMetadata):
            raise CheckpointInvalid(
                path, "pickled-item", f"{METADATA} declares {str(fqn)[:80]} as a pickled object (only tensors load)"
            )
    for info in metadata.storage_data.values():
        rel = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        entry = files.get(rel) if isinstance(rel, str) else None
        if entry is None or rel in (METADATA, STATE_FILE):
            raise CheckpointInvalid(path, "metadata", f"{METADATA} points at {str(rel)[:80]!r}, not a listed shard")
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0):
            raise CheckpointInvalid(path, "metadata", f"{METADATA} has a malformed storage entry in {rel}")
        if offset + length > entry["size"]:
            raise CheckpointInvalid(path, "metadata", f"{METADATA} points past the end of {rel}")


def verify(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check checkpoint ``path`` before loading it; returns its trainer state or raises ``CheckpointInvalid``.

    Every file the manifest lists must exist with its size and (streamed) sha256; the trainer state must have
    ``STATE_KEYS`` and ``required``; the metadata must unpickle through the allow-list, declare no byte items
    and point only inside listed shards."""
    path = Path(path)
    files = _manifest_files(path)
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointInvalid(path, "missing-file", f"{name} is missing")
        if file.stat().st_size != entry["size"]:
            raise CheckpointInvalid(
                path, "size", f"{name} has {file.stat().st_size} bytes, the manifest says {entry['size']}"
            )
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointInvalid(path, "sha256", f"the sha256 of {name} does not match {MANIFEST}")
    state = read_trainer_state(path, required)
    _check_metadata(path, read_metadata(path), files)
    return state


# Finding checkpoints ------------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoints under ``root`` with their ``COMPLETE`` marker, oldest first (``.tmp``/``.corrupt-*`` ignored)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / COMPLETE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def set_aside(path: Path, reason: str, kind: str = "corrupt") -> Path:
    """Rename a checkpoint to ``<name>.<kind>-<reason>`` (``...-<reason>.2`` etc. when taken); never deleted."""
    target = path.with_name(f"{path.name}.{kind}-{reason}")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.{kind}-{reason}.{n}")
        n += 1
    os.replace(path, target)
    return target


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


_REBUILT_STATE = ("projector",)  # optimizer state objects the optimizer rebuilds itself (GaLore)


def _scalars_as_tensors(tree: Any) -> Any:
    """Optimizer state with Python numbers (e.g. bitsandbytes' integer ``step``) as 0-d tensors: DCP would pickle
    them as byte items, which loading refuses. GaLore's ``projector`` objects are left out: GaLore builds a new one
    from the next gradient (Zhao et al. 2024 recompute it every ``update_proj_gap`` steps anyway)."""
    if isinstance(tree, dict):
        return {key: _scalars_as_tensors(value) for key, value in tree.items() if key not in _REBUILT_STATE}
    if isinstance(tree, (bool, int, float)):
        return torch.tensor(tree)
    return tree


def _scalars_like(loaded: Any, like: Any) -> Any:
    """``loaded`` with the 0-d tensors of ``_scalars_as_tensors`` turned back into the Python type ``like`` has."""
    if isinstance(like, dict):
        return {key: _scalars_like(loaded[key], value) for key, value in like.items() if key not in _REBUILT_STATE}
    if isinstance(like, (bool, int, float)):
        return type(like)(loaded.item())
    return loaded


def _only_tensors(tree: Any, where: str) -> None:
    """Saved DCP state must be tensors only (a non-tensor would become a pickled byte item)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _only_tensors(value, f"{where}.{key}")
    elif not isinstance(tree, torch.Tensor):
        raise TypeError(f"checkpoint state {where} is a {type(tree).__name__}, not a tensor")


def _groups_to_json(groups: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every rank's param groups (JSON-able), one list per distinct set: pipeline stages hold different parameters,
    data-parallel ranks the same ones. Collective when a process group is up."""
    mine = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]
    if not dist.is_initialized():
        return [mine]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    distinct: list[list[dict[str, Any]]] = []
    for groups_of_rank in every:
        if groups_of_rank not in distinct:
            distinct.append(groups_of_rank)
    return distinct


def _groups_from_json(path: Path, saved: Any, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This rank's param groups from the saved sets, with tuples restored where the optimizer has tuples (``betas``).

    Layouts may differ between save and load: group ``i`` of this rank matches when the saved sets with the same
    fields name all its parameters between them (pipeline stages each saved their own), tensor-parallel split
    parameters counted under their fused names (``reshard.canonical_name``)."""
    if not isinstance(saved, list) or not all(isinstance(c, list) for c in saved):
        raise CheckpointInvalid(path, "trainer-state", "optim_param_groups is not a list of param-group lists")
    candidates = [
        c
        for c in saved
        if len(c) == len(current)
        and all(
            isinstance(old, dict) and set(old) == set(now) and isinstance(old["params"], list)
            for old, now in zip(c, current)
        )
    ]
    out = []
    for i, now in enumerate(current):
        known = {canonical_name(str(name)) for c in candidates for name in c[i]["params"]}
        if not candidates or not {canonical_name(name) for name in now["params"]} <= known:
            raise CheckpointInvalid(path, "trainer-state", "optim_param_groups name other fields or parameters")
        first = candidates[0][i]
        out.append(
            {
                k: now["params"] if k == "params" else tuple(v) if isinstance(now[k], tuple) else v
                for k, v in first.items()
            }
        )
    return out


# Saving and loading --------------------------------------------------------------------------------


class Checkpointer:
    """Saves and loads the training state of one run under ``root``, keeping the last ``keep`` checkpoints."""

    def __init__(
        self,
        root: Path,
        keep: int,
        env: DistEnv,
        async_save: bool | None = None,
        log: Callable[[str], None] | None = None,
        required: tuple[str, ...] = (),
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.keep = keep
        self.env = env
        self.log = log or (lambda message: None)
        self.required = required
        self.identity = identity
        use_async = env.device.type == "cuda" if async_save is None else async_save
        self.async_save = bool(use_async and hasattr(dcp, "async_save"))
        self._pending: tuple[Any, Path, Path, dict[str, Any]] | None = None
        self._async_group = None
        self.set_aside: list[Path] = []

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
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": {"state": _scalars_as_tensors(optim_sd["state"])}}
        fused, _ = fuse_for_checkpoint(state)  # the same keys and logical tensors under every layout
        _only_tensors(fused, "")
        writer = dcp.FileSystemWriter(str(tmp))
        meta = {"step": step, **trainer_state, "optim_param_groups": _groups_to_json(optim_sd["param_groups"])}
        # async staging copies each value to the CPU whole, which the fused views (row blocks only) cannot do
        if self.async_save and fused is state:
            if self._async_group is None and dist.is_initialized():
                self._async_group = dist.new_group(backend="gloo")
            with _quiet():
                future = dcp.async_save(state, storage_writer=writer, process_group=self._async_group)
            if hasattr(future, "staging_completion"):  # the weights must be copied out before the next update
                future.staging_completion.result()
            self._pending = (future, tmp, final, meta)
        else:
            try:
                with _quiet():
                    dcp.save(fused, storage_writer=writer)
            except CheckpointException as exc:
                raise IsoflopError(
                    f"cannot write checkpoint {tmp} ({_first_error(exc)}); "
                    "free disk space or fix the folder's permissions"
                ) from None
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
        """Rank 0: trainer state, MANIFEST.json, then the COMPLETE marker, the atomic rename and pruning."""
        if not self.env.is_main:
            return
        atomic_write_json(tmp / STATE_FILE, meta)
        write_manifest(tmp)
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
        """Verify and restore checkpoint ``path`` (resharding as needed); returns the trainer state.

        Raises ``CheckpointInvalid`` (one line) for a checkpoint that fails verification or loading."""
        path = Path(path)
        verify(path, self.required)
        return self._load_verified(path, model, optimizer)

    def _load_verified(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        trainer = read_trainer_state(path, self.required)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        groups = _groups_from_json(path, trainer["optim_param_groups"], optim_sd["param_groups"])
        state = {"model": model_sd, "optim": {"state": _scalars_as_tensors(optim_sd["state"])}}
        fused, after_load = fuse_for_checkpoint(state)  # DCP fills the split parts in place
        try:
            with _quiet():
                dcp.load(fused, storage_reader=SafeFileSystemReader(str(path)), planner=TensorOnlyLoadPlanner())
            after_load()
            set_state_dict(
                model,
                optimizer,
                model_state_dict=state["model"],
                optim_state_dict={
                    "state": _scalars_like(state["optim"]["state"], optim_sd["state"]),
                    "param_groups": groups,
                },
            )
        except CheckpointInvalid:
            raise
        except (Exception, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
            raise CheckpointInvalid(path, "load", _first_error(exc)) from None
        return trainer

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, at_most: int | None = None
    ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest checkpoint (at step <= ``at_most`` if given) that verifies and loads.

        Each one that fails is renamed ``<name>.corrupt-<reason>`` (never deleted) with one log line, and
        recorded in ``self.set_aside``. Rank 0 verifies; every rank loads. None when no checkpoint is left."""
        while True:
            choice: str | None = None
            problem: str | None = None
            if self.env.is_main:
                for step, path in reversed(complete_checkpoints(self.root)):
                    if at_most is not None and step > at_most:
                        continue
                    try:
                        trainer = verify(path, self.required)
                    except CheckpointInvalid as exc:
                        self._set_aside(exc)
                        continue
                    choice, problem = str(path), self._other_run(path, trainer)
                    break
            choice, problem = broadcast_object((choice, problem), self.env)
            if problem:
                raise IsoflopError(problem)
            if choice is None:
                return None
            failure: CheckpointInvalid | None = None
            try:
                trainer = self._load_verified(Path(choice), model, optimizer)
            except CheckpointInvalid as exc:
                failure = exc
            failed = all_reduce(torch.tensor([0.0 if failure is None else 1.0], device=self.env.device), "max")
            if float(failed.item()) == 0.0:
                return Path(choice), trainer
            if self.env.is_main:
                self._set_aside(failure or CheckpointInvalid(Path(choice), "load", "another process failed to load it"))

    def set_aside_after(self, step: int) -> list[Path]:
        """Rank 0: rename the checkpoints saved after ``step`` to ``<name>.rolled-back-diverged`` (a rollback found
        their weights diverging), so that no later resume returns to them."""
        moved = []
        if self.env.is_main:
            for saved, path in complete_checkpoints(self.root):
                if saved > step:
                    moved.append(set_aside(path, "diverged", kind="rolled-back"))
        return moved

    def _other_run(self, path: Path, trainer: dict[str, Any]) -> str | None:
        """Why checkpoint ``path`` (intact) belongs to another run, or None: it is refused, never set aside."""
        saved = trainer.get("identity")
        if self.identity is None or saved is None:
            return None
        now = json.loads(json.dumps(self.identity))
        if saved == now:
            return None
        diff = sorted(k for k in now if now.get(k) != (saved.get(k) if isinstance(saved, dict) else None))
        return (
            f"{path} is a checkpoint of a different run ({', '.join(diff) or 'identity'} differ); "
            "use another --out, or the config that wrote it"
        )

    def _set_aside(self, exc: CheckpointInvalid) -> None:
        try:
            target = set_aside(exc.path, exc.reason)
        except OSError as err:
            raise IsoflopError(
                f"checkpoint {exc.path} failed verification ({exc.detail}) and cannot be renamed "
                f"({err.strerror or err}); move it aside by hand"
            ) from None
        self.set_aside.append(target)
        self.log(f"checkpoint {exc.path.name} failed verification ({exc.detail}); set aside as {target.name}")

    def close(self) -> None:
        self.wait()
        if self._async_group is not None:
            dist.destroy_process_group(self._async_group)
            self._async_group = None
