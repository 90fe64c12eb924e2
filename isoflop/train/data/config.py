"""``DataConfig``: where the training text comes from and how it is tokenized (the ``data:`` block of plan.yaml)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bump when the on-disk format or the tokenization procedure changes: old caches are then rebuilt.
FORMAT_VERSION = 1


class DataConfig(BaseModel):
    """Data source, tokenizer and split. Every field enters the cache key (``cache_key``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field("stdlib", description="stdlib | path to a .txt/.jsonl/.parquet file or folder | hf:<dataset>")
    vocab_size: int = Field(4096, ge=258, le=2**32 - 1, description="BPE vocabulary when the tokenizer is trained")
    tokenizer: str | None = Field(None, description="tokenizer.json file or Hugging Face tokenizer folder")
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of documents held out, chosen by id hash")
    max_bytes: int | None = Field(None, gt=0, description="cap on UTF-8 text bytes read (tests, quick runs)")
    text_field: str = Field("text", min_length=1, description="column/key holding the text in JSONL, Parquet, HF")
    hf_split: str = Field("train", min_length=1, description="split of a Hugging Face dataset")

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source is empty; use 'stdlib', a file or folder path, or 'hf:<dataset>'")
        return value.strip()

    def cache_key(self) -> str:
        """16 hex digits of sha256 over the format version and every field (the cache folder name)."""
        payload = json.dumps({"format": FORMAT_VERSION, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
