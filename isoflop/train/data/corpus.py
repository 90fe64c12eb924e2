"""Text sources: the interpreter's own stdlib, local text/JSONL/Parquet files or folders, Hugging Face datasets.

Every source yields ``Document``s in a deterministic order. A document belongs to the validation split when
the hash of its id (relative path, plus ``:line`` / ``:row`` inside JSONL/Parquet files) falls below
``val_fraction``, so its split never depends on which other documents exist. Bad files (non-UTF-8, empty,
binary, unreadable, malformed records) are skipped and listed in the report; they never raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isoflop import structured
from isoflop.errors import IsoflopError
from isoflop.train.data.config import DataConfig

log = logging.getLogger("isoflop.data")

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".py", ".text"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
CORPUS_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES
# Folders of the stdlib left out of the default corpus: third-party packages and the test suites (which hold
# deliberately malformed files and would dominate the corpus).
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
BINARY_PROBE_BYTES = 8192


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Skipped:
    id: str
    reason: str


@dataclass
class Corpus:
    """Documents of both splits, in deterministic order, and the inputs that were skipped."""

    train: list[Document] = field(default_factory=list)
    val: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def n_bytes(self) -> int:
        return sum(len(d.text.encode("utf-8")) for d in self.train + self.val)


def is_val(doc_id: str, val_fraction: float) -> bool:
    """True when ``sha256(doc_id)``, read as a fraction in [0, 1), is below ``val_fraction``."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def stdlib_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(cfg: DataConfig) -> tuple[Path, list[Path]]:
    """(root, files sorted by relative POSIX path) for a file-based source; raises IsoflopError when absent."""
    if cfg.source == "stdlib":
        root = stdlib_root()
        return root, _walk(root, {".py"}, STDLIB_EXCLUDED_DIRS)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise IsoflopError(
            f"data source {cfg.source!r} does not exist; give 'stdlib', an existing file or folder, or 'hf:<dataset>'"
        )
    if path.is_file():
        return path.parent, [path]
    files = _walk(path, CORPUS_SUFFIXES, frozenset({"__pycache__", ".git"}))
    if not files:
        raise IsoflopError(
            f"folder {cfg.source!r} holds no {', '.join(sorted(CORPUS_SUFFIXES))} files; "
            "point data.source at a folder of text, JSONL or Parquet files"
        )
    return path, files


def _walk(root: Path, suffixes: set[str] | frozenset[str], excluded: frozenset[str]) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in excluded and not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if p.suffix.lower() in suffixes and not name.startswith("."):
                found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def fingerprint(cfg: DataConfig) -> str:
    """sha256 over (relative path, size, mtime) of every input file (or of a local ``hf:`` dataset folder).

    A stored cache whose fingerprint differs (files added, removed or edited) is rebuilt.
    """
    h = hashlib.sha256()
    if cfg.source.startswith("hf:"):
        h.update(cfg.source.encode("utf-8"))
        local = Path(cfg.source[3:].strip()).expanduser()
        if not local.is_dir():  # a hub name: the cached copy is immutable per revision
            return h.hexdigest()
        root = local
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.relative_to(local).as_posix())
    else:
        root, files = list_files(cfg)
    h.update(str(root.resolve()).encode("utf-8"))
    if cfg.source == "stdlib":
        h.update(sys.version.encode("utf-8"))
    for p in files:
        st = p.stat()
        h.update(f"\0{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read the configured source into train/val documents, honouring ``max_bytes``."""
    if cfg.source.startswith("hf:"):
        records = _hf_records(cfg)
    else:
        root, files = list_files(cfg)
        records = _file_records(root, files, cfg)
    return _split(records, cfg)


def _split(records: Iterator[Document | Skipped], cfg: DataConfig) -> Corpus:
    """Assign documents to splits by id hash; with ``max_bytes`` each split keeps its share of the cap.

    Each split takes whole documents in order until it holds its share of the cap, ``(1 - val_fraction) *
    max_bytes`` for training and ``val_fraction * max_bytes`` for validation, so a capped corpus keeps both.
    """
    corpus = Corpus()
    budget = None
    if cfg.max_bytes is not None:
        budget = {"train": (1.0 - cfg.val_fraction) * cfg.max_bytes, "val": cfg.val_fraction * cfg.max_bytes}
    used = {"train": 0, "val": 0}
    full: set[str] = set()
    for rec in records:
        if isinstance(rec, Skipped):
            corpus.skipped.append(rec)
            log.debug("skipped %s: %s", rec.id, rec.reason)
            continue
        split = "val" if is_val(rec.id, cfg.val_fraction) else "train"
        if split in full:
            continue
        docs = corpus.val if split == "val" else corpus.train
        docs.append(rec)
        used[split] += len(rec.text.encode("utf-8"))
        if budget is not None and used[split] >= budget[split]:
            full.add(split)  # a split takes whole documents in order until its share is reached
            if len(full) == 2:
                break
    if not corpus.train and not corpus.val:
        raise IsoflopError(
            f"data source {cfg.source!r} yielded no usable text ({len(corpus.skipped)} files "
            "skipped); check the source path and the text_field setting"
        )
    return corpus


def _file_records(root: Path, files: list[Path], cfg: DataConfig) -> Iterator[Document | Skipped]:
    for path in files:
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        try:
            if suffix in JSONL_SUFFIXES:
                yield from _jsonl_records(path, rel, cfg.text_field)
            elif suffix in PARQUET_SUFFIXES:
                yield from _parquet_records(path, rel, cfg.text_field)
            else:
                yield _text_record(path, rel)
        except OSError as exc:
            yield Skipped(rel, f"unreadable: {exc.strerror or exc}")


def _check_text(raw: bytes, doc_id: str) -> Document | Skipped:
    """Decode UTF-8 bytes; empty, binary (a NUL byte) and non-UTF-8 content become ``Skipped``."""
    if not raw.strip():
        return Skipped(doc_id, "empty")
    if b"\x00" in raw[:BINARY_PROBE_BYTES]:
        return Skipped(doc_id, "binary (NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Skipped(doc_id, f"not UTF-8 (byte {exc.start})")
    if text.startswith("\ufeff"):
        text = text[1:]
    return Document(doc_id, text)


def _field_record(doc_id: str, text: Any, not_text: str) -> Document | Skipped:
    """A record's text field (JSONL, Parquet, datasets): ``Skipped(not_text)`` when it is not a string, ``Skipped``
    when blank, else a ``Document``."""
    if not isinstance(text, str):
        return Skipped(doc_id, not_text)
    if not text.strip():
        return Skipped(doc_id, "empty")
    return Document(doc_id, text)


def _text_record(path: Path, rel: str) -> Document | Skipped:
    return _check_text(path.read_bytes(), rel)


def _jsonl_records(path: Path, rel: str, text_field: str) -> Iterator[Document | Skipped]:
    raw = path.read_bytes()
    if not raw.strip():
        yield Skipped(rel, "empty")
        return
    if b"\x00" in raw[:BINARY_PROBE_BYTES]:
        yield Skipped(rel, "binary (NUL bytes)")
        return
    for lineno, line in enumerate(raw.splitlines(), start=1):
        doc_id = f"{rel}:{lineno}"
        if not line.strip():
            continue
        try:
            record = structured.loads(line.decode("utf-8"), "json", doc_id, "record", "")
        except UnicodeDecodeError as exc:
            yield Skipped(doc_id, f"not UTF-8 (byte {exc.start})")
            continue
        except structured.ParseError as exc:
            yield Skipped(doc_id, f"invalid JSON ({exc.reason})")
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        yield _field_record(doc_id, text, f"no string field {text_field!r}")


def _parquet_records(path: Path, rel: str, text_field: str) -> Iterator[Document | Skipped]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        yield Skipped(rel, "Parquet needs pyarrow (pip install pyarrow)")
        return
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            yield Skipped(rel, f"no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
            return
        batches = pf.iter_batches(columns=[text_field], batch_size=4096)
        texts = (text for batch in batches for text in batch.column(0).to_pylist())
        for row, text in enumerate(texts):
            yield _field_record(f"{rel}:{row}", text, f"column {text_field!r} is not a string")
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid & co. for corrupt files
        yield Skipped(rel, f"unreadable Parquet ({type(exc).__name__}: {exc})")


@contextlib.contextmanager
def _hf_offline(datasets_module: Any) -> Iterator[None]:
    """Force offline mode for one call, even if ``datasets``/``huggingface_hub`` were imported before.

    Both read their ``*_OFFLINE`` environment variables once at import, so the module constants are patched
    too and restored afterwards.
    """
    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    patched: list[tuple[Any, str, Any]] = []
    targets = [
        (getattr(datasets_module, "config", None), "HF_DATASETS_OFFLINE"),
        (getattr(datasets_module, "config", None), "HF_HUB_OFFLINE"),
    ]
    try:
        import huggingface_hub.constants as hub_constants

        targets.append((hub_constants, "HF_HUB_OFFLINE"))
    except ImportError:
        pass
    try:
        os.environ.update({k: "1" for k in saved_env})
        for obj, attr in targets:
            if obj is not None and hasattr(obj, attr):
                patched.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, True)
        yield
    finally:
        for obj, attr, value in reversed(patched):
            setattr(obj, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _hf_records(cfg: DataConfig) -> Iterator[Document | Skipped]:
    """Rows of a Hugging Face dataset that is local (a ``save_to_disk`` folder) or already cached; never downloads."""
    name = cfg.source[3:].strip()
    if not name:
        raise IsoflopError("data source 'hf:' names no dataset; write hf:<dataset name or local folder>")
    try:
        import datasets
    except ImportError as exc:
        raise IsoflopError("hf: data sources need the 'datasets' package; pip install datasets") from exc
    local = Path(name).expanduser()
    try:
        with _hf_offline(datasets):
            if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
                ds = datasets.load_from_disk(str(local))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[cfg.hf_split]
            else:
                ds = datasets.load_dataset(name, split=cfg.hf_split)
    except Exception as exc:
        raise IsoflopError(
            f"Hugging Face dataset {name!r} (split {cfg.hf_split!r}) is not available offline "
            f"({type(exc).__name__}: {exc}); download it once with datasets.load_dataset or "
            "use a local folder"
        ) from exc
    if cfg.text_field not in ds.column_names:
        raise IsoflopError(
            f"dataset {name!r} has no column {cfg.text_field!r} (columns: "
            f"{', '.join(ds.column_names)}); set data.text_field"
        )
    texts = (text for batch in ds.iter(batch_size=1024) for text in batch[cfg.text_field])
    for row, text in enumerate(texts):  # ids independent of where a local copy lives
        yield _field_record(f"{cfg.hf_split}:{row}", text, f"column {cfg.text_field!r} is not a string")
