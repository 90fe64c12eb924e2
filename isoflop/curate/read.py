"""Reading curated shards back (manifest, mixing) without datatrove: JSONL or Parquet with ``text`` and ``metadata``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _domain(record: dict[str, Any]) -> str:
    meta = record.get("metadata") or {}
    return str(meta.get("domain") or record.get("domain") or "default")


def iter_records(files: list[Path]) -> Iterator[dict[str, Any]]:
    """Every record of the JSONL/Parquet shards ``files``, in order."""
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:
            with path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)


def iter_kept(files: list[Path]) -> Iterator[tuple[str, str]]:
    """(text, domain) of every curated document in ``files``."""
    for record in iter_records(files):
        yield record["text"], _domain(record)
