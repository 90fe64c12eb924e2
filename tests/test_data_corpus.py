"""Corpus sources: stdlib file order, split by id hash, text/JSONL/Parquet sources, bad inputs skipped."""

from __future__ import annotations

import importlib.util
import json
import sys
import sysconfig
from pathlib import Path

import pytest

from isoflop.errors import IsoflopError
from isoflop.train.data import DataConfig
from isoflop.train.data.corpus import STDLIB_EXCLUDED_DIRS, is_val, list_files, load_corpus


def test_stdlib_files_are_the_interpreters_sources_in_sorted_order():
    root, files = list_files(DataConfig())
    assert root == Path(sysconfig.get_paths()["stdlib"])
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) == len(set(rel)) > 500
    # Independent reference: the interpreter's own list of stdlib modules and where importlib finds them.
    expected = set()
    for name in sys.stdlib_module_names:
        spec = importlib.util.find_spec(name) if not name.startswith("_") or name in sys.modules else None
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py") and Path(origin).is_relative_to(root):
            rel_origin = Path(origin).relative_to(root)
            # setuptools' distutils shim makes `distutils` resolve into site-packages on Python 3.11; not stdlib.
            if not set(rel_origin.parts) & {"site-packages", "dist-packages"}:
                expected.add(rel_origin.as_posix())
    assert len(expected) > 100 and expected <= set(rel)
    assert not any(set(r.split("/")[:-1]) & STDLIB_EXCLUDED_DIRS for r in rel)
    assert list_files(DataConfig())[1] == files  # deterministic


def test_split_by_id_hash_is_stable_when_files_come_and_go(tmp_path):
    for i in range(60):
        (tmp_path / f"doc{i:03d}.txt").write_text(f"document {i}\n" * 3)
    cfg = DataConfig(source=str(tmp_path), val_fraction=0.25)
    before = load_corpus(cfg)
    split_before = {d.id: "val" for d in before.val} | {d.id: "train" for d in before.train}
    for i in range(0, 60, 7):
        (tmp_path / f"doc{i:03d}.txt").unlink()
    for i in range(60, 90):
        (tmp_path / f"doc{i:03d}.txt").write_text(f"new document {i}\n")
    after = load_corpus(cfg)
    split_after = {d.id: "val" for d in after.val} | {d.id: "train" for d in after.train}
    common = set(split_before) & set(split_after)
    assert len(common) == 60 - len(range(0, 60, 7))
    assert all(split_before[k] == split_after[k] for k in common)
    assert [d.id for d in after.train] == sorted(d.id for d in after.train)
    # The hash is uniform: about val_fraction of many ids land in validation.
    share = sum(is_val(f"file{i}.py", 0.25) for i in range(4000)) / 4000
    assert abs(share - 0.25) < 0.03


def test_text_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("plain text file\nwith two lines\n", encoding="utf-8")
    rows = [{"text": "first json record é"}, {"text": "second record"}, {"id": 3, "text": "third"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["parquet row 0", "parquet row 1 ✓"], "n": [0, 1]}), tmp_path / "c.parquet")
    corpus = load_corpus(DataConfig(source=str(tmp_path), val_fraction=0.01))
    docs = {d.id: d.text for d in corpus.train + corpus.val}
    assert docs == {
        "a.txt": "plain text file\nwith two lines\n",
        "b.jsonl:1": "first json record é",
        "b.jsonl:2": "second record",
        "b.jsonl:3": "third",
        "c.parquet:0": "parquet row 0",
        "c.parquet:1": "parquet row 1 ✓",
    }
    assert corpus.skipped == []
    single = load_corpus(DataConfig(source=str(tmp_path / "b.jsonl")))
    assert sorted(d.text for d in single.train + single.val) == sorted(r["text"] for r in rows)


def test_bad_files_are_skipped_and_reported(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "good.txt").write_text("good text\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"ELF\x00\x01\x02binary")
    (tmp_path / "mixed.jsonl").write_bytes(b'{"text": "ok line"}\n{not json}\n{"body": "x"}\n{"text": ""}\n')
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / "nocol.parquet")
    corpus = load_corpus(DataConfig(source=str(tmp_path)))
    assert sorted(d.text for d in corpus.train + corpus.val) == ["good text\n", "ok line"]
    reasons = {s.id: s.reason for s in corpus.skipped}
    assert reasons["empty.txt"] == "empty"
    assert reasons["latin1.txt"].startswith("not UTF-8")
    assert reasons["binary.txt"].startswith("binary")
    assert reasons["mixed.jsonl:2"].startswith("invalid JSON")
    assert reasons["mixed.jsonl:3"] == "no string field 'text'"
    assert reasons["mixed.jsonl:4"] == "empty"
    assert reasons["corrupt.parquet"].startswith("unreadable Parquet")
    assert reasons["nocol.parquet"].startswith("no column 'text'")


def test_missing_or_unusable_sources_are_clear_errors(tmp_path):
    with pytest.raises(IsoflopError, match="does not exist"):
        load_corpus(DataConfig(source=str(tmp_path / "nope")))
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(IsoflopError, match="holds no"):
        load_corpus(DataConfig(source=str(tmp_path)))
    (tmp_path / "only_empty.txt").write_text("")
    with pytest.raises(IsoflopError, match="no usable text"):
        load_corpus(DataConfig(source=str(tmp_path)))


def test_hf_source_without_datasets_or_offline_copy_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(IsoflopError, match="pip install datasets"):
        load_corpus(DataConfig(source="hf:some/dataset"))


def test_max_bytes_caps_each_split_to_its_share():
    cfg = DataConfig(max_bytes=200_000, val_fraction=0.1)
    corpus = load_corpus(cfg)
    train_bytes = sum(len(d.text.encode()) for d in corpus.train)
    val_bytes = sum(len(d.text.encode()) for d in corpus.val)
    last_train = len(corpus.train[-1].text.encode())
    assert 180_000 <= train_bytes < 180_000 + last_train
    assert corpus.val and val_bytes - len(corpus.val[-1].text.encode()) < 20_000


def test_hf_datasets_saved_to_disk_and_no_download(tmp_path):
    datasets = pytest.importorskip("datasets")  # optional dependency: runs where it is installed
    rows = [f"row {i} " * 5 for i in range(40)] + [""]
    full = datasets.Dataset.from_dict({"text": rows, "n": list(range(len(rows)))})
    datasets.DatasetDict({"train": full, "test": full.select(range(5))}).save_to_disk(str(tmp_path / "dd"))
    full.save_to_disk(str(tmp_path / "single"))
    for where, split, n in (("dd", "train", 40), ("dd", "test", 5), ("single", "train", 40)):
        corpus = load_corpus(DataConfig(source=f"hf:{tmp_path / where}", hf_split=split))
        assert sorted(d.text for d in corpus.train + corpus.val) == sorted(rows[:n])
    assert [s.id for s in load_corpus(DataConfig(source=f"hf:{tmp_path / 'single'}")).skipped] == ["train:40"]
    with pytest.raises(IsoflopError, match="not available offline"):
        load_corpus(DataConfig(source="hf:isoflop-no-such-org/no-such-dataset"))
