"""``prepare_data``: read, tokenize once, cache as checksummed memory-mapped shards, and return ``TokenData``."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from isoflop import env, structured
from isoflop.atomic import atomic_write_bytes, atomic_write_json
from isoflop.checksum import sha256_file
from isoflop.errors import IsoflopError
from isoflop.train.data import shards
from isoflop.train.data.config import FORMAT_VERSION, DataConfig
from isoflop.train.data.corpus import Corpus, Document, fingerprint, load_corpus
from isoflop.train.data.sampler import PackedSampler
from isoflop.train.data.tokenizer import (
    EOT,
    encode_batch,
    find_eot,
    load_tokenizer,
    tokenizer_file,
    train_bpe,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

log = logging.getLogger("isoflop.data")

TOKENIZER_FILE = "tokenizer.json"
ENCODE_CHUNK_BYTES = 4 << 20  # texts handed to one parallel encode_batch call
MIN_VAL_TOKENS = 1024
# BPE merges are learned on at most about this many characters of training text (every k-th document): the
# merge statistics of a few MB are stable, and training cost grows linearly with the sample.
TOKENIZER_TRAIN_CHARS = 4_000_000  # held-out tail when no document hashes into validation


def default_cache_root() -> Path:
    """``$ISOFLOP_CACHE/data`` when set, else ``~/.cache/isoflop/data``."""
    return env.cache_dir() / "data"


def cache_dir_for(cfg: DataConfig, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<key>``: the key hashes the config and the resolved source path (relative paths differ by cwd)."""
    import hashlib

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    where = cfg.source if cfg.source == "stdlib" or cfg.source.startswith("hf:") else str(Path(cfg.source).resolve())
    key = hashlib.sha256(f"{cfg.cache_key()}\0{where}".encode()).hexdigest()[:16]
    return root / key


@dataclass
class TokenData:
    """Tokenized splits (read-only memory maps), the tokenizer and the cache manifest."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer: Tokenizer
    eot_id: int | None
    cache_dir: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files or records that were skipped, each ``{"id", "reason"}``."""
        return list(self.manifest.get("skipped", []))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def sampler(
        self,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        global_batch: int | None = None,
    ) -> PackedSampler:
        """A ``PackedSampler`` over the training split (see ``isoflop.train.data.sampler``)."""
        return PackedSampler(self.train, seq_len, batch_size, seed, rank=rank, world=world, global_batch=global_batch)

    def val_batches(self, seq_len: int, batch: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` validation batches ``(x, y)`` of shape (batch, seq_len), int64, the same on every call.

        Windows of ``seq_len + 1`` tokens start at multiples of ``seq_len`` and are spread evenly over the
        whole validation split (``y`` is ``x`` shifted by one token); with fewer windows than ``n * batch``
        they repeat in order.
        """
        import torch

        if seq_len < 1 or batch < 1 or n < 1:
            raise IsoflopError(f"val_batches needs positive seq_len, batch and n (got {seq_len}, {batch}, {n})")
        windows = (len(self.val) - 1) // seq_len
        if windows < 1:
            raise IsoflopError(
                f"the validation split has {len(self.val)} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}; use a shorter seq_len, a larger corpus or a larger val_fraction"
            )
        total = n * batch
        if windows >= total:
            picks = (np.arange(total, dtype=np.int64) * windows) // total
        else:
            picks = np.arange(total, dtype=np.int64) % windows
        offsets = picks[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)[None, :]
        rows = torch.from_numpy(np.asarray(self.val[offsets], dtype=np.int64))
        return [(rows[i * batch : (i + 1) * batch, :-1], rows[i * batch : (i + 1) * batch, 1:]) for i in range(n)]


def prepare_data(
    cfg: DataConfig | dict[str, Any] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> TokenData:
    """Tokenize ``cfg``'s corpus once into ``cache_dir_for(cfg, cache_dir)`` and return the cached ``TokenData``.

    A cache is reused only when its manifest, every shard checksum, the tokenizer and the input fingerprint
    (file names, sizes, mtimes) match; otherwise it is rebuilt. Concurrent callers (e.g. torchrun ranks)
    serialize on a file lock, so the corpus is tokenized once.
    """
    cfg = _as_config(cfg)
    folder = cache_dir_for(cfg, cache_dir)
    source_fp = fingerprint(cfg)
    given_sha = sha256_file(tokenizer_file(cfg.tokenizer)) if cfg.tokenizer else None
    try:
        return _prepare_locked(cfg, folder, source_fp, given_sha)
    except OSError as exc:
        raise IsoflopError(
            f"cannot write the data cache in {folder} ({exc.strerror or exc}); free disk space "
            "or point $ISOFLOP_CACHE (or cache_dir) at a writable folder"
        ) from exc


def _as_config(cfg: DataConfig | dict[str, Any] | None) -> DataConfig:
    if cfg is None:
        return DataConfig()
    if isinstance(cfg, DataConfig):
        return cfg
    from pydantic import ValidationError

    from isoflop.errors import describe_validation_error

    try:
        return DataConfig.model_validate(cfg)
    except ValidationError as exc:
        raise IsoflopError(f"invalid data config: {describe_validation_error(exc)}; see DataConfig's fields") from exc


def _prepare_locked(cfg: DataConfig, folder: Path, source_fp: str, given_sha: str | None) -> TokenData:
    with shards.folder_lock(folder):
        manifest, why = shards.verify(folder)
        if manifest is not None:
            if manifest.get("fingerprint") != source_fp:
                manifest, why = None, "the source files changed"
            elif manifest.get("tokenizer", {}).get("given_sha256") != given_sha:
                manifest, why = None, "the given tokenizer changed"
        if manifest is None:
            if why != "no manifest" or any(folder.glob("*.bin")):
                log.warning("rebuilding data cache %s: %s", folder, why)
            _build(cfg, folder, source_fp, given_sha, _reusable_tokenizer(folder, cfg, source_fp))
            manifest, why = shards.verify(folder)
            if manifest is None:
                raise IsoflopError(
                    f"the data cache {folder} failed verification right after writing ({why}); "
                    "check the disk, or set $ISOFLOP_CACHE to another folder"
                )
    return _open(folder, manifest)


def _open(folder: Path, manifest: dict[str, Any]) -> TokenData:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / manifest["tokenizer"]["file"]))
    return TokenData(
        train=shards.open_split(folder, manifest, "train"),
        val=shards.open_split(folder, manifest, "val"),
        vocab_size=int(manifest["tokenizer"]["vocab_size"]),
        tokenizer=tok,
        eot_id=manifest["tokenizer"]["eot_id"],
        cache_dir=folder,
        manifest=manifest,
    )


def _reusable_tokenizer(folder: Path, cfg: DataConfig, source_fp: str) -> bool:
    """True when a damaged cache still holds the BPE trained for this very config and input (checksum intact)."""
    try:
        old = structured.read(folder / shards.MANIFEST, "data-cache manifest", "", "json")
        tok = old["tokenizer"]
        return (
            old.get("config") == cfg.model_dump()
            and old.get("fingerprint") == source_fp
            and tok["trained"]
            and sha256_file(folder / TOKENIZER_FILE) == tok["sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError, IsoflopError):
        return False


def _build(cfg: DataConfig, folder: Path, source_fp: str, given_sha: str | None, reuse_tokenizer: bool) -> None:
    t0 = time.perf_counter()
    shards.clear(folder, keep=frozenset({TOKENIZER_FILE}) if reuse_tokenizer else frozenset())
    corpus = load_corpus(cfg)
    if not corpus.train:  # every document hashed into validation (e.g. a single file): train on them instead
        corpus.train, corpus.val = corpus.val, []
    t_read = time.perf_counter()
    if corpus.skipped:
        reasons = Counter(s.reason.split(" (")[0] for s in corpus.skipped)
        log.warning(
            "skipped %d input(s) (%s); the list is in %s",
            len(corpus.skipped),
            ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())),
            folder / shards.MANIFEST,
        )
    if reuse_tokenizer:
        tok, trained = load_tokenizer(str(folder / TOKENIZER_FILE)), True
        log.info("reusing the trained tokenizer in %s", folder)
    else:
        tok, trained = _tokenizer(cfg, corpus)
        atomic_write_bytes(folder / TOKENIZER_FILE, tok.to_str().encode("utf-8"))
    vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    eot_id = find_eot(tok, Path(cfg.tokenizer).expanduser() if cfg.tokenizer and Path(cfg.tokenizer).is_dir() else None)
    if eot_id is None:
        log.warning("tokenizer %s has no end-of-text token; documents are packed without a separator", cfg.tokenizer)
    t_tok = time.perf_counter()
    dtype = shards.token_dtype(vocab_size)
    writers = {s: shards.ShardWriter(folder, f"{s}.bin", dtype) for s in ("train", "val")}
    try:
        for split, docs in (("train", corpus.train), ("val", corpus.val)):
            _encode_into(tok, docs, eot_id, writers[split])
        val_from_tail = writers["val"].tokens == 0
        if val_from_tail:
            shards.split_tail(writers["train"], writers["val"], cfg.val_fraction, MIN_VAL_TOKENS)
        entries = {s: w.commit() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    entries["train"]["documents"], entries["val"]["documents"] = len(corpus.train), len(corpus.val)
    t_end = time.perf_counter()
    manifest = {
        "format": FORMAT_VERSION,
        "config": cfg.model_dump(),
        "fingerprint": source_fp,
        "dtype": dtype.name,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": sha256_file(folder / TOKENIZER_FILE),
            "given_sha256": given_sha,
            "trained": trained,
            "vocab_size": vocab_size,
            "eot_id": eot_id,
        },
        "splits": entries,
        "val_from_train_tail": val_from_tail,
        "text_bytes": corpus.n_bytes,
        "skipped": [{"id": s.id, "reason": s.reason} for s in corpus.skipped],
        "seconds": {"read": t_read - t0, "tokenizer": t_tok - t_read, "encode": t_end - t_tok, "total": t_end - t0},
    }
    atomic_write_json(folder / shards.MANIFEST, manifest)
    log.info(
        "prepared %s: %d train / %d val tokens in %.2f s",
        folder,
        entries["train"]["tokens"],
        entries["val"]["tokens"],
        t_end - t0,
    )


def _tokenizer(cfg: DataConfig, corpus: Corpus) -> tuple[Tokenizer, bool]:
    """The given tokenizer, or a byte-level BPE trained on (a sample of) the training documents, never on val."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer), False
    texts = [d.text for d in corpus.train]
    total = sum(len(t) for t in texts)
    stride = max(1, -(-total // TOKENIZER_TRAIN_CHARS))  # every k-th document: a spread, deterministic sample
    sample = texts[::stride]
    return train_bpe(sample, cfg.vocab_size, length=len(sample)), True


def _encode_into(tok: Tokenizer, docs: list[Document], eot_id: int | None, writer: shards.ShardWriter) -> None:
    """Encode documents in parallel chunks and append them, each followed by the end-of-text token."""
    eot = np.array([] if eot_id is None else [eot_id], dtype=writer.dtype)
    chunk: list[str] = []
    size = 0
    for i, doc in enumerate(docs):
        chunk.append(doc.text)
        size += len(doc.text)
        if size >= ENCODE_CHUNK_BYTES or i == len(docs) - 1:
            parts: list[np.ndarray] = []
            for ids in encode_batch(tok, chunk):
                parts.append(np.asarray(ids, dtype=writer.dtype))
                parts.append(eot)
            writer.append(np.concatenate(parts))
            chunk, size = [], 0


__all__ = ["EOT", "TokenData", "prepare_data", "cache_dir_for", "default_cache_root"]
