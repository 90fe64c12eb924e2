"""Token shards on disk: one flat memory-mapped ``uint16``/``uint32`` file per split plus ``manifest.json``.

Shards are written to temporary files, fsynced, checksummed (sha256) and renamed into place; the manifest
is written last (atomically), so a cache is valid only when its manifest exists and every shard it lists has
the recorded size and checksum. Anything else (a crash mid-write, a truncated or edited shard) is detected by
``verify`` and the cache is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from isoflop import structured
from isoflop.atomic import umask
from isoflop.checksum import sha256_file
from isoflop.errors import IsoflopError

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Append token arrays to a temporary file; ``commit`` fsyncs, checksums and renames it to ``name``."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype) -> None:
        self.folder, self.name, self.dtype = folder, name, dtype
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())  # as a plain open() would; mkstemp alone gives 0600
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        self.tokens = 0

    def append(self, ids: np.ndarray) -> None:
        arr = np.ascontiguousarray(ids, dtype=self.dtype)
        self._handle.write(arr.tobytes())
        self.tokens += int(arr.size)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def commit(self) -> dict[str, Any]:
        """Finish the shard and return its manifest entry ``{file, tokens, sha256}``."""
        self.close()
        entry = {"file": self.name, "tokens": self.tokens, "sha256": sha256_file(self.tmp)}
        os.replace(self.tmp, self.folder / self.name)
        return entry

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def split_tail(train: ShardWriter, val: ShardWriter, fraction: float, min_tokens: int) -> None:
    """Move the last ``fraction`` of the (closed) training tokens into ``val`` (when no document is in val)."""
    train.close()
    data = np.fromfile(train.tmp, dtype=train.dtype)
    n_val = max(min_tokens, int(round(len(data) * fraction)))
    n_val = min(n_val, len(data) // 2)
    val.append(data[len(data) - n_val :])
    with open(train.tmp, "r+b") as handle:
        handle.truncate((len(data) - n_val) * train.dtype.itemsize)
        handle.flush()
        os.fsync(handle.fileno())
    train.tokens = len(data) - n_val


def verify(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") when the cache in ``folder`` is complete and every checksum matches, else (None, why)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None, "no manifest"
    try:
        manifest = structured.read(path, "data-cache manifest", "", "json")
        dtype = np.dtype(manifest["dtype"])
        entries = [manifest["splits"][s] for s in ("train", "val")]
    except (OSError, ValueError, KeyError, TypeError, IsoflopError) as exc:
        return None, f"unreadable manifest ({exc})"
    try:
        for entry in entries:
            name = str(entry["file"])
            if Path(name).name != name:
                return None, f"manifest names a shard outside the cache ({name[:80]!r})"
            shard = folder / name
            if not shard.is_file():
                return None, f"missing shard {name}"
            if shard.stat().st_size != int(entry["tokens"]) * dtype.itemsize:
                return None, f"shard {name} has the wrong size"
            if sha256_file(shard) != entry["sha256"]:
                return None, f"checksum mismatch in {name}"
        tok = manifest["tokenizer"]
        tok_name = str(tok.get("file", "tokenizer.json"))
        int(tok["vocab_size"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"malformed manifest ({type(exc).__name__}: {str(exc)[:80]})"
    tok_path = folder / tok_name
    if Path(tok_name).name != tok_name or not tok_path.is_file() or sha256_file(tok_path) != tok.get("sha256"):
        return None, "tokenizer file missing or changed"
    return manifest, ""


def open_split(folder: Path, manifest: dict[str, Any], split: str) -> np.ndarray:
    """Read-only memory map of one split (an empty array for an empty shard, which ``np.memmap`` refuses)."""
    entry = manifest["splits"][split]
    dtype = np.dtype(manifest["dtype"])
    if entry["tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(folder / entry["file"], dtype=dtype, mode="r", shape=(entry["tokens"],))


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder/.lock`` so concurrent ranks/processes build a cache once (POSIX ``flock``)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # non-POSIX: atomic renames still keep the cache consistent
        yield
        return
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def clear(folder: Path, keep: frozenset[str] = frozenset()) -> None:
    """Remove the manifest first (invalidating the cache), then shards and stale files, except ``keep``."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for p in folder.iterdir():
        if p.name not in keep and p.is_file() and p.suffix in {".bin", ".tmp", ".json"}:
            p.unlink(missing_ok=True)
