"""sha256 of a file, streamed: the one checksum of checkpoints (``MANIFEST.json``) and token-cache shards."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 22  # 4 MiB reads


def sha256_file(path: Path) -> str:
    """Hex sha256 of ``path``, read in ``CHUNK``-byte pieces (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
