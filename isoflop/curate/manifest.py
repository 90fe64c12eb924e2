"""``DIR/manifest.json`` and ``DIR/stats.json`` of a curated folder: typed, and readable without datatrove.

The manifest is written last and atomically, so its presence marks a complete curation; ``isoflop plan --data DIR``
and ``isoflop data mix`` read it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isoflop.errors import IsoflopError, describe_validation_error
from isoflop.structured import read_json_or_yaml

MANIFEST = "manifest.json"
STATS = "stats.json"


class DomainCount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: int = Field(ge=0)
    bytes: int = Field(ge=0)
    tokens: int = Field(ge=0)


class Manifest(BaseModel):
    """What survived curation. ``tokens`` are counted with ``tokenizer`` over the kept (hence unique) documents."""

    model_config = ConfigDict(extra="forbid")

    source: str
    recipe: str
    format: str
    documents: int = Field(ge=0)
    bytes: int = Field(ge=0)
    tokens: int = Field(ge=0)
    tokenizer: str
    domains: dict[str, DomainCount]
    files: list[str]


class StageStats(BaseModel):
    """Documents into and out of one datatrove stage, and its removals by reason (step name and datatrove key)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tasks: int = Field(ge=1)
    documents_in: int = Field(ge=0)
    documents_out: int = Field(ge=0)
    bytes_in: int = Field(ge=0)
    removed: dict[str, int]
    removed_reasons: dict[str, int]
    skipped_inputs: dict[str, int]
    minhash_pairs: dict[str, int] = Field(
        default_factory=dict, description="LSH candidate pairs checked by exact Jaccard, and those rejected"
    )
    seconds: float = Field(ge=0, description="wall time of this stage in the latest invocation")


class CurationStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[StageStats]
    documents_read: int = Field(ge=0)
    documents_kept: int = Field(ge=0)
    removed: dict[str, int]
    skipped_inputs: dict[str, int]


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a completed curation in ``folder``; an ``IsoflopError`` when absent or malformed."""
    path = folder / MANIFEST
    fix = f"run `isoflop data curate SOURCE --out {folder}` to completion first"
    if not path.is_file():
        raise IsoflopError(f"{folder} has no {MANIFEST} (not a completed curation); {fix}")
    raw = read_json_or_yaml(path, "manifest", fix)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise IsoflopError(f"manifest {path}: {describe_validation_error(exc)}; {fix}") from None
