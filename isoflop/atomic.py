"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from isoflop.errors import IsoflopError


class UnwritableError(IsoflopError, OSError):
    """An output path that cannot be written, named with the operating system's reason (still an ``OSError``)."""


def umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(target: Path) -> int:
    """Permission bits for a new version of ``target``: the existing file's, else ``0o666`` less the umask
    (what ``open(path, "w")`` would create; ``mkstemp`` alone would leave 0600)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file in the same folder, fsync it, then ``os.replace`` it onto ``path``.

    The file gets the mode a plain write would (umask honoured). A path that cannot be written is an
    ``UnwritableError`` naming the path and the errno reason.
    """
    target = Path(path)
    if target.is_dir():
        raise UnwritableError(f"cannot write {target}: it is a directory; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise UnwritableError(f"cannot write {target}: {exc.strerror or exc}; choose a writable path") from None
    try:
        os.fchmod(fd, file_mode(target))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, IsoflopError):
            raise UnwritableError(f"cannot write {target}: {exc.strerror or exc}; choose a writable path") from None
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def json_safe(obj: Any) -> Any:
    """A JSON-native copy: pydantic models dumped, numpy scalars/arrays to Python, tuples to lists, keys to str,
    NaN/inf to ``None`` (strict JSON has no NaN)."""
    if hasattr(obj, "model_dump"):
        return json_safe(obj.model_dump())
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
