"""prepare_data: deterministic tokenization, lossless round trip, cache reuse, corrupt caches rebuilt."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from isoflop.errors import IsoflopError
from isoflop.train.data import DataConfig, PackedSampler, prepare_data
from isoflop.train.data import prepare as prepare_mod
from isoflop.train.data.corpus import list_files

SMALL = DataConfig(max_bytes=60_000, vocab_size=400, val_fraction=0.2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return prepare_data(SMALL, cache_dir=tmp_path_factory.mktemp("cache"))


def documents(data, tokens: np.ndarray) -> list[str]:
    """Split a packed token stream at end-of-text tokens and decode every document."""
    cuts = np.flatnonzero(np.asarray(tokens) == data.eot_id)
    bounds = np.concatenate([[-1], cuts])
    return [data.decode(tokens[a + 1 : b]) for a, b in zip(bounds[:-1], bounds[1:])]


def test_tokens_decode_back_to_the_source_files(small):
    root, files = list_files(SMALL)
    by_id = {p.relative_to(root).as_posix(): p.read_text("utf-8") for p in files[:200]}
    decoded = documents(small, np.asarray(small.train)) + documents(small, np.asarray(small.val))
    assert small.manifest["splits"]["train"]["documents"] + small.manifest["splits"]["val"]["documents"] == len(decoded)
    # Byte-level BPE is lossless: every document is a stdlib file, byte for byte.
    assert set(decoded) <= set(by_id.values())
    assert small.vocab_size == 400 and small.train.dtype == np.uint16 and int(np.max(small.train)) < 400
    assert small.train[-1] == small.eot_id and len(small.val) > 256


def test_prepare_is_deterministic_and_cached(small, tmp_path, monkeypatch):
    other = prepare_data(SMALL, cache_dir=tmp_path)  # independent build in another folder
    np.testing.assert_array_equal(other.train, small.train)
    np.testing.assert_array_equal(other.val, small.val)
    assert other.tokenizer.to_str() == small.tokenizer.to_str()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a valid cache was rebuilt")

    monkeypatch.setattr(prepare_mod, "_build", no_rebuild)
    again = prepare_data(SMALL, cache_dir=tmp_path)
    assert again.cache_dir == other.cache_dir
    np.testing.assert_array_equal(again.train, small.train)


@pytest.mark.parametrize(
    "damage", ["flip_byte", "truncate", "no_manifest", "no_tokenizer", "malformed_manifest", "escaping_manifest"]
)
def test_a_damaged_cache_is_detected_and_rebuilt(small, tmp_path, caplog, damage):
    folder = tmp_path / small.cache_dir.name
    shutil.copytree(small.cache_dir, folder)
    shard = folder / "train.bin"
    if damage == "flip_byte":
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "truncate":
        with open(shard, "r+b") as handle:
            handle.truncate(shard.stat().st_size - 2)
    elif damage == "no_manifest":  # a crash before the manifest was written, with a stray temp file
        (folder / "manifest.json").unlink()
        (folder / ".train.bin.123.tmp").write_bytes(b"partial")
    elif damage in ("malformed_manifest", "escaping_manifest"):  # valid JSON, wrong shapes or a path outside
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["splits"]["train"] = 5 if damage == "malformed_manifest" else {**manifest["splits"]["train"]}
        if damage == "escaping_manifest":
            manifest["splits"]["train"]["file"] = "../../etc/passwd"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        (folder / "tokenizer.json").unlink()
    with caplog.at_level(logging.INFO, logger="isoflop.data"):
        rebuilt = prepare_data(SMALL, cache_dir=tmp_path)
    assert rebuilt.cache_dir == folder
    assert any("rebuilding" in r.message for r in caplog.records)
    # A damaged shard keeps the intact trained tokenizer; without a manifest or tokenizer it is retrained.
    reused = any("reusing the trained tokenizer" in r.message for r in caplog.records)
    assert reused == (damage not in ("no_manifest", "no_tokenizer"))
    np.testing.assert_array_equal(rebuilt.train, small.train)
    np.testing.assert_array_equal(rebuilt.val, small.val)
    assert not list(folder.glob("*.tmp"))


def test_edited_source_files_invalidate_the_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.txt").write_text(f"line {i} " * 40)
    cfg = DataConfig(source=str(src), vocab_size=300)
    first = prepare_data(cfg, cache_dir=tmp_path / "cache")
    (src / "f00.txt").write_text("something else entirely " * 40)
    os.utime(src / "f00.txt", ns=(1, 1))
    second = prepare_data(cfg, cache_dir=tmp_path / "cache")
    assert second.cache_dir == first.cache_dir
    texts = documents(second, np.concatenate([second.train, second.val]))
    assert any(t.startswith("something else entirely") for t in texts)
    assert not any(t.startswith("line 0 ") for t in texts)


def test_given_tokenizer_file_and_hf_folder(small, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(small.cache_dir / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    for spec in (str(folder / "tokenizer.json"), str(folder)):
        cfg = SMALL.model_copy(update={"tokenizer": spec})
        data = prepare_data(cfg, cache_dir=tmp_path / "cache")
        assert data.manifest["tokenizer"]["trained"] is False
        np.testing.assert_array_equal(data.train, small.train)  # same tokenizer, same tokens
    with pytest.raises(IsoflopError, match="tokenizer"):
        prepare_data(SMALL.model_copy(update={"tokenizer": str(tmp_path / "missing.json")}), cache_dir=tmp_path)


def test_single_file_source_holds_out_the_tail_for_validation(tmp_path):
    text = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(2000))
    (tmp_path / "one.txt").write_text(text)
    data = prepare_data(DataConfig(source=str(tmp_path / "one.txt"), vocab_size=300), cache_dir=tmp_path / "c")
    assert data.manifest["val_from_train_tail"] is True
    assert len(data.val) >= 1024
    assert data.decode(np.concatenate([data.train, data.val])) == text + "<|endoftext|>"


def test_val_batches_are_deterministic_shifted_windows(small):
    a = small.val_batches(seq_len=64, batch=4, n=3)
    b = small.val_batches(seq_len=64, batch=4, n=3)
    assert len(a) == 3
    val = np.asarray(small.val, dtype=np.int64)
    n_windows = (len(val) - 1) // 64
    windows = {tuple(val[k * 64 : k * 64 + 65]) for k in range(n_windows)}  # reference: every aligned window
    rows = []
    for (x, y), (bx, by) in zip(a, b):
        assert x.shape == y.shape == (4, 64) and x.dtype == torch.int64
        assert torch.equal(x, bx) and torch.equal(y, by)
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows += [tuple(np.append(rx, ry[-1])) for rx, ry in zip(x.numpy(), y.numpy())]
    assert set(rows) <= windows and len(set(rows)) == min(12, n_windows)
    with pytest.raises(IsoflopError, match="validation split"):
        small.val_batches(seq_len=len(small.val), batch=1, n=1)


def test_sampler_runs_on_prepared_tokens(small):
    x, y = PackedSampler(small.train, seq_len=32, batch_size=4, seed=0).next_batch()
    assert x.shape == (4, 32) and int(x.max()) < small.vocab_size
    assert torch.equal(small.sampler(32, 4, seed=0).next_batch()[0], x)
    assert small.decode(small.encode("def f(x):\n    return x\n")) == "def f(x):\n    return x\n"


def test_cache_root_follows_isoflop_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path))
    assert prepare_mod.cache_dir_for(SMALL).parent == tmp_path / "data"
    assert prepare_mod.cache_dir_for(SMALL) != prepare_mod.cache_dir_for(SMALL.model_copy(update={"vocab_size": 500}))


def test_concurrent_processes_build_the_cache_once(tmp_path):
    """Like torchrun ranks: two processes prepare the same config at once; one builds, both get equal tokens."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, hashlib, logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from isoflop.train.data import DataConfig, prepare_data\n"
        f"d = prepare_data(DataConfig(max_bytes=60_000, vocab_size=300), cache_dir={str(tmp_path)!r})\n"
        "print(hashlib.sha256(bytes(d.train)).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert sum(err.count("prepared ") for _, err in outs) == 1


def test_vocabularies_over_65536_use_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(70_000)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(tmp_path / "big.json"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"d{i}.txt").write_text(" ".join(f"w{69_990 - j * i}" for j in range(300)))
    data = prepare_data(DataConfig(source=str(src), tokenizer=str(tmp_path / "big.json")), cache_dir=tmp_path / "c")
    assert data.vocab_size == 70_001 and data.eot_id == 70_000 and data.train.dtype == np.uint32
    assert int(np.max(data.train)) == 70_000
    expected = [words[w] for i in range(20) for w in (src / f"d{i}.txt").read_text().split()] + [70_000] * 20
    np.testing.assert_array_equal(np.sort(np.concatenate([data.train, data.val])), np.sort(expected))


def test_config_mappings_and_bad_cache_folders(small, tmp_path):
    as_dict = prepare_data(SMALL.model_dump(), cache_dir=small.cache_dir.parent)
    assert as_dict.cache_dir == small.cache_dir
    with pytest.raises(IsoflopError, match="vocab_size"):
        prepare_data({"vocab_size": 10})
    with pytest.raises(IsoflopError, match="Extra inputs"):
        prepare_data({"sorce": "stdlib"})
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(IsoflopError, match="cannot write the data cache"):
        prepare_data(SMALL, cache_dir=blocker)
